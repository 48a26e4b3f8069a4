"""The curation DAG: inputs -> read/decode/quality/phash (Ray tasks) -> person detection (Ray actors) ->
global dedup (Ray tasks, data_engine/dedup_ray.py) -> shard plan (sizes in Ray tasks) -> one Ray task per shard,
reading its members and writing its tar atomically (data_engine/curate_write.py) -> manifest (a Ray task,
data_engine/curate_join.py).

    hv curate photos/ more/*.jpg list.parquet --out runs/curated --detector none
    hv curate s3://bucket/raw/ --out /mnt/shared/curated --ray-address auto detector.concurrency=8
    hv curate photos/ --out s3://bucket/curated          # credentials from AWS_ACCESS_KEY_ID/... or AWS_PROFILE

Output folder (a local folder, or any pyarrow.fs URI: data_engine/output_fs.py):
    shards/curated-000000.tar ...   accepted samples (the sample contract: jpg|png + json)
    manifest.parquet                one row per input ever seen: accepted / rejected / duplicate, with reason
    stats.json                      counts by status and reason, files skipped by extension, this run's images/s
                                    and phase times
    config.yaml                     the resolved config
    state/                          checkpoints that make a re-run resume (see below)

Resume. Every file is written whole or not at all (locally a temporary name, then a rename; on an object store
an upload under the final name once complete), and each phase only adds what the files do not already record:
    state/analysis/part-*.parquet   analysis rows, `checkpoint_rows` at a time; a re-run skips those URIs
    state/decisions/part-*.parquet  keep / duplicate / reject per analysed URI, written once per run
    state/plan/<shard>.parquet      the URIs a shard is to hold, in order, written before its task starts: a
                                    shard a kill interrupted is written again as planned (tasks finish in any
                                    order), so names and bytes equal an unbroken run's
    state/written/<shard>.parquet   the URIs inside each complete shard (a shard committed just before a kill
                                    is found on restart and its part rebuilt from the tar's samples)
So a kill -9 at any point costs at most one checkpoint of analysis and the shards being written, and loses or
repeats no sample. New inputs on an existing folder are analysed and deduplicated against everything there.

Memory. The driver holds counters and file paths, not per-input rows: one chunk of URIs (`chunk_size`) and Ray's
bounded queues of results in the analysis; the global dedup runs on the cluster, the driver passing it one state
part at a time and holding only object references and counts (data_engine/dedup_ray.py); which listed inputs are
new (not analysed before, not named earlier in the listing: an input named twice is curated once), which accepted
records are still to write, and the manifest join run on the cluster too, each URI's rows meeting in one actor or
task by a hash of the URI (data_engine/curate_join.py). The write phase's planner holds one chunk of records, the
open shard's and the references of the shard tasks in flight; no image byte passes through the driver.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_engine import manifest as manifest_lib
from data_engine.analysis import ANALYSIS_SCHEMA
from data_engine.curate_config import CurateConfig, DetectorName, check_same_policy, to_yaml
from data_engine.curate_join import (
    ListedFilter,
    StateFiles,
    cluster_pieces,
    manifest_on_cluster,
    pending_records,
    reconcile_on_cluster,
)
from data_engine.curate_ray import analysis_dataset, ray_session
from data_engine.curate_report import summary_text
from data_engine.curate_state import (
    DECISION_SCHEMA,
    SHARD_PREFIX,
    WRITTEN_SCHEMA,
    State,
    check_output_folder,
    maybe_hold,
    maybe_kill,
    missing_shard_parts,
)
from data_engine.curate_write import (
    ShardTasks,
    credentials_env,
    plan_names,
    plan_shards,
    planned_records,
    ray_sizer,
    remove_temporaries,
    shard_index,
    write_plan,
)
from data_engine.dedup_ray import ANALYSIS_COLUMNS, decide_on_cluster
from data_engine.inputs import ListingStats, check_inputs, iter_uris
from data_engine.output_fs import OutputFS


class CurateError(RuntimeError):
    """A job that cannot run as configured (the message says what to change)."""


# --------------------------------------------------------------------------------------------- the phases


@dataclass
class RunReport:
    new_inputs: int = 0
    written: int = 0
    listing: ListingStats = field(default_factory=ListingStats)
    images_per_node: Counter[str] = field(default_factory=Counter)  # Ray node id -> inputs it analysed
    shards_per_node: Counter[str] = field(default_factory=Counter)  # Ray node id -> shards it wrote
    phase_seconds: dict[str, float] = field(default_factory=dict)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Progress:
    """A tqdm bar on stderr (only on a terminal) with running counts."""

    def __init__(self, enabled: bool, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(desc=desc, unit="img", disable=None if enabled else True, file=sys.stderr, dynamic_ncols=True)
        self.counts: Counter[str] = Counter()

    def update(self, n: int, **counts: int) -> None:
        self.counts.update(counts)
        self.bar.update(n)
        if self.counts:
            self.bar.set_postfix(dict(self.counts), refresh=False)

    def close(self) -> None:
        self.bar.close()


def analyse_phase(
    cfg: CurateConfig, state: State, ensure_ray: Callable[[], None], kills: Counter, report: RunReport
) -> int:
    """Analyse the inputs no checkpoint records yet; fills report.listing and report.images_per_node."""
    uris = iter_uris(cfg.inputs, cfg.decode.extensions, cfg.uri_column, report.listing)
    # Which listed URIs are new (not analysed by an earlier run, not named earlier in this listing) is looked up
    # on the cluster a chunk at a time, so the driver remembers no URI.
    ensure_ray()
    listed = ListedFilter(StateFiles.of(state), cluster_pieces(), credentials_env(state.out))
    fresh = (u for chunk in _chunks(uris, cfg.chunk_size) for u in listed.fresh(chunk))
    progress = _Progress(cfg.progress, "analyse")
    new = 0
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            state.append(state.analysis, pa.concat_tables(pending))
            maybe_kill("analysis_part", kills)
            maybe_hold("analysis_part")
        pending, pending_rows = [], 0

    try:
        for chunk in _chunks(fresh, cfg.chunk_size):
            ensure_ray()
            for batch in analysis_dataset(chunk, cfg).iter_batches(batch_format="pyarrow", batch_size=None):
                for entry in pc.value_counts(batch.column("node")).to_pylist():
                    report.images_per_node[entry["values"]] += entry["counts"]
                table = batch.select(ANALYSIS_SCHEMA.names).cast(ANALYSIS_SCHEMA)
                pending.append(table)
                pending_rows += table.num_rows
                new += table.num_rows
                passed = table.column("reason").null_count
                progress.update(table.num_rows, passed=passed, rejected=table.num_rows - passed)
                if pending_rows >= cfg.checkpoint_rows:
                    flush()
            flush()
    finally:
        progress.close()
        listed.close()
    return new


def decide_phase(cfg: CurateConfig, state: State, ensure_ray: Callable[[], None], kills: Counter) -> None:
    """Keep / duplicate / reject every analysed input no decision records yet (data_engine/dedup_ray.py: on the
    cluster; the driver streams the state parts to it and its decisions into one part, written whole)."""
    # Every analysed row gets exactly one decision row, once: equal counts mean nothing is left to decide, and a
    # re-run that only reports starts no dedup.
    if _row_count(state, state.analysis, ANALYSIS_SCHEMA) <= _row_count(state, state.decisions, DECISION_SCHEMA):
        return
    ensure_ray()
    pieces = cluster_pieces()  # past 64 the (parts + P) * P objects cost more than the extra parallelism gives
    analysis = state.read(state.analysis, ANALYSIS_SCHEMA, ANALYSIS_COLUMNS)
    decisions = state.read(state.decisions, DECISION_SCHEMA, ["uri", "status"])
    written = 0
    with contextlib.ExitStack() as part:
        writer: pq.ParquetWriter | None = None
        for table in decide_on_cluster(analysis, decisions, cfg.dedup.max_hamming, cfg.dedup.near, pieces):
            if not table.num_rows:
                continue
            if writer is None:  # no rows, no part (as State.append)
                stream = part.enter_context(state.out.open_atomic(state.next_part(state.decisions)))
                writer = part.enter_context(pq.ParquetWriter(stream, DECISION_SCHEMA))
            writer.write_table(table)
            written += table.num_rows
    if written:
        maybe_kill("decisions", kills)


def _row_count(state: State, folder: str, schema: pa.Schema) -> int:
    return sum(t.num_rows for t in state.read(folder, schema, []))


def write_phase(
    cfg: CurateConfig, state: State, ensure_ray: Callable[[], None], kills: Counter, report: RunReport
) -> int:
    """Write the accepted records no shard holds yet, one Ray task per shard (data_engine/curate_write.py); which
    records those are is worked out on the cluster (data_engine/curate_join.py): the driver holds counts and names."""
    accepted = _accepted_count(state)
    if not accepted:
        return 0
    env = credentials_env(state.out)
    missing = missing_shard_parts(state)
    if missing:
        ensure_ray()
        reconcile_on_cluster(state, missing, env)
    plans = plan_names(state)
    unfinished = [n for n in plans if not state.out.exists(state.shard_part(n))]
    # Every accepted URI gets one written row (its shard's, or its error), once: as many written rows as accepted
    # decisions and no plan unfinished mean nothing is left to write.
    if not unfinished and _row_count(state, state.written, WRITTEN_SCHEMA) >= accepted:
        return 0
    ensure_ray()
    todo, chunks = pending_records(state, cluster_pieces(), cfg.chunk_size, env)
    if not todo and not unfinished:
        return 0
    ensure_ray()
    import ray

    shards_folder = state.out.sub(state.shards)
    remove_temporaries(shards_folder, SHARD_PREFIX)
    progress = _Progress(cfg.progress, "write")
    written = 0

    def on_done(name: str, result: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        nonlocal written
        if result["committed"]:
            maybe_kill("shard_renamed", kills)
            report.shards_per_node[result["node"]] += 1
        rows = result["rows"]
        state.out.write_table(
            state.shard_part(name), pa.concat_tables([rows, pa.Table.from_pylist(errors, schema=WRITTEN_SCHEMA)])
        )
        done = rows.column("error").null_count
        written += done
        progress.update(done, written=done)

    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    tasks = ShardTasks(state.out.uri(state.shards), cfg, window, on_done, credentials_env(state.out))
    try:
        # Plans a kill interrupted first, as planned; then the rest, numbered after every shard there is.
        for name, records in planned_records(state, unfinished, ANALYSIS_SCHEMA):
            tasks.submit(name, records, [])
        index = 1 + max((shard_index(n) for n in [*plans, *state.shard_names()]), default=-1)
        leftover: list[dict[str, Any]] = []
        for shard in plan_shards(chunks, ray_sizer(cfg), cfg.shard_max_count, cfg.shard_max_bytes):
            if shard.records is None:
                leftover = shard.errors
                continue
            name = f"{SHARD_PREFIX}-{index:06d}.tar"
            write_plan(state, name, shard.records)
            tasks.submit(name, shard.records, shard.errors)
            maybe_kill("shard_planned", kills)  # tests: a kill while earlier shards' tasks are still writing
            index += 1
        tasks.drain()
        if leftover:  # failures after the last shard: no shard part carries them, so they get their own
            state.append(state.written, pa.Table.from_pylist(leftover, schema=WRITTEN_SCHEMA))
    finally:
        progress.close()
    return written


def _accepted_count(state: State) -> int:
    tables = state.read(state.decisions, DECISION_SCHEMA, ["status"])
    return sum(pc.sum(pc.equal(t.column("status"), "accepted")).as_py() or 0 for t in tables)


def run_curate(cfg: CurateConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume, or only report) the whole job; returns the stats written to stats.json."""
    started = time.perf_counter()
    out = OutputFS.open(cfg.out)
    check_output_folder(out, create=False)
    if out.exists("config.yaml"):
        check_same_policy(out.read_bytes("config.yaml").decode("utf-8"), cfg)
    check_inputs(cfg.inputs)
    if cfg.detector.name != DetectorName.none:
        from data_engine.detect import build_detector

        # Build and run the detector once here: a missing or malformed model fails now, naming the file,
        # instead of inside a Ray actor after the job has started.
        build_detector(cfg.detector).detect([np.zeros((160, 120, 3), np.uint8)])
    check_output_folder(out, create=True)  # only now: a job refused above leaves no empty folder behind
    out.write_bytes("config.yaml", to_yaml(cfg).encode("utf-8"))
    state = State(out)
    kills: Counter[str] = Counter()
    report = RunReport()
    with contextlib.ExitStack() as stack:
        ray_started = False

        def ensure_ray() -> None:
            nonlocal ray_started
            if not ray_started:
                stack.enter_context(ray_session(cfg))
                ray_started = True

        t = time.perf_counter()
        report.new_inputs = analyse_phase(cfg, state, ensure_ray, kills, report)
        report.phase_seconds["analyse"] = time.perf_counter() - t
        t = time.perf_counter()
        decide_phase(cfg, state, ensure_ray, kills)
        report.phase_seconds["dedup"] = time.perf_counter() - t
        t = time.perf_counter()
        report.written = write_phase(cfg, state, ensure_ray, kills, report)
        report.phase_seconds["write"] = time.perf_counter() - t
        t = time.perf_counter()
        ensure_ray()
        counts = manifest_on_cluster(state, "manifest.parquet", cluster_pieces(), credentials_env(out))
        report.phase_seconds["manifest"] = time.perf_counter() - t
    seconds = time.perf_counter() - started
    shards = state.shard_names()
    stats = {
        "inputs": sum(counts["status"].values()),
        "status": {s: counts["status"].get(s, 0) for s in manifest_lib.STATUSES},
        "reason": counts["reason"],
        "shards": len(shards),
        # Files under the input folders that were not inputs (their extension is not an image's): with
        # `inputs` they account for every file there.
        "skipped_by_extension": report.listing.skipped_by_extension,
        "detector": cfg.detector.name.value,
        "this_run": {
            "new_inputs": report.new_inputs,
            "written": report.written,
            "seconds": round(seconds, 3),
            "images_per_s": round(report.new_inputs / seconds, 2) if report.new_inputs else 0.0,
            "phase_seconds": {k: round(v, 3) for k, v in report.phase_seconds.items()},
            "images_per_node": dict(sorted(report.images_per_node.items())),
            "shards_per_node": dict(sorted(report.shards_per_node.items())),
        },
    }
    if counts["unfinished"]:
        raise CurateError(f"{counts['unfinished']} inputs were analysed but not finished; re-run the same command")
    out.write_bytes("stats.json", (json.dumps(stats, indent=2) + "\n").encode("utf-8"))
    log(summary_text(stats, out.display))
    return stats
