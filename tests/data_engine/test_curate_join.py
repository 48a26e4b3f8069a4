"""The per-input joins of `hv curate` on the cluster (data_engine/curate_join.py) against the in-driver code they
replace, on synthetic state files: the same URIs skipped, the same pending records in the same order and chunks, the
same manifest; the driver's Python memory stays flat as the inputs grow; and a resume after a partial analysis
analyses exactly the inputs the checkpoints do not hold."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_engine import manifest as manifest_lib
from data_engine.analysis import ANALYSIS_SCHEMA
from data_engine.curate import run_curate
from data_engine.curate_config import load_config
from data_engine.curate_join import ListedFilter, StateFiles, manifest_on_cluster, pending_records
from data_engine.curate_state import DECISION_SCHEMA, WRITTEN_SCHEMA, State
from data_engine.curate_write import PLAN_FOLDER, PLAN_SCHEMA, write_plan
from data_engine.decode import reason_code
from data_engine.manifest import MANIFEST_SCHEMA
from data_engine.output_fs import OutputFS


def _uri(i: int) -> str:
    return f"/data/img/{i:07d}.jpg"


def make_state(folder: Path, n: int, part_rows: int = 100, seed: int = 0) -> State:
    """State files of n analysed inputs as a job leaves them part-way: rejections, duplicates, a few URIs analysed
    twice and decided twice, some not decided yet, accepted ones written (some with an error), planned, or pending."""
    rng = random.Random(seed)
    state = State(OutputFS.open(str(folder)))
    analysis, decisions, written, planned = [], [], [], []
    for i in range(n):
        row = {"uri": _uri(i), "key": f"{rng.getrandbits(64):016x}", "sha256": None, "width": 640, "height": 480}
        row.update(bytes=1000 + i, phash=f"{rng.getrandbits(64):016x}", blur=rng.random() * 100, reencode=None)
        row["reason"] = "too_small: 12x12" if rng.random() < 0.1 else None
        analysis.append(row)
        if rng.random() < 0.03:
            continue  # analysed, not decided yet
        if row["reason"] is not None:
            decisions.append({"uri": row["uri"], "status": "rejected", "reason": row["reason"]})
            continue
        if rng.random() < 0.15:
            decisions.append(
                {"uri": row["uri"], "status": "duplicate", "reason": "exact_duplicate", "duplicate_of": "0"}
            )
            continue
        decisions.append({"uri": row["uri"], "status": "accepted"})
        pick = rng.random()
        if pick < 0.6:
            written.append({"uri": row["uri"], "key": row["key"], "shard": f"shards/curated-{i // 50:06d}.tar"})
        elif pick < 0.65:
            written.append({"uri": row["uri"], "key": row["key"], "error": "unreadable: changed"})
        elif pick < 0.8:
            planned.append(row)
    for i in rng.sample(range(n), max(1, n // 100)):  # analysed twice (the manifest takes the first row)
        analysis.append(dict(analysis[i], bytes=7))
    for i in rng.sample(range(len(decisions)), max(1, n // 200)):  # decided twice (the last decision wins)
        decisions.append(dict(decisions[i], status="rejected", reason="blurry: 1.0"))
    for folder_rows, folder, schema, size in (
        (analysis, state.analysis, ANALYSIS_SCHEMA, part_rows),
        (decisions, state.decisions, DECISION_SCHEMA, 3 * part_rows),
        (written, state.written, WRITTEN_SCHEMA, part_rows),
    ):
        for start in range(0, len(folder_rows), size):
            state.append(folder, pa.Table.from_pylist(folder_rows[start : start + size], schema=schema))
    for start in range(0, len(planned), 20):
        table = pa.Table.from_pylist(planned[start : start + 20], schema=ANALYSIS_SCHEMA)
        write_plan(state, f"curated-{900_000 + start // 20:06d}.tar", table)
    return state


# ------------------------------------------------------------------------ the in-driver code they replace


def _pending_in_driver(state: State, chunk_size: int) -> Iterator[pa.Table]:
    """curate.write_phase's to-do before: accepted - written - planned, in analysis order, in chunks."""
    decided = list(state.read(state.decisions, DECISION_SCHEMA))
    accepted = {r["uri"] for t in decided for r in t.to_pylist() if r["status"] == "accepted"}
    written = set(state.column(state.written, WRITTEN_SCHEMA, "uri"))
    plans = state.parts(PLAN_FOLDER)
    planned = {u for p in plans for u in state.out.read_table(p, PLAN_SCHEMA).column("uri").to_pylist()}
    todo = accepted - written - planned
    buffer, rows = [], 0
    for table in state.read(state.analysis, ANALYSIS_SCHEMA):
        selected = table.filter(pa.array([u in todo for u in table.column("uri").to_pylist()], pa.bool_()))
        if selected.num_rows:
            buffer.append(selected)
            rows += selected.num_rows
        if rows >= chunk_size:
            yield pa.concat_tables(buffer)
            buffer, rows = [], 0
    if buffer:
        yield pa.concat_tables(buffer)


@pytest.mark.parametrize("pieces", [1, 3])
def test_joins_on_the_cluster_equal_the_driver_code(ray_local, tmp_path, pieces):
    state = make_state(tmp_path / "out", 1200, part_rows=70)
    # Some analysed, some new, in the listing's order; some named twice, in one chunk and in chunks far apart.
    listing = [_uri(i) for i in range(0, 1500, 3)]
    listing = listing[:300] + listing[250:260] + listing[300:] + listing[::40]
    analysed = set(state.column(state.analysis, ANALYSIS_SCHEMA, "uri"))
    index = ListedFilter(StateFiles.of(state), pieces, None)
    try:
        fresh = [u for start in range(0, len(listing), 64) for u in index.fresh(listing[start : start + 64])]
    finally:
        index.close()
    unseen = [u for u in dict.fromkeys(listing) if u not in analysed]  # first naming of each, in order
    assert fresh == unseen and 0 < len(fresh) < len(set(listing))

    count, chunks = pending_records(state, pieces, 50, None)
    got, want = list(chunks), list(_pending_in_driver(state, 50))
    assert [t.num_rows for t in got] == [t.num_rows for t in want] and count == sum(t.num_rows for t in want) > 0
    assert all(g.equals(w) for g, w in zip(got, want, strict=True))

    counts = manifest_on_cluster(state, "manifest.parquet", pieces, None)
    assert counts == _manifest_in_driver(state, "reference.parquet") and counts["unfinished"] > 0
    manifest = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert manifest.equals(pq.read_table(tmp_path / "out" / "reference.parquet")) and manifest.num_rows > 0


def _joins(state: State, path: str) -> None:
    """The three joins on `state`: on the cluster, or (path "driver") the in-driver code they replace."""
    # The listing, half of it analysed, a chunk at a time (as the analyse phase reads it).
    listing = ([_uri(i) for i in range(s, s + 1000)] for s in range(0, 200 * len(state.parts(state.analysis)), 1000))
    if path == "driver":
        known = set(state.column(state.analysis, ANALYSIS_SCHEMA, "uri"))
        for chunk in listing:  # the listing's own set of the URIs named (inputs.iter_uris had one) grows too
            fresh = [u for u in chunk if u not in known]
            known.update(fresh)
        for _ in _pending_in_driver(state, 1000):
            pass
        _manifest_in_driver(state, "manifest.parquet")
        return
    index = ListedFilter(StateFiles.of(state), 2, None)
    for chunk in listing:
        index.fresh(chunk)
    index.close()
    _, chunks = pending_records(state, 2, 1000, None)
    for _ in chunks:
        pass
    manifest_on_cluster(state, "manifest.parquet", 2, None)


def _private_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def _peak_growth_kib(state: State, path: str) -> int:
    """Peak growth of this process's private memory while the joins run (sampled every 5 ms): RSS would also count
    the pages of Ray's shared object store that the driver touches."""
    import threading

    start, peak, done = _private_kib(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _private_kib() - start)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        _joins(state, path)
    finally:
        done.set()
        thread.join()
    return max(peak[0], _private_kib() - start)


def measure_driver(folders: list[str], path: str, temp: str) -> list[int]:
    """In a fresh driver process (with its own local Ray): the joins on each state folder in turn, the first a
    warm-up; returns the peak private memory growth (KiB) of each."""
    import ray

    from data_engine.ray_runtime import init_ray

    init_ray(num_cpus=2, object_store_memory=256 * 1024 * 1024, _temp_dir=temp)
    try:
        return [_peak_growth_kib(State(OutputFS.open(f)), path) for f in folders]
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_the_driver_memory_does_not_grow_with_the_inputs(tmp_path):
    """The joins at 2,000 and at 40,000 analysed inputs (parts of 100 rows), each path in a fresh driver process:
    on the cluster the driver's private memory peak stays flat; the in-driver code it replaced grows with the
    inputs (its sets and dicts), which shows the measure sees per-input state."""
    folders = [str(tmp_path / "warm-up"), str(tmp_path / "small"), str(tmp_path / "large")]
    for folder, n in zip(folders, [2_000, 2_000, 40_000], strict=True):
        make_state(Path(folder), n)
    script = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('join_tests', {__file__!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(json.dumps(module.measure_driver(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])))\n"
    )
    growth = {}
    for path in ("cluster", "driver"):
        for _ in range(3):  # a busy machine can time out a local Ray's start: that, and only that, is retried
            temp = tempfile.mkdtemp(prefix="hv-rj-")  # Ray's socket paths must stay short
            try:
                done = subprocess.run(
                    [sys.executable, "-c", script, json.dumps(folders), path, temp],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
                )
            finally:
                shutil.rmtree(temp, ignore_errors=True)
            if "timed out during startup" not in done.stderr:
                break
        assert done.returncode == 0, done.stderr[-3000:]
        _, small, large = json.loads(done.stdout.strip().splitlines()[-1])
        growth[path] = large - small
    print(growth)
    assert growth["driver"] > 10_000, growth  # KiB: the in-driver joins hold ~0.4 KB an input
    assert growth["cluster"] < growth["driver"] / 5, growth


def _cfg(corpus: Path, out: Path):
    settings = ["checkpoint_rows=3", "shard_max_count=2", "images_per_task=2", "chunk_size=8", "progress=false"]
    cfg = load_config(None, settings, inputs=[str(corpus / "images"), str(corpus / "list.txt")], out=str(out))
    cfg.detector.name = type(cfg.detector.name)("none")
    return cfg


@pytest.mark.slow
def test_resume_after_a_partial_analysis_analyses_exactly_the_rest(ray_local, corpus, tmp_path):
    """As a kill during the analysis leaves it: only the first analysis checkpoints. The re-run analyses exactly the
    inputs they do not hold, each once, and ends as an unbroken run."""
    out = tmp_path / "out"
    whole = run_curate(_cfg(corpus, out), log=lambda s: None)
    manifest = pq.read_table(out / "manifest.parquet")
    shards = {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
    parts = sorted((out / "state" / "analysis").iterdir())
    for p in parts[3:]:
        p.unlink()
    for folder in ("decisions", "written", "plan"):
        shutil.rmtree(out / "state" / folder)
    shutil.rmtree(out / "shards")
    (out / "manifest.parquet").unlink()
    kept = [u for p in parts[:3] for u in pq.read_table(p, columns=["uri"]).column("uri").to_pylist()]
    again = run_curate(_cfg(corpus, out), log=lambda s: None)
    assert again["this_run"]["new_inputs"] == whole["inputs"] - len(kept) and 0 < len(kept) < whole["inputs"]
    state = State(OutputFS.open(str(out)))
    uris = state.column(state.analysis, ANALYSIS_SCHEMA, "uri")
    assert len(uris) == len(set(uris)) == whole["inputs"] and uris[: len(kept)] == kept  # each once
    assert _rows(pq.read_table(out / "manifest.parquet")) == _rows(manifest)
    assert {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())} == shards


def _rows(manifest: pa.Table) -> list[dict]:
    # By URI, as the kill tests compare: the analysis tasks may finish in another order in a re-run.
    return sorted(manifest.to_pylist(), key=lambda r: r["uri"])


def _manifest_in_driver(state: State, rel: str) -> dict[str, Any]:
    """How `hv curate` built the manifest before data_engine/curate_join.manifest_on_cluster, every URI's decision and
    shard in the driver's memory: the reference the cluster join is compared with. Writes `rel`, returns the counts."""
    decisions: dict[str, tuple[str, str | None, str | None]] = {}
    for t in state.read(state.decisions, DECISION_SCHEMA):
        for r in t.to_pylist():
            decisions[r["uri"]] = (r["status"], r["reason"], r["duplicate_of"])
    written: dict[str, tuple[str | None, str | None]] = {}
    for t in state.read(state.written, WRITTEN_SCHEMA):
        for r in t.to_pylist():
            written[r["uri"]] = (r["shard"], r["error"])
    by_status: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    undecided = 0
    seen: set[str] = set()
    with state.out.open_atomic(rel) as stream, pq.ParquetWriter(stream, MANIFEST_SCHEMA) as writer:
        for table in state.read(state.analysis, ANALYSIS_SCHEMA):
            rows = []
            for r in table.to_pylist():
                if r["uri"] in seen:
                    continue
                seen.add(r["uri"])
                decision = decisions.get(r["uri"])
                shard, error = written.get(r["uri"], (None, None))
                if decision is None or (decision[0] == "accepted" and shard is None and error is None):
                    undecided += 1
                    continue
                status, reason, duplicate_of = decision
                if error is not None:
                    status, reason = "rejected", error
                row = {c: r.get(c) for c in manifest_lib.COLUMNS if c in r}
                row.update(status=status, reason=reason, duplicate_of=duplicate_of, shard=shard)
                rows.append(row)
                by_status[status] += 1
                if reason is not None:
                    by_reason[reason_code(reason)] += 1
            if rows:
                writer.write_table(manifest_lib.to_table(rows))
    return {"status": dict(by_status), "reason": dict(sorted(by_reason.items())), "unfinished": undecided}
