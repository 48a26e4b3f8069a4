"""The per-input joins of `hv curate`, on the Ray cluster: the driver passes file paths and gets back counts (and, in
the write phase, the selected rows of one analysis part at a time), so its memory does not grow with the inputs.

    listed     which listed URIs are new: not in state/analysis (skipped on resume) and not named earlier in this
               listing (an input named twice is curated once). P actors (`ListedIndex`), each holding the analysed
               and the already listed URIs of one URI piece while the analyse phase runs; the driver asks them
               about one chunk of the listing at a time (`ListedFilter`)
    pending    the accepted records that no shard holds or plans yet (the write phase's to-do), in analysis order:
               one task per URI piece (`pending_piece`) reads the URI columns of every state file and keeps its
               piece; a coordinating task (`pending_rows`) merges their (part, row) numbers and streams them to the
               driver one analysis part at a time, at most two ahead; the driver reads that part and takes the rows
    manifest   decisions x shards joined onto the first analysis row of each URI (`manifest_piece` per URI piece);
               a coordinating task (`write_manifest`) writes manifest.parquet from them and returns the counts
    reconcile  a shard committed just before a kill gets its state/written part rebuilt from its tar by a task

A URI piece is a digest of the URI (data_engine/dedup_ray.uri_piece: every process agrees on it), so all the rows of a
URI, wherever the state files hold them, meet in one task. The tasks read the state files themselves through the
output folder's URI; the coordinating tasks and actors carry the driver's AWS_* credentials for an object store
(curate_write.credentials_env), and the tasks they start inherit them. Why coordinating tasks: Ray keeps a task's
small results in the memory of the process that submitted it, so the pieces are submitted and gathered in a task.

Memory, none of it the driver's: an index actor or piece task holds the URIs of its piece (inputs / P); the
coordinating task of the write phase 8 bytes a pending record, that of the manifest the join columns of every input
(status, reason, duplicate_of, shard: about 100 bytes an input) while it writes the manifest.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_engine import manifest as manifest_lib
from data_engine.analysis import ANALYSIS_SCHEMA
from data_engine.curate_state import DECISION_SCHEMA, WRITTEN_SCHEMA, State, reconcile_shard
from data_engine.curate_write import PLAN_FOLDER, PLAN_SCHEMA
from data_engine.decode import reason_code
from data_engine.dedup_ray import uri_piece
from data_engine.manifest import MANIFEST_SCHEMA
from data_engine.output_fs import OutputFS

ROW_SCHEMA = pa.schema([("part", pa.int32()), ("row", pa.int32())])  # a row of an analysis part, by their numbers
# A manifest row's join columns, by the number of its analysis part and row there.
JOIN_SCHEMA = pa.schema([*ROW_SCHEMA, *((c, pa.string()) for c in ("status", "reason", "duplicate_of", "shard"))])


@dataclass(frozen=True)
class StateFiles:
    """The state files a join reads: paths relative to the output folder `out_uri`, each folder's in file order."""

    out_uri: str
    analysis: tuple[str, ...]
    decisions: tuple[str, ...] = ()
    written: tuple[str, ...] = ()
    plans: tuple[str, ...] = ()

    @classmethod
    def of(cls, state: State) -> StateFiles:
        return cls(
            state.out.uri(),
            tuple(state.parts(state.analysis)),
            tuple(state.parts(state.decisions)),
            tuple(state.parts(state.written)),
            tuple(state.parts(PLAN_FOLDER)),
        )


def cluster_pieces() -> int:
    """One piece per CPU spreads each stage over the cluster; past 64 the objects cost more than the parallelism."""
    import ray

    return max(1, min(64, int(ray.cluster_resources().get("CPU", 1))))


def _options(runtime_env: dict[str, Any] | None, **options: Any) -> dict[str, Any]:
    return {**options, "runtime_env": runtime_env} if runtime_env else options


def _read_piece(
    out: OutputFS, paths: tuple[str, ...], schema: pa.Schema, columns: list[str] | None, piece: int, pieces: int
) -> Iterator[tuple[int, np.ndarray, pa.Table]]:
    """(file number, row numbers, those rows) of each file's rows whose URI falls in `piece`."""
    for i, path in enumerate(paths):
        table = out.read_table(path, schema=schema, columns=columns)
        rows = np.flatnonzero(uri_piece(table.column("uri"), pieces) == piece)
        yield i, rows, table.take(pa.array(rows, pa.int64()))


def _uris(out: OutputFS, paths: tuple[str, ...], schema: pa.Schema, piece: int, pieces: int) -> pa.Array:
    arrays = [t.column("uri").combine_chunks() for _, _, t in _read_piece(out, paths, schema, ["uri"], piece, pieces)]
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


# --------------------------------------------------------------------------------- listed (new inputs only)


class ListedIndex:
    """Ray actor: the URIs of one piece that the analysis files `paths` hold or that the listing has named."""

    def __init__(self, out_uri: str, paths: tuple[str, ...], piece: int, pieces: int) -> None:
        out = OutputFS.open(out_uri)
        self.uris: set[str] = set()
        for _, _, table in _read_piece(out, paths, ANALYSIS_SCHEMA, ["uri"], piece, pieces):
            self.uris.update(table.column("uri").to_pylist())

    def claim(self, uris: list[str]) -> np.ndarray:
        """Which of `uris` (in order) are new; they are remembered, so a later claim of one of them says no."""
        new = np.zeros(len(uris), bool)
        for i, uri in enumerate(uris):
            if uri not in self.uris:
                self.uris.add(uri)
                new[i] = True
        return new


class ListedFilter:
    """Keeps the listed URIs that are new to the output folder and to this listing, asking the index actors about
    one list at a time (each URI's piece answers for it, so the order within a list is kept)."""

    def __init__(self, files: StateFiles, pieces: int, runtime_env: dict[str, Any] | None) -> None:
        import ray

        self.pieces = pieces
        # num_cpus=0: they only answer look-ups, and must not take the CPUs the analysis tasks need.
        actor = ray.remote(ListedIndex).options(**_options(runtime_env, num_cpus=0))
        self.actors = [actor.remote(files.out_uri, files.analysis, p, pieces) for p in range(pieces)]

    def fresh(self, uris: list[str]) -> list[str]:
        import ray

        piece = uri_piece(pa.array(uris, pa.string()), self.pieces)
        groups = [np.flatnonzero(piece == p) for p in range(self.pieces)]
        answers = ray.get([a.claim.remote([uris[i] for i in g]) for a, g in zip(self.actors, groups, strict=True)])
        new = np.zeros(len(uris), bool)
        for g, answer in zip(groups, answers, strict=True):
            new[g] = answer
        return [u for u, keep in zip(uris, new.tolist(), strict=True) if keep]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


# ------------------------------------------------------------------------------------- pending (write phase)


def pending_piece(files: StateFiles, piece: int, pieces: int) -> pa.Table:
    """Ray task: ROW_SCHEMA rows of the analysis rows (of URIs in `piece`) whose URI has an accepted decision and is
    in no written part and no plan, sorted."""
    out = OutputFS.open(files.out_uri)
    accepted = []
    for _, _, table in _read_piece(out, files.decisions, DECISION_SCHEMA, ["uri", "status"], piece, pieces):
        accepted.append(table.filter(pc.equal(table.column("status"), "accepted")).column("uri").combine_chunks())
    todo = pa.concat_arrays(accepted) if accepted else pa.array([], pa.string())
    done = pa.concat_arrays(
        [_uris(out, files.written, WRITTEN_SCHEMA, piece, pieces), _uris(out, files.plans, PLAN_SCHEMA, piece, pieces)]
    )
    todo = todo.filter(pc.invert(pc.is_in(todo, value_set=done)))
    parts: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    for i, index, table in _read_piece(out, files.analysis, ANALYSIS_SCHEMA, ["uri"], piece, pieces):
        hit = pc.is_in(table.column("uri"), value_set=todo).to_numpy(zero_copy_only=False)
        rows.append(index[hit])
        parts.append(np.full(int(hit.sum()), i))
    if not rows:
        return ROW_SCHEMA.empty_table()
    return pa.table([np.concatenate(parts).astype(np.int32), np.concatenate(rows).astype(np.int32)], schema=ROW_SCHEMA)


def pending_rows(files: StateFiles, pieces: int) -> Iterator[Any]:
    """Coordinating task (streaming): the number of pending records, then (analysis part number, its pending row
    numbers in order) for each part that has any, in file order."""
    import ray

    task = ray.remote(num_cpus=1)(pending_piece)
    pieces_rows = ray.get([task.remote(files, p, pieces) for p in range(pieces)])
    rows = pa.concat_tables([ROW_SCHEMA.empty_table(), *pieces_rows])
    rows = rows.sort_by([("part", "ascending"), ("row", "ascending")])
    yield rows.num_rows
    part, row = (rows.column(c).to_numpy() for c in ("part", "row"))
    bounds = np.flatnonzero(np.r_[True, part[1:] != part[:-1], True]) if len(part) else []
    for lo, hi in itertools.pairwise(bounds):
        yield int(part[lo]), row[lo:hi].copy()


def pending_records(
    state: State, pieces: int, chunk_size: int, runtime_env: dict[str, Any] | None
) -> tuple[int, Iterator[pa.Table]]:
    """(how many, the records) that the write phase is still to plan: the analysis rows (ANALYSIS_SCHEMA) of accepted
    URIs in no written part and no plan, in the analysis files' order, in tables of at least `chunk_size` rows (the
    last may be smaller). The driver holds one analysis part and one chunk."""
    import ray

    files = StateFiles.of(state)
    # Backpressure: the coordinating task yields at most two parts' row numbers ahead of the planner.
    options = _options(runtime_env, num_cpus=0, num_returns="streaming", _generator_backpressure_num_objects=2)
    stream = ray.remote(pending_rows).options(**options).remote(files, pieces)
    count = ray.get(next(stream))

    def records() -> Iterator[pa.Table]:
        buffer: list[pa.Table] = []
        rows = 0
        for ref in stream:
            part, index = ray.get(ref)
            table = state.out.read_table(files.analysis[part], ANALYSIS_SCHEMA).take(pa.array(index, pa.int64()))
            buffer.append(table)
            rows += table.num_rows
            if rows >= chunk_size:
                yield pa.concat_tables(buffer)
                buffer, rows = [], 0
        if buffer:
            yield pa.concat_tables(buffer)

    return count, records()


# ------------------------------------------------------------------------------------------------ manifest


def manifest_piece(files: StateFiles, piece: int, pieces: int) -> tuple[pa.Table, int]:
    """Ray task: JOIN_SCHEMA rows for the first analysis row of each URI in `piece` (its last decision, its last
    written row), sorted; and how many of those URIs are not finished (no decision, or accepted and not written)."""
    out = OutputFS.open(files.out_uri)
    decisions: dict[str, tuple[str, str | None, str | None]] = {}
    for _, _, table in _read_piece(out, files.decisions, DECISION_SCHEMA, None, piece, pieces):
        for r in table.to_pylist():
            decisions[r["uri"]] = (r["status"], r["reason"], r["duplicate_of"])
    written: dict[str, tuple[str | None, str | None]] = {}
    for _, _, table in _read_piece(out, files.written, WRITTEN_SCHEMA, None, piece, pieces):
        for r in table.to_pylist():
            written[r["uri"]] = (r["shard"], r["error"])
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    undecided = 0
    for i, index, table in _read_piece(out, files.analysis, ANALYSIS_SCHEMA, ["uri"], piece, pieces):
        for row, uri in zip(index.tolist(), table.column("uri").to_pylist(), strict=True):
            if uri in seen:
                continue
            seen.add(uri)
            decision = decisions.get(uri)
            shard, error = written.get(uri, (None, None))
            if decision is None or (decision[0] == "accepted" and shard is None and error is None):
                undecided += 1
                continue
            status, reason, duplicate_of = decision
            if error is not None:
                status, reason = "rejected", error
            rows.append(dict(part=i, row=row, status=status, reason=reason, duplicate_of=duplicate_of, shard=shard))
    return pa.Table.from_pylist(rows, schema=JOIN_SCHEMA), undecided


def write_manifest(files: StateFiles, pieces: int, rel: str) -> dict[str, Any]:
    """Coordinating task: the manifest rows in analysis order (the first row of each URI) written to `rel` under the
    output folder, whole or not at all; returns the counts."""
    import ray

    task = ray.remote(num_cpus=1)(manifest_piece)
    results = ray.get([task.remote(files, p, pieces) for p in range(pieces)])
    joined = pa.concat_tables([JOIN_SCHEMA.empty_table(), *(t for t, _ in results)])
    joined = joined.sort_by([("part", "ascending"), ("row", "ascending")])
    starts = np.searchsorted(joined.column("part").to_numpy(), np.arange(len(files.analysis) + 1))
    by_status: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    out = OutputFS.open(files.out_uri)
    with out.open_atomic(rel) as stream, pq.ParquetWriter(stream, MANIFEST_SCHEMA) as writer:
        for i, path in enumerate(files.analysis):
            lo, hi = int(starts[i]), int(starts[i + 1])
            if lo == hi:
                continue
            join = joined.slice(lo, hi - lo)
            analysis = out.read_table(path, ANALYSIS_SCHEMA).take(join.column("row"))
            rows = []
            for r, j in zip(analysis.to_pylist(), join.to_pylist(), strict=True):
                row = {c: r.get(c) for c in manifest_lib.COLUMNS if c in r}
                row.update(status=j["status"], reason=j["reason"], duplicate_of=j["duplicate_of"], shard=j["shard"])
                rows.append(row)
                by_status[j["status"]] += 1
                if j["reason"] is not None:
                    by_reason[reason_code(j["reason"])] += 1
            writer.write_table(manifest_lib.to_table(rows))
    undecided = sum(n for _, n in results)
    return {"status": dict(by_status), "reason": dict(sorted(by_reason.items())), "unfinished": undecided}


def manifest_on_cluster(state: State, rel: str, pieces: int, runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    """Join analysis, decisions and shards into `rel` (manifest.parquet) on the cluster; returns the counts. The same
    file and counts as the in-driver join it replaced (the reference in tests/data_engine/test_curate_join.py)."""
    import ray

    task = ray.remote(write_manifest).options(**_options(runtime_env, num_cpus=0))  # it waits on its pieces' CPUs
    return ray.get(task.remote(StateFiles.of(state), pieces, rel))


# ----------------------------------------------------------------------------------------------- reconcile


def _reconcile(out_uri: str, name: str) -> None:
    reconcile_shard(State(OutputFS.open(out_uri)), name)


def reconcile_on_cluster(state: State, names: list[str], runtime_env: dict[str, Any] | None) -> None:
    """The state/written parts of the shards `names` (committed, but a kill came before their part was written),
    each rebuilt from its tar by a task on the cluster: no image byte passes through the driver."""
    if not names:
        return
    import ray

    task = ray.remote(_reconcile).options(**_options(runtime_env, num_cpus=1))
    ray.get([task.remote(state.out.uri(), name) for name in names])
