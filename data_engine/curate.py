"""The curation DAG: inputs -> read/decode/quality/phash (Ray tasks) -> person detection (Ray actors) ->
global dedup (driver) -> shard members (driver threads; Ray tasks for re-encodes) -> atomic shards + manifest
(driver).

    hv curate photos/ more/*.jpg list.parquet --out runs/curated --detector none
    hv curate s3://bucket/raw/ --out /mnt/shared/curated --ray-address auto detector.concurrency=8

Output folder:
    shards/curated-000000.tar ...   accepted samples (the sample contract: jpg|png + json)
    manifest.parquet                one row per input ever seen: accepted / rejected / duplicate, with reason
    stats.json                      counts by status and reason, this run's images/s and phase times
    config.yaml                     the resolved config
    state/                          checkpoints that make a re-run resume (see below)

Resume. Every state file is written whole or not at all (temporary name, then rename), and each phase only
adds what the files do not already record:
    state/analysis/part-*.parquet   analysis rows, `checkpoint_rows` at a time; a re-run skips those URIs
    state/decisions/part-*.parquet  keep / duplicate / reject per analysed URI, written once per run
    state/written/<shard>.parquet   the URIs inside each complete shard (a shard renamed just before a kill
                                    is found on restart and its part rebuilt from the tar's keys)
So a kill -9 at any point costs at most one checkpoint of analysis and one shard of writing, and loses or
repeats no sample. New inputs on an existing folder are analysed and deduplicated against everything there.

Memory. The driver streams: it holds one chunk of URIs (`chunk_size`), Ray's bounded queues of results, and
per input only small figures (URI, key, 64-bit hash) for the global dedup, never pixels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_engine import manifest as manifest_lib
from data_engine.analysis import ANALYSIS_SCHEMA, analyse_batch, build_members, members_batch
from data_engine.curate_config import CurateConfig, DetectorName, check_same_policy, to_yaml
from data_engine.decode import reason_code
from data_engine.dedup import Candidate, decide
from data_engine.inputs import check_inputs, iter_uris
from data_engine.manifest import MANIFEST_SCHEMA, write_table_atomic

SHARD_PREFIX = "curated"
# Every curated image is stored under one member name, whatever its bytes (JPEG or PNG, kept as received):
# column-typed readers (Hugging Face `datasets`, Ray Data's default decoder) refuse shards that mix `jpg` and
# `png` samples, and every image reader (PIL, webdataset, Hugging Face, Ray) detects the format from the bytes.
IMAGE_MEMBER = "jpg"
DECISION_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("duplicate_of", pa.string()),
    ]
)
WRITTEN_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("shard", pa.string()),  # relative to the output folder; null when `error` is set
        pa.field("error", pa.string()),
    ]
)
KILL_ENV = "HV_CURATE_KILL_AT"  # fault injection for tests: "<point>:<n>" sends SIGKILL to this process


class CurateError(RuntimeError):
    """A job that cannot run as configured (the message says what to change)."""


# ------------------------------------------------------------------------------------------------- state


class State:
    """The checkpoint files under DIR/state (layout in the module docstring)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.analysis = os.path.join(out, "state", "analysis")
        self.decisions = os.path.join(out, "state", "decisions")
        self.written = os.path.join(out, "state", "written")
        self.shards = os.path.join(out, "shards")
        for folder in (self.analysis, self.decisions, self.written, self.shards):
            os.makedirs(folder, exist_ok=True)

    @staticmethod
    def _parts(folder: str) -> list[str]:
        return sorted(os.path.join(folder, p) for p in os.listdir(folder) if p.endswith(".parquet") and p[0] != ".")

    def read(self, folder: str, schema: pa.Schema, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for path in self._parts(folder):
            yield pq.read_table(path, schema=schema, columns=columns)

    def column(self, folder: str, schema: pa.Schema, name: str) -> list:
        return [v for t in self.read(folder, schema, [name]) for v in t.column(name).to_pylist()]

    def next_part(self, folder: str) -> str:
        numbers = [int(os.path.basename(p)[5:11]) for p in self._parts(folder) if os.path.basename(p)[:5] == "part-"]
        return os.path.join(folder, f"part-{max(numbers, default=-1) + 1:06d}.parquet")

    def append(self, folder: str, table: pa.Table) -> None:
        if table.num_rows:
            write_table_atomic(table, self.next_part(folder))

    def shard_part(self, shard_name: str) -> str:
        return os.path.join(self.written, shard_name.replace(".tar", ".parquet"))


def _maybe_kill(point: str, counters: Counter) -> None:
    spec = os.environ.get(KILL_ENV, "")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name == point:
        counters[point] += 1
        if counters[point] >= int(n or 1):
            os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------------- Ray


@contextlib.contextmanager
def ray_session(cfg: CurateConfig) -> Iterator[None]:
    """Join `cfg.ray_address`, reuse a Ray already started in this process, or start a small local one."""
    import ray

    started = False
    if not ray.is_initialized():
        common: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, **common)
        else:
            # Ray's socket paths must stay under ~107 characters: a short temp folder, not the output folder.
            temp = os.path.join(tempfile.gettempdir(), f"hv-ray-{os.getuid()}")
            ray.init(
                num_cpus=cfg.num_cpus or os.cpu_count(),
                include_dashboard=False,
                object_store_memory=cfg.object_store_mb * 1024 * 1024,
                _temp_dir=temp,
                _system_config={"worker_niceness": cfg.worker_niceness},
                **common,
            )
        started = True
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts inputs; Ray's per-operator bars are noise here
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)] or [table]


def _one_cpu() -> dict[str, Any]:
    return {"num_cpus": 1}


def analysis_dataset(uris: list[str], cfg: CurateConfig):
    import ray

    detect = cfg.detector.name != DetectorName.none
    ds = ray.data.from_arrow(_blocks(pa.table({"uri": pa.array(uris, pa.string())}), cfg.images_per_task))
    ds = ds.map_batches(
        analyse_batch,
        fn_kwargs={"cfg": cfg, "keep_pixels": detect},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=1,
    )
    if detect:
        from data_engine.detect import PersonDetectorStage

        d = cfg.detector
        ds = ds.map_batches(
            PersonDetectorStage,
            fn_constructor_kwargs={"cfg": cfg},
            batch_format="pyarrow",
            batch_size=d.batch_size,
            concurrency=d.concurrency,
            num_cpus=d.num_cpus,
            num_gpus=d.num_gpus,
        )
    return ds


def members_dataset(records: pa.Table, cfg: CurateConfig):
    import ray

    ds = ray.data.from_arrow(_blocks(records, cfg.images_per_task))
    return ds.map_batches(members_batch, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", batch_size=None, num_cpus=1)


def _member_row(record: dict[str, Any], cfg: CurateConfig) -> dict[str, Any]:
    """build_members with every MEMBERS_SCHEMA column present, as the Ray path gives them."""
    return {"image": None, "json": None, "error": None, **build_members(record, cfg)}


def shard_members(
    records: pa.Table, cfg: CurateConfig, ensure_ray: Callable[[], None], pool: ThreadPoolExecutor
) -> Iterator[dict[str, Any]]:
    """Shard members (MEMBERS_SCHEMA rows) of accepted records, in no particular order.

    Records whose original bytes go into the shard unchanged (nearly all) are read and hashed here, by a few
    threads: every byte of a shard passes through this process's writer anyway, so shipping it through a Ray
    task and the object store first only adds copies and a dataset start-up (measured on 1000 JPEGs of
    1024x768: 2.1 s through Ray, 0.7 s with 4 threads). Records that need a re-encode (EXIF rotation, another
    mode or format) decode and encode the full image: CPU work that belongs on the workers, so Ray does those.
    """
    reencode = pc.is_valid(records.column("reencode"))
    heavy = records.filter(reencode)
    if heavy.num_rows:
        ensure_ray()
        for batch in members_dataset(heavy, cfg).iter_batches(batch_format="pyarrow", batch_size=None):
            yield from batch.to_pylist()
    light = records.filter(pc.invert(reencode))
    # A bounded window of reads in flight: the writer, not the readers, sets the pace, so memory stays at
    # about `window` images whatever the chunk size.
    window: deque[Future] = deque()
    for record in light.to_pylist():
        window.append(pool.submit(_member_row, record, cfg))
        if len(window) >= 4 * cfg.write_threads:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


# --------------------------------------------------------------------------------------------- the phases


@dataclass
class RunReport:
    new_inputs: int = 0
    written: int = 0
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


def analyse_phase(cfg: CurateConfig, state: State, ensure_ray: Callable[[], None], kills: Counter) -> int:
    known = set(state.column(state.analysis, ANALYSIS_SCHEMA, "uri"))
    fresh = (u for u in iter_uris(cfg.inputs, cfg.decode.extensions, cfg.uri_column) if u not in known)
    progress = _Progress(cfg.progress, "analyse")
    new = 0
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if pending:
            state.append(state.analysis, pa.concat_tables(pending))
            _maybe_kill("analysis_part", kills)
        pending, pending_rows = [], 0

    try:
        for chunk in _chunks(fresh, cfg.chunk_size):
            ensure_ray()
            for batch in analysis_dataset(chunk, cfg).iter_batches(batch_format="pyarrow", batch_size=None):
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
    return new


def decide_phase(cfg: CurateConfig, state: State, kills: Counter) -> None:
    decided = dict(
        zip(
            state.column(state.decisions, DECISION_SCHEMA, "uri"),
            state.column(state.decisions, DECISION_SCHEMA, "status"),
            strict=True,
        )
    )
    kept_before: list[tuple[str, int]] = []
    candidates: list[Candidate] = []
    rows: list[dict[str, Any]] = []
    columns = ["uri", "key", "reason", "phash", "width", "height", "person_score", "blur"]
    for table in state.read(state.analysis, ANALYSIS_SCHEMA, columns):
        for r in table.to_pylist():
            status = decided.get(r["uri"])
            if status == "accepted":
                kept_before.append((r["key"], int(r["phash"], 16)))
            elif status is None and r["reason"] is not None:
                rows.append({"uri": r["uri"], "status": "rejected", "reason": r["reason"], "duplicate_of": None})
            elif status is None:
                pixels = int(r["width"]) * int(r["height"])
                score = r["person_score"] if r["person_score"] is not None else 0.0
                candidates.append(Candidate(r["uri"], r["key"], int(r["phash"], 16), pixels, score, r["blur"] or 0.0))
    for v in decide(candidates, kept_before, cfg.dedup.max_hamming, cfg.dedup.near):
        status = "accepted" if v.duplicate_of is None else "duplicate"
        rows.append({"uri": v.uri, "status": status, "reason": v.reason, "duplicate_of": v.duplicate_of})
    state.append(state.decisions, pa.Table.from_pylist(rows, schema=DECISION_SCHEMA))
    if rows:
        _maybe_kill("decisions", kills)


def _written_uris(state: State) -> set[str]:
    return set(state.column(state.written, WRITTEN_SCHEMA, "uri"))


def reconcile_shards(state: State, accepted_by_key: dict[str, str]) -> None:
    """A shard renamed just before a kill has no part in state/written: rebuild it from the tar's keys."""
    from data_engine.shards import iter_members

    for name in sorted(os.listdir(state.shards)):
        if not (name.startswith(f"{SHARD_PREFIX}-") and name.endswith(".tar")) or os.path.exists(
            state.shard_part(name)
        ):
            continue
        rows = []
        for members in iter_members(os.path.join(state.shards, name)):
            raw = members["__key__"]
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            uri = accepted_by_key.get(key)
            if uri is None:
                meta = json.loads(members["json"])
                uri = meta["source"]["uri"]
            rows.append({"uri": uri, "key": key, "shard": f"shards/{name}", "error": None})
        write_table_atomic(pa.Table.from_pylist(rows, schema=WRITTEN_SCHEMA), state.shard_part(name))


def write_phase(cfg: CurateConfig, state: State, ensure_ray: Callable[[], None], kills: Counter) -> int:
    from data_engine.shards import ShardWriter

    accepted = {
        uri
        for t in state.read(state.decisions, DECISION_SCHEMA, ["uri", "status"])
        for uri, status in zip(t.column("uri").to_pylist(), t.column("status").to_pylist(), strict=True)
        if status == "accepted"
    }
    if not accepted:
        return 0
    key_of = {}
    for t in state.read(state.analysis, ANALYSIS_SCHEMA, ["uri", "key"]):
        for uri, key in zip(t.column("uri").to_pylist(), t.column("key").to_pylist(), strict=True):
            if uri in accepted:
                key_of[key] = uri
    reconcile_shards(state, key_of)
    todo = accepted - _written_uris(state)
    if not todo:
        return 0
    unshelved: dict[str, dict[str, Any]] = {}  # written into the open shard, not yet recorded
    errors: list[dict[str, Any]] = []

    def on_shard(info) -> None:
        _maybe_kill("shard_renamed", kills)
        name = os.path.basename(info.path)
        rows = [dict(unshelved.pop(key), shard=f"shards/{name}") for key in info.keys]
        write_table_atomic(pa.Table.from_pylist(rows + errors, schema=WRITTEN_SCHEMA), state.shard_part(name))
        errors.clear()

    progress = _Progress(cfg.progress, "write")
    written = 0
    prefix = os.path.join(state.shards, SHARD_PREFIX)
    pool = ThreadPoolExecutor(cfg.write_threads, thread_name_prefix="hv-curate-read")
    try:
        with ShardWriter(prefix, cfg.shard_max_count, cfg.shard_max_bytes, on_shard=on_shard) as writer:
            for records in _pending_records(state, todo, cfg.chunk_size):
                for row in shard_members(records, cfg, ensure_ray, pool):
                    if row.get("error"):
                        errors.append({"uri": row["uri"], "key": row["key"], "shard": None, "error": row["error"]})
                        continue
                    unshelved[row["key"]] = {"uri": row["uri"], "key": row["key"], "error": None}
                    writer.write({"__key__": row["key"].encode(), IMAGE_MEMBER: row["image"], "json": row["json"]})
                    written += 1
                    progress.update(1, written=1)
        if errors:  # failures after the last shard closed: no shard part carries them, so they get their own
            state.append(state.written, pa.Table.from_pylist(errors, schema=WRITTEN_SCHEMA))
    finally:
        pool.shutdown(cancel_futures=True)
        progress.close()
    return written


def _pending_records(state: State, todo: set[str], chunk_size: int) -> Iterator[pa.Table]:
    buffer: list[pa.Table] = []
    rows = 0
    for table in state.read(state.analysis, ANALYSIS_SCHEMA):
        mask = pa.array([u in todo for u in table.column("uri").to_pylist()], pa.bool_())
        selected = table.filter(mask)
        if selected.num_rows:
            buffer.append(selected)
            rows += selected.num_rows
        if rows >= chunk_size:
            yield pa.concat_tables(buffer)
            buffer, rows = [], 0
    if buffer:
        yield pa.concat_tables(buffer)


def build_manifest(state: State, out_path: str) -> dict[str, Any]:
    """Join analysis, decisions and shards into manifest.parquet (streamed, atomic); returns the counts."""
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
    tmp = os.path.join(os.path.dirname(out_path), f".{os.path.basename(out_path)}.tmp-{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, MANIFEST_SCHEMA) as writer:
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
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"status": dict(by_status), "reason": dict(sorted(by_reason.items())), "unfinished": undecided}


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def run_curate(cfg: CurateConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume, or only report) the whole job; returns the stats written to stats.json."""
    started = time.perf_counter()
    out = os.path.abspath(cfg.out[len("file://") :] if cfg.out.startswith("file://") else cfg.out)
    os.makedirs(out, exist_ok=True)
    config_path = os.path.join(out, "config.yaml")
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            check_same_policy(f.read(), cfg)
    check_inputs(cfg.inputs)
    if cfg.detector.name != DetectorName.none:
        from data_engine.detect import build_detector

        # Build and run the detector once here: a missing or malformed model fails now, naming the file,
        # instead of inside a Ray actor after the job has started.
        build_detector(cfg.detector).detect([np.zeros((160, 120, 3), np.uint8)])
    _write_text_atomic(config_path, to_yaml(cfg))
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
        report.new_inputs = analyse_phase(cfg, state, ensure_ray, kills)
        report.phase_seconds["analyse"] = time.perf_counter() - t
        t = time.perf_counter()
        decide_phase(cfg, state, kills)
        report.phase_seconds["dedup"] = time.perf_counter() - t
        t = time.perf_counter()
        report.written = write_phase(cfg, state, ensure_ray, kills)
        report.phase_seconds["write"] = time.perf_counter() - t
    t = time.perf_counter()
    counts = build_manifest(state, os.path.join(out, "manifest.parquet"))
    report.phase_seconds["manifest"] = time.perf_counter() - t
    seconds = time.perf_counter() - started
    shards = sorted(n for n in os.listdir(state.shards) if n.endswith(".tar") and not n.startswith("."))
    stats = {
        "inputs": sum(counts["status"].values()),
        "status": {s: counts["status"].get(s, 0) for s in manifest_lib.STATUSES},
        "reason": counts["reason"],
        "shards": len(shards),
        "detector": cfg.detector.name.value,
        "this_run": {
            "new_inputs": report.new_inputs,
            "written": report.written,
            "seconds": round(seconds, 3),
            "images_per_s": round(report.new_inputs / seconds, 2) if report.new_inputs else 0.0,
            "phase_seconds": {k: round(v, 3) for k, v in report.phase_seconds.items()},
        },
    }
    if counts["unfinished"]:
        raise CurateError(f"{counts['unfinished']} inputs were analysed but not finished; re-run the same command")
    _write_text_atomic(os.path.join(out, "stats.json"), json.dumps(stats, indent=2) + "\n")
    log(summary_text(stats, out))
    return stats


def summary_text(stats: dict[str, Any], out: str) -> str:
    s, run = stats["status"], stats["this_run"]
    lines = [
        f"curated {stats['inputs']} inputs into {out}: {s['accepted']} accepted, {s['rejected']} rejected, "
        f"{s['duplicate']} duplicate; {stats['shards']} shards",
        f"this run: {run['new_inputs']} new inputs, {run['written']} samples written, {run['seconds']:.1f} s"
        + (f" ({run['images_per_s']:.1f} images/s)" if run["new_inputs"] else " (nothing new: report only)"),
    ]
    if stats["reason"]:
        top = sorted(stats["reason"].items(), key=lambda kv: -kv[1])
        lines.append("reasons: " + ", ".join(f"{k} {v}" for k, v in top))
    return "\n".join(lines)
