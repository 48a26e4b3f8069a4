"""kill -9 of `hv curate` (a subprocess) at a phase boundary or at a random moment, then the same command again:
the result equals an uninterrupted run's, with no sample lost and none written twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from data_engine.cli import inspect_shards
from data_engine.curate import run_curate
from data_engine.curate_config import load_config
from data_engine.curate_state import KILL_ENV
from data_engine.shards import iter_members

# Small checkpoints, shards and tasks so that a kill lands between many of them.
SETTINGS = ["checkpoint_rows=3", "shard_max_count=2", "images_per_task=2", "chunk_size=8", "progress=false"]


def _command(corpus, out) -> list[str]:
    run = "from humanvision_cli import main; main()"
    inputs = [str(corpus / "images"), str(corpus / "list.txt")]
    return [sys.executable, "-c", run, "curate", *inputs, "--out", str(out), "--detector", "none", *SETTINGS]


def _outcome(out) -> dict[str, tuple]:
    rows = pq.read_table(os.path.join(out, "manifest.parquet")).to_pylist()
    assert len({r["uri"] for r in rows}) == len(rows)
    return {r["uri"]: (r["status"], r["key"], r["reason"], r["duplicate_of"]) for r in rows}


def _shard_keys(out) -> list[str]:
    return [
        str(m["__key__"]) if isinstance(m["__key__"], str) else m["__key__"].decode()
        for p in sorted((out / "shards").glob("*.tar"))
        for m in iter_members(str(p))
    ]


@pytest.fixture(scope="module")
def reference(ray_local, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    cfg = load_config(None, SETTINGS, inputs=[str(corpus / "images"), str(corpus / "list.txt")], out=str(out))
    cfg.detector.name = type(cfg.detector.name)("none")
    run_curate(cfg, log=lambda s: None)
    return _outcome(out), _shard_bytes(out)


def _shard_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def _check_complete(out, reference) -> None:
    reference, shards = reference
    assert _outcome(out) == reference
    assert _shard_bytes(out) == shards  # the same shard names, each with the same bytes as an unbroken run
    keys = _shard_keys(out)
    accepted = sorted(k for status, k, _, _ in reference.values() if status == "accepted")
    assert sorted(keys) == accepted  # every accepted sample once: none lost, none twice
    assert inspect_shards([str(out / "shards")])["bad"] == []
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.slow
# shard_planned:3: killed while the Ray tasks of shards 0-2 may still be writing (any of them committed or not)
@pytest.mark.parametrize("point", ["analysis_part:2", "decisions:1", "shard_planned:3", "shard_renamed:2"])
def test_kill_at_each_phase_then_rerun_completes(corpus, tmp_path, reference, point):
    out = tmp_path / "out"
    killed = subprocess.run(
        _command(corpus, out), env={**os.environ, KILL_ENV: point}, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not (out / "manifest.parquet").exists()
    again = subprocess.run(_command(corpus, out), capture_output=True, timeout=300, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    _check_complete(out, reference)
    # The re-run analyses nothing new but writes: it must say so. (At shard_renamed the other shards' tasks may all
    # have committed before the kill: the re-run then only records them from their tars.)
    if point.startswith(("decisions", "shard_planned")):
        assert "report only" not in again.stdout and "resumed: wrote" in again.stdout, again.stdout
    if point.startswith("shard_renamed"):
        # the shard renamed just before the kill was recorded from its tar, not written again
        assert (out / "state" / "written" / "curated-000001.parquet").exists()


@pytest.mark.slow
def test_kill_at_a_random_moment_then_rerun_completes(corpus, tmp_path, reference):
    out = tmp_path / "out"
    delay = random.Random(3).uniform(2.0, 7.0)
    proc = subprocess.Popen(_command(corpus, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + delay
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    again = subprocess.run(_command(corpus, out), capture_output=True, timeout=300, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    _check_complete(out, reference)
    # and once complete, a third run only reports
    third = subprocess.run(_command(corpus, out), capture_output=True, timeout=300, text=True)
    assert third.returncode == 0 and "nothing new" in third.stdout
