"""The write phase of `hv curate` on the Ray cluster: the driver plans the shards, one Ray task per shard reads that
shard's members on its own node and writes its tar.

    plan    the pending accepted records in write order: the analysis files' order, a chunk (`chunk_size`) at a
            time, re-encodes first inside each chunk (the order the driver-side writer used, so the same inputs give
            the same shards as before). Ray tasks size each sample (`sizes_batch`: a byte copy's size follows from
            its analysis row, a re-encode is encoded to learn it, and fails there if its file changed); the planner
            keeps a running count and tar size and cuts exactly where ShardWriter would close a shard (`max_count`
            samples or `max_bytes`).
    commit  each shard's plan (its URIs in order) is written to state/plan/<shard>.parquet before its task starts.
    write   `write_shard`, one task per shard: reads and builds the members, streams them into a temporary and
            renames it (an object store: one upload under the final name); returns the WRITTEN rows, which the
            driver records in state/written/<shard>.parquet.

Why a plan file. Shard tasks finish in any order, so a kill -9 can leave shard 7 committed and shard 6 not; a re-run
must write shard 6 with exactly the members the first run meant, or names and bytes would differ from an unbroken
run. So a plan without a written part is written again from the plan, whatever else was committed meanwhile; the
shards committed without a written part get it rebuilt from their tar (curate_state.reconcile_shard, in a Ray
task), and only records in no plan and no written part (found on the cluster: data_engine/curate_join.py) are planned
anew, numbered after every shard planned or written.

The driver holds one chunk of records, the open shard's records (at most `shard_max_count`) and the references of
the shard tasks in flight (two per cluster CPU). A byte copy whose file changed after its analysis is found by its
shard task, so that shard holds one sample fewer than the old writer would have put there; with unchanged inputs the
shards are the same.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.analysis import build_members, member_json
from data_engine.curate_config import CurateConfig
from data_engine.curate_state import WRITTEN_SCHEMA, State
from data_engine.output_fs import AtomicFile, OutputFS
from data_engine.shard_paths import SHARD_NAME_RE, TMP_MARK
from data_engine.shard_writer import _TarStream, sample_tar_bytes

# Every curated image is stored under one member name, whatever its bytes (JPEG or PNG, kept as received):
# column-typed readers (Hugging Face `datasets`, Ray Data's default decoder) refuse shards that mix `jpg` and
# `png` samples, and every image reader (PIL, webdataset, Hugging Face, Ray) detects the format from the bytes.
IMAGE_MEMBER = "jpg"
PLAN_FOLDER = "state/plan"
PLAN_SCHEMA = pa.schema([pa.field("uri", pa.string(), nullable=False), pa.field("key", pa.string())])
SIZE_SCHEMA = pa.schema([pa.field("size", pa.int64()), pa.field("error", pa.string())])


# ------------------------------------------------------------------------------------------- worker side


def sizes_batch(records: pa.Table, cfg: CurateConfig) -> pa.Table:
    """Ray task: accepted records (ANALYSIS_SCHEMA) -> SIZE_SCHEMA rows, the tar bytes each sample will take."""
    rows = []
    for record in records.to_pylist():
        if record["reencode"]:
            members = build_members(record, cfg)
            if members.get("error"):
                rows.append({"size": None, "error": members["error"]})
                continue
            sizes = {IMAGE_MEMBER: len(members["image"]), "json": len(members["json"])}
        else:  # the original bytes go in: their length is in the analysis row
            sizes = {IMAGE_MEMBER: record["bytes"], "json": len(member_json(record))}
        rows.append({"size": sample_tar_bytes(record["key"], sizes), "error": None})
    return pa.Table.from_pylist(rows, schema=SIZE_SCHEMA)


def write_shard(shards_uri: str, name: str, records: pa.Table, cfg: CurateConfig) -> dict[str, Any]:
    """Ray task: build the members of `records` (in order) and write them as the shard `name` under `shards_uri`,
    whole or not at all. Returns {rows: WRITTEN rows, committed: a tar was written, node, pid}."""
    import ray

    out = OutputFS.open(shards_uri)
    shard = f"{State.shards}/{name}"
    rows: list[dict[str, Any]] = []
    pending: AtomicFile | None = None
    tar: _TarStream | None = None
    try:
        for record in records.to_pylist():
            members = build_members(record, cfg)
            if members.get("error"):  # its file changed since the analysis: recorded, not written
                rows.append({"uri": record["uri"], "key": record["key"], "shard": None, "error": members["error"]})
                continue
            if pending is None:  # no sample, no shard (as ShardWriter)
                pending = out.begin(name)
                tar = _TarStream(pending.stream)
            assert tar is not None
            tar.write({"__key__": record["key"], IMAGE_MEMBER: members["image"], "json": members["json"]})
            rows.append({"uri": record["uri"], "key": record["key"], "shard": shard, "error": None})
        if pending is not None and tar is not None:
            tar.close()
            pending.commit()
    except BaseException:
        if pending is not None:
            pending.discard()
        raise
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    table = pa.Table.from_pylist(rows, schema=WRITTEN_SCHEMA)
    return {"rows": table, "committed": pending is not None, "node": node, "pid": os.getpid()}


# -------------------------------------------------------------------------------------------- the planner


@dataclass
class PlannedShard:
    records: pa.Table | None  # the members, in order; None: only errors are left after the last shard
    errors: list[dict[str, Any]] = field(default_factory=list)  # WRITTEN rows of records that failed to size


def plan_shards(
    chunks: Iterable[pa.Table], sizer: Callable[[pa.Table], pa.Table], max_count: int, max_bytes: int
) -> Iterator[PlannedShard]:
    """Cut the records of `chunks` (ANALYSIS_SCHEMA, in analysis order) into shards where ShardWriter would close
    them. `sizer` gives SIZE_SCHEMA rows for a table of records, in its order."""
    open_parts: list[pa.Table] = []
    count = size = 0
    errors: list[dict[str, Any]] = []
    for chunk in chunks:
        heavy = pc.is_valid(chunk.column("reencode")).to_numpy(zero_copy_only=False)
        chunk = chunk.take(pa.array(np.concatenate([np.flatnonzero(heavy), np.flatnonzero(~heavy)]), pa.int64()))
        sized = sizer(chunk)
        taken: list[int] = []
        for i, (nbytes, error) in enumerate(zip(sized["size"].to_pylist(), sized["error"].to_pylist(), strict=True)):
            if error is not None:
                errors.append({"uri": chunk["uri"][i].as_py(), "key": chunk["key"][i].as_py(), "shard": None})
                errors[-1]["error"] = error
                continue
            taken.append(i)
            count, size = count + 1, size + nbytes
            if count >= max_count or size >= max_bytes:
                yield PlannedShard(pa.concat_tables([*open_parts, chunk.take(pa.array(taken, pa.int64()))]), errors)
                open_parts, taken, errors, count, size = [], [], [], 0, 0
        if taken:
            open_parts.append(chunk.take(pa.array(taken, pa.int64())))
    if open_parts or errors:
        yield PlannedShard(pa.concat_tables(open_parts) if open_parts else None, errors)


def ray_sizer(cfg: CurateConfig) -> Callable[[pa.Table], pa.Table]:
    """`sizes_batch` over blocks of records (in plan_shards' order: re-encodes first) as Ray tasks, results in order."""
    import ray

    task = ray.remote(num_cpus=1)(sizes_batch)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def sizes(records: pa.Table) -> pa.Table:
        # Re-encodes (first in the chunk, as plan_shards orders it) are CPU work: `images_per_task` a task. A byte
        # copy costs microseconds, so the copies go in one block per CPU, not hundreds of tasks.
        light = records.column("reencode").null_count
        heavy = records.num_rows - light
        bounds = list(range(0, heavy, cfg.images_per_task))
        bounds += list(range(heavy, records.num_rows, max(cfg.images_per_task, -(-light // cpus))))
        bounds.append(records.num_rows)
        # take() copies: a slice would pickle its whole parent table into every task's arguments.
        blocks = [records.take(pa.array(range(lo, hi), pa.int64())) for lo, hi in itertools.pairwise(bounds) if hi > lo]
        return pa.concat_tables([SIZE_SCHEMA.empty_table(), *ray.get([task.remote(b, cfg) for b in blocks])])

    return sizes


# ----------------------------------------------------------------------------------------- plan files


def shard_index(name: str) -> int:
    m = SHARD_NAME_RE.match(name)
    return int(m.group("num")) if m else -1


def plan_names(state: State) -> list[str]:
    """Shards planned (`curated-000007.tar` for state/plan/curated-000007.parquet), sorted."""
    return [
        p.replace(".parquet", ".tar") for p in state.out.list(PLAN_FOLDER) if p.endswith(".parquet") and p[0] != "."
    ]


def write_plan(state: State, name: str, records: pa.Table) -> None:
    state.out.write_table(f"{PLAN_FOLDER}/{name.replace('.tar', '.parquet')}", records.select(PLAN_SCHEMA.names))


def read_plan(state: State, name: str) -> pa.Table:
    return state.out.read_table(f"{PLAN_FOLDER}/{name.replace('.tar', '.parquet')}", schema=PLAN_SCHEMA)


def remove_temporaries(shards: OutputFS, prefix: str) -> None:
    """Hidden temporaries of shards a killed run was writing (local folders; an object store has none)."""
    for name in shards.list(""):
        if name.startswith(f".{prefix}-") and TMP_MARK in name:
            shards.delete(name)


# ------------------------------------------------------------------------------------------- the driver


class ShardTasks:
    """Shard tasks in flight, at most `window`; results are recorded in submission order by `on_done(name, result,
    errors)` (so a kill counts shards in plan order, whichever task finished first)."""

    def __init__(self, shards_uri: str, cfg: CurateConfig, window: int, on_done, runtime_env: dict | None) -> None:
        import ray

        options: dict[str, Any] = {"num_cpus": 1}
        if runtime_env:
            options["runtime_env"] = runtime_env
        self._task = ray.remote(write_shard).options(**options)
        self._cfg, self._uri, self._window, self._on_done = cfg, shards_uri, window, on_done
        self._flight: deque[tuple[str, Any, list[dict[str, Any]]]] = deque()

    def submit(self, name: str, records: pa.Table, errors: list[dict[str, Any]]) -> None:
        self._flight.append((name, self._task.remote(self._uri, name, records, self._cfg), errors))
        while len(self._flight) > self._window:
            self._finish_one()

    def _finish_one(self) -> None:
        import ray

        name, ref, errors = self._flight.popleft()
        self._on_done(name, ray.get(ref), errors)

    def drain(self) -> None:
        while self._flight:
            self._finish_one()


def credentials_env(out: OutputFS) -> dict[str, Any] | None:
    """The driver's AWS_* variables for the shard tasks of an object-store output: a worker's environment is its
    raylet's (the cluster's, or that of whoever started the local Ray), not this process's, and the tasks write
    with the credentials `hv curate` was given."""
    if not out.remote:
        return None
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    return {"env_vars": env} if env else None


def planned_records(state: State, names: list[str], analysis_schema: pa.Schema) -> Iterator[tuple[str, pa.Table]]:
    """(name, its records in plan order) of the plans `names`: the analysis rows of their URIs."""
    if not names:  # the common case: no kill interrupted a plan, so no pass over the analysis files
        return
    position: dict[str, tuple[int, int]] = {}
    for s, name in enumerate(names):
        for i, uri in enumerate(read_plan(state, name).column("uri").to_pylist()):
            position[uri] = (s, i)
    found: list[list[tuple[int, pa.Table]]] = [[] for _ in names]
    for table in state.read(state.analysis, analysis_schema):
        for i, uri in enumerate(table.column("uri").to_pylist()):
            at = position.pop(uri, None)  # pop: the first analysis row of a URI, as the manifest takes it
            if at is not None:
                found[at[0]].append((at[1], table.slice(i, 1)))
    for name, rows in zip(names, found, strict=True):
        rows.sort(key=lambda r: r[0])
        yield name, pa.concat_tables([r[1] for r in rows]) if rows else analysis_schema.empty_table()
