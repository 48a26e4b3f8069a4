"""`hv curate --out s3://...` against a real local S3 server (moto_server from .venv-moto, loopback only): the same
shards (names and bytes) and manifest rows as a local run, a kill -9 mid-run that leaves no partial object under a
final name and resumes to the same result, and one-line errors (exit 2) for an unreachable endpoint or a missing
bucket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyarrow import fs

from data_engine.curate import run_curate
from data_engine.curate_config import load_config
from data_engine.curate_state import KILL_ENV
from data_engine.shards import iter_members

ROOT = Path(__file__).resolve().parents[2]
MOTO_SERVER = ROOT / ".venv-moto" / "bin" / "moto_server"
# Small checkpoints and shards, so that a kill lands between many of them.
SETTINGS = ["checkpoint_rows=3", "shard_max_count=2", "images_per_task=2", "chunk_size=8", "progress=false"]
# Any keys do for moto; metadata lookups off so the AWS SDK never leaves the machine for credentials or a region.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a loopback port; yields its `host:port`, with AWS_* credentials in os.environ."""
    if not MOTO_SERVER.exists():  # `make test` creates it (scripts/setup.sh): never skip these silently
        pytest.fail(f"needs the moto S3 server venv: {MOTO_SERVER} is missing (run `make setup` or scripts/setup.sh)")
    port = _free_port()
    log = open(os.devnull, "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not start on 127.0.0.1:{port}") from None
                    time.sleep(0.2)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def _bucket(endpoint: str) -> tuple[fs.S3FileSystem, str]:
    name = f"hv-{uuid.uuid4().hex[:12]}"
    filesystem = fs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
    filesystem.create_dir(name)
    return filesystem, name


def _uri(endpoint: str, path: str) -> str:
    return f"s3://{path}?endpoint_override={endpoint}&scheme=http"


def _inputs(corpus: Path) -> list[str]:
    return [str(corpus / "images"), str(corpus / "list.txt")]


def _command(corpus: Path, out: str) -> list[str]:
    run = "from humanvision_cli import main; main()"
    return [sys.executable, "-c", run, "curate", *_inputs(corpus), "--out", out, "--detector", "none", *SETTINGS]


def _curate(corpus: Path, out: str) -> dict:
    cfg = load_config(None, SETTINGS, inputs=_inputs(corpus), out=out)
    cfg.detector.name = type(cfg.detector.name)("none")
    return run_curate(cfg, log=lambda s: None)


def _objects(filesystem: fs.FileSystem, folder: str) -> dict[str, bytes]:
    """Every file under `folder` (recursive): relative name -> bytes."""
    infos = filesystem.get_file_info(fs.FileSelector(folder, recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == fs.FileType.File:
            with filesystem.open_input_stream(info.path) as f:
                out[info.path[len(folder) + 1 :]] = f.read()
    return out


def _outcome(filesystem: fs.FileSystem, folder: str) -> tuple[dict[str, bytes], list[dict]]:
    """(shard name -> bytes, manifest rows sorted by uri) of a finished output folder."""
    shards = _objects(filesystem, f"{folder}/shards")
    rows = pq.read_table(f"{folder}/manifest.parquet", filesystem=filesystem).to_pylist()
    return shards, sorted(rows, key=lambda r: r["uri"])


@pytest.fixture(scope="module")
def local_reference(ray_local, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("local-reference")
    stats = _curate(corpus, str(out))
    shards, rows = _outcome(fs.LocalFileSystem(), str(out))
    assert len(shards) >= 3 and all(n.startswith("curated-") and n.endswith(".tar") for n in shards)
    return shards, rows, stats


def test_s3_output_matches_a_local_run(s3, corpus, local_reference):
    filesystem, bucket = _bucket(s3)
    stats = _curate(corpus, _uri(s3, f"{bucket}/curated"))
    shards, rows = _outcome(filesystem, f"{bucket}/curated")
    ref_shards, ref_rows, ref_stats = local_reference
    assert shards == ref_shards  # the same shard names, each with the same bytes
    assert rows == ref_rows
    assert stats["status"] == ref_stats["status"] and stats["shards"] == ref_stats["shards"]
    names = set(_objects(filesystem, bucket))
    assert {"curated/stats.json", "curated/config.yaml", "curated/manifest.parquet"} <= names
    assert not [n for n in names if n.rsplit("/", 1)[-1].startswith(".")]  # no temporaries, no write probes
    # A re-run on the finished bucket only reports, and changes no shard.
    again = _curate(corpus, _uri(s3, f"{bucket}/curated"))
    assert again["this_run"]["new_inputs"] == 0 and again["this_run"]["written"] == 0
    assert _outcome(filesystem, f"{bucket}/curated") == (shards, rows)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["first_shard_seen", "shard_renamed:2"])
def test_kill_9_mid_run_then_rerun(s3, corpus, local_reference, when):
    """kill -9 from outside once the first shard object is listed, or from inside right after the second shard
    object is committed and before its state part is (the re-run must rebuild that part from the object)."""
    filesystem, bucket = _bucket(s3)
    folder = f"{bucket}/curated"
    command = _command(corpus, _uri(s3, folder))
    env = {**os.environ, KILL_ENV: when} if ":" in when else None
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if env is None and any(n.endswith(".tar") for n in _objects(filesystem, f"{folder}/shards")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    proc.stderr.close()
    # Whatever carries a final name is complete: every shard object reads to its end-of-archive marker.
    partial = _objects(filesystem, f"{folder}/shards")
    assert partial and not [n for n in partial if n.startswith(".")]
    for name in partial:
        assert list(iter_members(_uri(s3, f"{folder}/shards/{name}")))
    assert filesystem.get_file_info(f"{folder}/manifest.parquet").type == fs.FileType.NotFound

    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert again.returncode == 0, again.stderr[-2000:]
    ref_shards, ref_rows, _ = local_reference
    shards, rows = _outcome(filesystem, folder)
    assert shards == ref_shards and rows == ref_rows  # same keys, same bytes, same rows as an unbroken run
    keys = [m["__key__"] for name in sorted(shards) for m in iter_members(_uri(s3, f"{folder}/shards/{name}"))]
    assert len(keys) == len(set(keys))  # nothing written twice
    for name, data in partial.items():  # the shards committed before the kill were kept, not rewritten
        assert shards[name] == data
    if env is not None:  # the shard committed just before the kill was recorded from its object
        assert filesystem.get_file_info(f"{folder}/state/written/curated-000001.parquet").is_file


@pytest.mark.parametrize("case", ["unreachable", "no_bucket"])
def test_bad_s3_output_is_one_line_exit_2(s3, corpus, case):
    if case == "unreachable":
        uri = _uri(f"127.0.0.1:{_free_port()}", "somebucket/curated")  # nothing listens there
        expected = "cannot reach or write it"
    else:
        uri = _uri(s3, f"no-such-bucket-{uuid.uuid4().hex[:8]}/curated")
        expected = "does not exist"
    result = subprocess.run(_command(corpus, uri), capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hv curate: --out {uri}: ") and expected in lines[0], lines


def test_a_failed_write_leaves_no_object(s3):
    """An exception while an object or a shard is being written publishes nothing under its final name."""
    from data_engine.output_fs import OutputFS
    from data_engine.shards import ShardWriter

    filesystem, bucket = _bucket(s3)
    out = OutputFS.open(_uri(s3, f"{bucket}/out"))
    with pytest.raises(RuntimeError), out.open_atomic("state/part-000000.parquet") as f:
        f.write(b"half of it")
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError), ShardWriter("curated", max_count=2, output=out.sub("shards")) as writer:
        for i in range(3):  # one complete shard, then a failure inside the second
            writer.write({"__key__": f"k{i}", "txt": b"x" * 100})
        raise RuntimeError("killed mid-shard")
    assert sorted(_objects(filesystem, f"{bucket}/out")) == ["shards/curated-000000.tar"]
    assert [m["__key__"] for m in iter_members(out.uri("shards/curated-000000.tar"))] == ["k0", "k1"]
