"""`hv curate --ray-address` on a real two-node Ray cluster (a head and a second raylet on this machine, with
token authentication, as the README's cluster section starts one): both nodes analyse, shard tasks write every
shard, and the outputs equal a local run's."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_engine.ray_runtime import token_file

SETTINGS = ["images_per_task=2", "checkpoint_rows=4", "shard_max_count=3", "progress=false"]
RUN = "from humanvision_cli import main; main()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    probe = f"import ray; ray.init(address={address!r}, logging_level='ERROR')\n"
    probe += "print(sum(n['Alive'] for n in ray.nodes()))"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` and `ray start --address` (each `--block`, so stopping them by PID stops their nodes)."""
    token = token_file(tmp_path_factory.mktemp("cluster-token"))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_AUTH_TOKEN", None)
    ray = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="hv-rc-")  # Ray's socket paths must stay short
    common = ["--num-cpus", "1", "--object-store-memory", str(200 * 1024 * 1024), "--block", "--disable-usage-stats"]
    head_cmd = [ray, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1"]
    head_cmd += ["--include-dashboard=false", "--temp-dir", temp, *common]
    # Each node in its own process group (its raylet, GCS and workers with it), so that teardown can end it whole.
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    nodes = [subprocess.Popen(head_cmd, **quiet)]
    try:
        deadline = time.monotonic() + 180
        while _alive_nodes(address, env) < 1:
            assert nodes[0].poll() is None and time.monotonic() < deadline, "the head did not start"
            time.sleep(1)
        second = [ray, "start", "--address", address, "--node-ip-address", "127.0.0.1", *common]
        nodes.append(subprocess.Popen(second, **quiet))
        while _alive_nodes(address, env) < 2:
            assert nodes[1].poll() is None and time.monotonic() < deadline, "the second node did not join"
            time.sleep(1)
        yield address, env
    finally:
        # A graceful stop of two nodes that have run jobs took 31 s (the raylets drain): after a few seconds, the
        # nodes' process groups are killed instead. Nothing of them outlives the test either way.
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _outcome(out: Path) -> dict[str, tuple]:
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return {r["uri"]: (r["status"], r["key"], r["reason"], r["duplicate_of"], r["shard"]) for r in rows}


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


@pytest.mark.slow
def test_curate_on_a_two_node_cluster_uses_both_nodes_and_equals_a_local_run(cluster, corpus, tmp_path):
    address, env = cluster
    inputs = [str(corpus / "images"), str(corpus / "list.txt")]
    local, remote = tmp_path / "local", tmp_path / "cluster"
    base = [sys.executable, "-c", RUN, "curate", *inputs, "--detector", "none", *SETTINGS]
    done = subprocess.run([*base, "--out", str(local)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    joined = subprocess.run(
        [*base, "--out", str(remote), "--ray-address", address], env=env, capture_output=True, text=True, timeout=600
    )
    assert joined.returncode == 0, joined.stderr[-2000:]

    stats = json.loads((remote / "stats.json").read_text())
    per_node = stats["this_run"]["images_per_node"]
    assert len(per_node) == 2 and all(n > 0 for n in per_node.values()), per_node
    assert sum(per_node.values()) == stats["inputs"]
    # every shard was written by a Ray task (a node id each), none by the driver
    assert sum(stats["this_run"]["shards_per_node"].values()) == stats["shards"] > 0
    assert _outcome(remote) == _outcome(local)
    assert _shards(remote) == _shards(local)

    # Without the cluster's token the same command is refused with one line of ours and exit 2.
    _assert_refused_without_token("curate", base, address, env, tmp_path / "refused")


def _assert_refused_without_token(command: str, base: list[str], address: str, env: dict, out: Path) -> None:
    """`base --ray-address ADDRESS` without the cluster's token: exit 2 and one line of ours, last (after Ray's
    own C++ log lines, which Ray prints before Python sees the failure), with how to pass the token."""
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run(
        [*base, "--out", str(out), "--ray-address", address], env=no_token, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hv {command}: --ray-address {address}: cannot join") and "RAY_AUTH_MODE=token" in last


def _members_by_key(out: Path) -> dict[str, dict[str, bytes]]:
    from data_engine.shards import iter_members

    found: dict[str, dict[str, bytes]] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        for members in iter_members(str(shard)):
            raw = members.pop("__key__")
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            assert key not in found, f"{key} written twice"
            found[key] = {k: v for k, v in members.items() if not k.startswith("__")}
    return found


@pytest.mark.slow
def test_synth_on_a_two_node_cluster_equals_an_inline_run(cluster, tmp_path):
    """`hv synth --ray-address`: render actors on the cluster give the same samples, byte for byte, as the
    same job rendered inline in one process (shard order may differ: the actors finish in any order)."""
    import trimesh

    address, env = cluster
    scans = tmp_path / "scans"
    scans.mkdir()
    for i, height in enumerate((1.5, 1.7)):
        trimesh.creation.capsule(height=height - 0.4, radius=0.2, count=[16, 16]).export(scans / f"p{i}.obj")
    base = [sys.executable, "-c", RUN, "synth", str(scans), "--views", "2", "--size", "64x48", "scan.up_axis=z"]
    inline = subprocess.run([*base, "--out", str(tmp_path / "inline"), "inline=true"], capture_output=True, text=True)
    assert inline.returncode == 0, inline.stderr[-2000:]
    joined = subprocess.run(
        [*base, "--out", str(tmp_path / "cluster"), "--ray-address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert joined.returncode == 0, joined.stderr[-2000:]
    want = _members_by_key(tmp_path / "inline")
    assert len(want) == 4 and _members_by_key(tmp_path / "cluster") == want

    _assert_refused_without_token("synth", base, address, env, tmp_path / "refused")
