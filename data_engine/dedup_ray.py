"""Global deduplication on the Ray cluster: the keep / duplicate decisions of `dedup.decide` over every input at
once, with no per-input state in the driver.

Why it is exact. Greedy best-first (data_engine/dedup.py) decides an image from the images already kept that share
its key or lie within `max_hamming` of its hash. Two images can only influence each other through a chain of such
links, so running the same greedy inside each connected component of the graph "same key, or hashes within
max_hamming" gives every image the verdict, the `duplicate_of` and the distance that one global run gives: inside
a component the images meet in the same relative order (earlier runs' keeps first, in the order the analysis files
list them, then candidates best first), and the tie-break between equally close kept images (the earliest kept)
only ever compares images of one component. A spurious link (two different keys hashed alike below) only merges
components, which changes no decision. tests/data_engine/test_dedup_ray.py checks this against `decide`.

The stages, plain Ray tasks exchanging Arrow tables through the object store (P = the number of pieces):
  1. split       each analysis part and each decisions part, into P pieces by a hash of the URI; every analysis
                 row gets a node id, (part number << 32) | row, which orders rows as the analysis files list them
  2. join        per URI piece: the earlier runs' status of each URI (its last decision wins); new rejections
                 become decision rows here; earlier keeps and new candidates become nodes, sent on by node id and
                 filed under each pigeonhole band of their hash and under their key (the buckets)
  3. link        per bucket piece: links between nodes of one bucket within max_hamming (a spanning forest of
                 each bucket, not every pair)
  4. components  one task: connected components of the links; labels sent on by node id. Its memory is the
                 linked nodes only (a node without a link is a component of its own)
  5. label       per node piece: a candidate without links is kept; linked nodes are sent on by component
  6. decide      per component piece: `dedup.decide` once per component
The driver puts each state part into the object store and streams the decision rows back in slices, holding
object references and counts; the stages are submitted by one coordinating task (`coordinate`), which owns the
intermediate objects (Ray keeps small task results in the owner's memory: there, not in the driver).

Limits. A bucket of m nodes costs m^2 / 2 popcounts (a query of the in-driver index cost m), so the work grows with
(inputs / 2^band bits)^2 per bucket, spread over P pieces; the components task holds every linked node (8 bytes
each and its links), the coordinating task the small intermediate pieces; there are (parts + P) * P objects, so a
very large job wants a Ray Data shuffle in place of this hand-rolled one. None of it is in the driver.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_engine.curate_state import DECISION_SCHEMA
from data_engine.dedup import Candidate, bands, decide

NODE_SCHEMA = pa.schema(
    [
        ("node", pa.int64()),
        ("uri", pa.string()),
        ("key", pa.string()),
        ("phash", pa.uint64()),
        ("pixels", pa.int64()),
        ("score", pa.float64()),
        ("blur", pa.float64()),
        ("kept", pa.bool_()),  # kept by an earlier run (else a candidate of this run)
    ]
)
BUCKET_SCHEMA = pa.schema([("band", pa.int8()), ("value", pa.uint64()), ("node", pa.int64()), ("phash", pa.uint64())])
LINK_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])
LABEL_SCHEMA = pa.schema([("node", pa.int64()), ("label", pa.int64())])
ANALYSIS_COLUMNS = ["uri", "key", "reason", "phash", "width", "height", "person_score", "blur"]
_EXACT_BAND = -1  # the bucket of a key (byte-identical files), beside the pHash bands 0..max_hamming
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads node ids and band values over the pieces


# ------------------------------------------------------------------------------------------------- helpers


def _returns(values: list[Any]) -> Any:
    """Ray hands a task with num_returns=1 its return value whole, not a one-item list."""
    return values if len(values) > 1 else values[0]


def _split(table: pa.Table, piece: np.ndarray, pieces: int) -> list[pa.Table]:
    """`table` cut into `pieces` tables by `piece` (row order kept inside each)."""
    order = np.argsort(piece, kind="stable")
    bounds = np.searchsorted(piece[order], np.arange(pieces + 1))
    return [_compact(table, order[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def _compact(table: pa.Table, rows: np.ndarray) -> pa.Table:
    # take() copies into new buffers: a slice would pickle (into the object store) its whole parent table.
    return table.take(pa.array(rows, pa.int64()))


def _spread(values: np.ndarray, pieces: int) -> np.ndarray:
    mixed = values.astype(np.uint64) * _MIX
    return ((mixed >> np.uint64(32)) % np.uint64(pieces)).astype(np.int64)


def uri_piece(uris: pa.ChunkedArray | pa.Array, pieces: int) -> np.ndarray:
    """The piece (0..pieces-1) of each URI. A digest, not hash(): Python salts str hashes per process, and every task
    must agree."""
    digests = (hashlib.blake2b(u.encode(), digest_size=8).digest() for u in uris.to_pylist())
    return _spread(np.frombuffer(b"".join(digests), dtype=np.uint64), pieces)


def _key_value(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _ids(part: int, rows: int) -> np.ndarray:
    return (np.int64(part) << np.int64(32)) + np.arange(rows, dtype=np.int64)


def _concat(tables: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = list(tables)
    return pa.concat_tables(tables) if tables else schema.empty_table()


# -------------------------------------------------------------------------------------------- the stages


def split_analysis(table: pa.Table, part: int, pieces: int) -> Any:
    table = table.select(ANALYSIS_COLUMNS).append_column("node", pa.array(_ids(part, table.num_rows)))
    return _returns(_split(table, uri_piece(table.column("uri"), pieces), pieces))


def split_decisions(table: pa.Table, part: int, pieces: int) -> Any:
    table = table.select(["uri", "status"]).append_column("order", pa.array(_ids(part, table.num_rows)))
    return _returns(_split(table, uri_piece(table.column("uri"), pieces), pieces))


def join(pieces: int, max_hamming: int, near: bool, n_analysis: int, *tables: pa.Table) -> Any:
    """Returns [rejection rows] + P node pieces (by node id) + P bucket pieces (by bucket)."""
    analysis = pa.concat_tables(tables[:n_analysis])
    analysis = analysis.take(pc.sort_indices(analysis, [("node", "ascending")]))
    status: dict[str, str] = {}
    if len(tables) > n_analysis:
        decided = pa.concat_tables(tables[n_analysis:])
        decided = decided.take(pc.sort_indices(decided, [("order", "ascending")]))
        # The last decision of a URI wins, as a dict built in file order gives.
        status = dict(zip(decided.column("uri").to_pylist(), decided.column("status").to_pylist(), strict=True))
    rejected: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    for r in analysis.to_pylist():
        earlier = status.get(r["uri"])
        if earlier is None and r["reason"] is not None:
            rejected.append({"uri": r["uri"], "status": "rejected", "reason": r["reason"], "duplicate_of": None})
        elif earlier is None or earlier == "accepted":
            score = r["person_score"] if r["person_score"] is not None else 0.0
            kept = earlier == "accepted"  # only its key and hash matter: it is kept whatever its rank
            pixels = 0 if kept else int(r["width"]) * int(r["height"])
            node = {"node": r["node"], "uri": r["uri"], "key": r["key"], "phash": int(r["phash"], 16)}
            nodes.append(dict(node, pixels=pixels, score=score, blur=r["blur"] or 0.0, kept=kept))
    node_table = pa.Table.from_pylist(nodes, schema=NODE_SCHEMA)
    ids = node_table.column("node").to_numpy()
    hashes = node_table.column("phash").to_numpy()
    values = [np.array([_key_value(k) for k in node_table.column("key").to_pylist()], dtype=np.uint64)]
    band_ids = [np.full(len(ids), _EXACT_BAND, np.int8)]
    for i, (shift, mask) in enumerate(bands(max_hamming) if near else []):
        values.append((hashes >> np.uint64(shift)) & np.uint64(mask))
        band_ids.append(np.full(len(ids), i, np.int8))
    value = np.concatenate(values)
    band = np.concatenate(band_ids)
    buckets = pa.table([band, value, np.tile(ids, len(values)), np.tile(hashes, len(values))], schema=BUCKET_SCHEMA)
    bucket_piece = _spread(value ^ (band.astype(np.uint64) + np.uint64(1)) * _MIX, pieces)
    out = [pa.Table.from_pylist(rejected, schema=DECISION_SCHEMA)]
    out += _split(node_table, _spread(ids, pieces), pieces)
    out += _split(buckets, bucket_piece, pieces)
    return _returns(out)


class _Forest:
    """Union-find over 0..n-1 that reports only the unions that join two trees (a spanning forest)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> bool:
        ri, rj = self.root(i), self.root(j)
        if ri == rj:
            return False
        self.parent[max(ri, rj)] = min(ri, rj)
        return True


def _bucket_links(band: int, ids: np.ndarray, hashes: np.ndarray, max_hamming: int) -> list[tuple[int, int]]:
    if band == _EXACT_BAND:  # one key (or two keys whose 64-bit digests collide: a harmless extra link)
        return [(int(ids[0]), int(n)) for n in ids[1:]]
    # Nodes with equal hashes are at distance 0: a star to the first; then pairs among the distinct hashes.
    distinct, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    links = [(int(ids[first[g]]), int(n)) for n, g in zip(ids, inverse, strict=True) if ids[first[g]] != n]
    forest = _Forest(len(distinct))
    for i in range(len(distinct) - 1):
        near = np.flatnonzero(np.bitwise_count(distinct[i + 1 :] ^ distinct[i]) <= max_hamming) + i + 1
        links += [(int(ids[first[i]]), int(ids[first[j]])) for j in near if forest.union(i, int(j))]
    return links


def link(max_hamming: int, *tables: pa.Table) -> pa.Table:
    buckets = _concat(tables, BUCKET_SCHEMA)
    band = buckets.column("band").to_numpy()
    value = buckets.column("value").to_numpy()
    order = np.lexsort((buckets.column("node").to_numpy(), value, band))
    band, value = band[order], value[order]
    ids = buckets.column("node").to_numpy()[order]
    hashes = buckets.column("phash").to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, (band[1:] != band[:-1]) | (value[1:] != value[:-1])])
    ends = np.r_[starts[1:], len(band)]
    links: list[tuple[int, int]] = []
    for lo, hi in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        links += _bucket_links(int(band[lo]), ids[lo:hi], hashes[lo:hi], max_hamming)
    a, b = (np.array(c, dtype=np.int64) for c in zip(*links, strict=True)) if links else (np.zeros(0, np.int64),) * 2
    return pa.table([a, b], schema=LINK_SCHEMA)


def components(pieces: int, *tables: pa.Table) -> Any:
    """P label pieces (by node id): each linked node's component, named by its lowest node id."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    links = _concat(tables, LINK_SCHEMA)
    a, b = links.column("a").to_numpy(), links.column("b").to_numpy()
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a), np.int8), (inverse[: len(a)], inverse[len(a) :])), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    lowest = np.full(count, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(lowest, component, nodes)
    labels = pa.table([nodes, lowest[component]], schema=LABEL_SCHEMA)
    return _returns(_split(labels, _spread(nodes, pieces), pieces))


def label(pieces: int, n_nodes: int, *tables: pa.Table) -> Any:
    """Returns [rows of candidates kept alone] + P pieces of linked nodes (by component), a `label` column added."""
    nodes = _concat(tables[:n_nodes], NODE_SCHEMA)
    labels = _concat(tables[n_nodes:], LABEL_SCHEMA)
    known = labels.column("node").to_numpy()
    order = np.argsort(known)
    ids = nodes.column("node").to_numpy()
    at = np.minimum(np.searchsorted(known[order], ids), max(len(known) - 1, 0))
    linked = np.zeros(len(ids), bool) if not len(known) else known[order][at] == ids
    alone = nodes.filter(pa.array(~linked & ~nodes.column("kept").to_numpy(zero_copy_only=False)))
    kept = [{"uri": u, "status": "accepted", "reason": None, "duplicate_of": None} for u in alone["uri"].to_pylist()]
    grouped = nodes.filter(pa.array(linked))
    component = labels.column("label").to_numpy()[order][at[linked]]
    grouped = grouped.append_column("label", pa.array(component, pa.int64()))
    return _returns(
        [pa.Table.from_pylist(kept, schema=DECISION_SCHEMA), *_split(grouped, _spread(component, pieces), pieces)]
    )


def decide_components(max_hamming: int, near: bool, *tables: pa.Table) -> pa.Table:
    nodes = _concat(tables, NODE_SCHEMA.append(pa.field("label", pa.int64())))
    nodes = nodes.take(pc.sort_indices(nodes, [("label", "ascending"), ("node", "ascending")]))
    rows: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []
    for r in [*nodes.to_pylist(), None]:
        if group and (r is None or r["label"] != group[0]["label"]):
            kept_before = [(g["key"], g["phash"]) for g in group if g["kept"]]
            candidates = [
                Candidate(g["uri"], g["key"], g["phash"], g["pixels"], g["score"], g["blur"])
                for g in group
                if not g["kept"]
            ]
            for v in decide(candidates, kept_before, max_hamming, near):
                status = "accepted" if v.duplicate_of is None else "duplicate"
                rows.append({"uri": v.uri, "status": status, "reason": v.reason, "duplicate_of": v.duplicate_of})
            group = []
        if r is not None:
            group.append(r)
    return pa.Table.from_pylist(rows, schema=DECISION_SCHEMA)


# ----------------------------------------------------------------------------------------------- the driver


def decide_in_driver(
    analysis: Iterable[pa.Table], decisions: Iterable[pa.Table], max_hamming: int, near: bool
) -> list[dict[str, Any]]:
    """The same decision rows computed in this process, every row in memory: how `hv curate` decided before the
    cluster path. Kept as the reference the tests and benchmarks/dedup.py compare `decide_on_cluster` with."""
    decided = {r["uri"]: r["status"] for t in decisions for r in t.select(["uri", "status"]).to_pylist()}
    kept_before: list[tuple[str, int]] = []
    candidates: list[Candidate] = []
    rows: list[dict[str, Any]] = []
    for table in analysis:
        for r in table.select(ANALYSIS_COLUMNS).to_pylist():
            status = decided.get(r["uri"])
            if status == "accepted":
                kept_before.append((r["key"], int(r["phash"], 16)))
            elif status is None and r["reason"] is not None:
                rows.append({"uri": r["uri"], "status": "rejected", "reason": r["reason"], "duplicate_of": None})
            elif status is None:
                pixels = int(r["width"]) * int(r["height"])
                score = r["person_score"] if r["person_score"] is not None else 0.0
                candidates.append(Candidate(r["uri"], r["key"], int(r["phash"], 16), pixels, score, r["blur"] or 0.0))
    for v in decide(candidates, kept_before, max_hamming, near):
        status = "accepted" if v.duplicate_of is None else "duplicate"
        rows.append({"uri": v.uri, "status": status, "reason": v.reason, "duplicate_of": v.duplicate_of})
    return rows


def coordinate(
    analysis: list[Any], decisions: list[Any], max_hamming: int, near: bool, pieces: int, slice_rows: int
) -> Iterator[pa.Table]:
    """The stages, submitted from a task of their own (run by decide_on_cluster): it owns every intermediate
    object, and Ray keeps a task's small results (under 100 KiB, the common case for a piece) in its owner's memory,
    so that memory is this task's on some worker, not the driver's. `analysis` / `decisions`: references to the
    state parts, in file order. Yields the decision rows in slices of `slice_rows`."""
    import ray

    tasks: dict[Callable[..., Any], Any] = {}

    def remote(fn: Callable[..., Any], returns: int) -> Callable[..., list[Any]]:
        """`fn` as a one-CPU task returning `returns` objects; the caller always gets a list of references."""
        if fn not in tasks:
            tasks[fn] = ray.remote(num_cpus=1)(fn)
        task = tasks[fn].options(num_returns=returns)
        return lambda *args: (lambda r: r if returns > 1 else [r])(task.remote(*args))

    analysis_pieces = [remote(split_analysis, pieces)(t, i, pieces) for i, t in enumerate(analysis)]
    decision_pieces = [remote(split_decisions, pieces)(t, i, pieces) for i, t in enumerate(decisions)]
    del analysis[:], decisions[:]
    joined = [
        remote(join, 1 + 2 * pieces)(
            pieces,
            max_hamming,
            near,
            len(analysis_pieces),
            *(p[j] for p in analysis_pieces),
            *(p[j] for p in decision_pieces),
        )
        for j in range(pieces)
    ]
    del analysis_pieces, decision_pieces
    rejected = [j[0] for j in joined]
    node_pieces = [j[1 : 1 + pieces] for j in joined]
    links = [remote(link, 1)(max_hamming, *(j[1 + pieces + b] for j in joined))[0] for b in range(pieces)]
    del joined
    labels = remote(components, pieces)(pieces, *links)
    del links
    labelled = [
        remote(label, 1 + pieces)(pieces, len(node_pieces), *(n[k] for n in node_pieces), labels[k])
        for k in range(pieces)
    ]
    del node_pieces, labels
    alone = [lab[0] for lab in labelled]
    verdicts = [
        remote(decide_components, 1)(max_hamming, near, *(lab[1 + c] for lab in labelled))[0] for c in range(pieces)
    ]
    del labelled
    for refs in (rejected, alone, verdicts):
        while refs:
            table = ray.get(refs.pop(0))
            for start in range(0, table.num_rows, slice_rows):
                yield _compact(table, np.arange(start, min(start + slice_rows, table.num_rows)))


def decide_on_cluster(
    analysis: Iterable[pa.Table],
    decisions: Iterable[pa.Table],
    max_hamming: int,
    near: bool,
    pieces: int,
    slice_rows: int = 10_000,
) -> Iterator[pa.Table]:
    """Decision rows (DECISION_SCHEMA) of every analysed row that `decisions` does not decide yet, a table at a
    time. `analysis` / `decisions`: the state parts in file order (ANALYSIS_COLUMNS; uri and status). Ray must be
    initialised. The driver only reads the parts (it holds the credentials of the output folder) into the object
    store, one at a time, and takes the decisions back a slice at a time."""
    import ray

    # ray.put stores in the shared object store whatever the size (unlike small task results), and a reference
    # inside a list reaches the task unresolved.
    analysis_refs = [ray.put(t) for t in analysis]
    if not analysis_refs:
        return
    decision_refs = [ray.put(t) for t in decisions]
    # num_cpus=0: it only waits on its stages, which need every CPU (a 1-CPU node would otherwise deadlock).
    task = ray.remote(num_cpus=0)(coordinate).options(num_returns="streaming")
    stream = task.remote(analysis_refs, decision_refs, max_hamming, near, pieces, slice_rows)
    del analysis_refs, decision_refs
    for ref in stream:
        yield ray.get(ref)
