"""The cluster dedup (data_engine/dedup_ray.py) against the in-driver greedy it replaced (`decide_in_driver`: the
decide phase of `hv curate` before, verbatim): identical decision rows (status, reason with its distance,
duplicate_of) on random hash sets full of chains A~B~C, ties and byte-identical copies, with and without earlier
runs' decisions, for any number of pieces."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest

from data_engine.analysis import ANALYSIS_SCHEMA
from data_engine.curate_state import DECISION_SCHEMA
from data_engine.dedup_ray import decide_in_driver as reference
from data_engine.dedup_ray import decide_on_cluster


def _flip(value: int, bits: list[int]) -> int:
    for b in bits:
        value ^= 1 << b
    return value


def random_inputs(rng: random.Random, n: int, max_hamming: int, start: int = 0) -> list[dict[str, Any]]:
    """Analysis rows: families of hashes around a few seeds, each new one a step of 0..max_hamming+2 bits from a
    random earlier one (chains: A~B and B~C with A and C apart), byte-identical copies, ties, rejections."""
    seeds = [rng.getrandbits(64) for _ in range(max(1, n // 12))]
    rows: list[dict[str, Any]] = []
    for i in range(start, start + n):
        uri = f"img/{i:05d}.jpg"
        pick = rng.random()
        if rows and pick < 0.12:  # a copy of an earlier file: same key and hash, maybe another size on record
            row = dict(rng.choice(rows), uri=uri)
        else:
            base = rng.choice([r for r in rows if r["reason"] is None] or [{"phash": f"{rng.choice(seeds):016x}"}])
            step = rng.randint(0, max_hamming + 2)
            value = _flip(int(base["phash"], 16), rng.sample(range(64), step))
            row = {
                "uri": uri,
                "key": f"{rng.getrandbits(64):016x}",
                "phash": f"{value:016x}",
                "width": rng.choice([64, 128]),  # few sizes, scores and blurs: many ties in rank
                "height": rng.choice([64, 96]),
                "person_score": rng.choice([None, 0.5, 0.75]),
                "blur": rng.choice([None, 10.0, 20.0]),
                "reason": "blurry: 3.1" if rng.random() < 0.1 else None,
            }
        rows.append(row)
    return rows


def _parts(rows: list[dict[str, Any]], size: int, schema: pa.Schema) -> list[pa.Table]:
    return [pa.Table.from_pylist(rows[i : i + size], schema=schema) for i in range(0, len(rows), size)]


def _on_cluster(analysis, decisions, max_hamming, near, pieces) -> list[dict]:
    return [r for t in decide_on_cluster(analysis, decisions, max_hamming, near, pieces) for r in t.to_pylist()]


def _same(got: list[dict], want: list[dict]) -> None:
    key = lambda r: r["uri"]  # noqa: E731
    assert len({r["uri"] for r in want}) == len(want)
    assert sorted(got, key=key) == sorted(want, key=key)


@pytest.mark.parametrize(("seed", "max_hamming", "pieces"), [(0, 4, 1), (1, 8, 3), (2, 2, 2), (3, 8, 2), (4, 0, 3)])
def test_cluster_dedup_equals_the_driver_greedy(ray_local, seed, max_hamming, pieces):
    rng = random.Random(seed)
    rows = random_inputs(rng, 240, max_hamming)
    analysis = _parts(rows, 37, ANALYSIS_SCHEMA)
    want = reference(analysis, [], max_hamming, near=True)
    statuses = {r["status"] for r in want}
    assert statuses == {"accepted", "duplicate", "rejected"}  # the data exercises every outcome
    reasons = {r["reason"].split(":")[0] for r in want if r["status"] == "duplicate"}
    assert reasons == {"exact_duplicate", "near_duplicate"}  # max_hamming 0: equal hashes of different bytes
    _same(_on_cluster(analysis, [], max_hamming, True, pieces), want)
    # near dedup off: only byte-identical files group
    _same(_on_cluster(analysis, [], max_hamming, False, pieces), reference(analysis, [], max_hamming, near=False))


def test_chains_and_ties_resolve_as_the_greedy_does(ray_local):
    """A~B~C with A and C apart: A kept, B its duplicate, C kept (no merging through B); D is 2 from two kept images
    (A, then E): the earlier kept wins the tie; F is a copy of C's bytes."""
    a = 0
    b = _flip(a, [0, 1])
    c = _flip(b, [2, 3])
    e = _flip(a, [10, 11, 12, 13])
    d = _flip(a, [10, 11])

    def row(uri: str, value: int, width: int, key: str | None = None) -> dict[str, Any]:
        return {"uri": uri, "key": key or uri, "phash": f"{value:016x}", "width": width, "height": 10, "reason": None}

    rows = [row("c", c, 50), row("b", b, 80), row("a", a, 90), row("e", e, 70), row("d", d, 60), row("f", c, 10, "c")]
    analysis = _parts(rows, 2, ANALYSIS_SCHEMA)
    want = reference(analysis, [], 2, near=True)
    verdicts = {r["uri"]: (r["status"], r["duplicate_of"]) for r in want}
    assert verdicts == {
        "a": ("accepted", None),
        "b": ("duplicate", "a"),
        "e": ("accepted", None),
        "d": ("duplicate", "a"),
        "c": ("accepted", None),
        "f": ("duplicate", "c"),
    }
    for pieces in (1, 2, 4):
        _same(_on_cluster(analysis, [], 2, True, pieces), want)


@pytest.mark.parametrize(("seed", "pieces"), [(10, 2), (11, 3)])
def test_resume_earlier_keeps_still_win(ray_local, seed, pieces):
    """A second run over more inputs: earlier keeps stay kept against better new copies, decided URIs are not
    decided again; the cluster and the driver agree, also with arbitrary earlier statuses."""
    rng = random.Random(seed)
    max_hamming = 6
    first = random_inputs(rng, 150, max_hamming)
    analysis = _parts(first, 40, ANALYSIS_SCHEMA)
    decisions = _parts(reference(analysis, [], max_hamming, near=True), 64, DECISION_SCHEMA)
    # New inputs, bigger than anything before: without the earlier-keeps rule many would win their group.
    second = [dict(r, width=r["width"] * 4) for r in random_inputs(rng, 150, max_hamming, start=150)]
    for r in second[:20]:  # near copies of earlier keeps
        r["phash"] = f"{_flip(int(rng.choice(first)['phash'], 16), [rng.randrange(64)]):016x}"
    analysis += _parts(second, 33, ANALYSIS_SCHEMA)
    want = reference(analysis, decisions, max_hamming, near=True)
    assert len(want) == len(second)
    kept_before = {r["uri"] for t in decisions for r in t.to_pylist() if r["status"] == "accepted"}
    first_keys = {r["key"] for r in first if r["uri"] in kept_before}
    assert any(r["duplicate_of"] in first_keys for r in want)  # new images lost to earlier keeps
    _same(_on_cluster(analysis, decisions, max_hamming, True, pieces), want)
    # Earlier statuses in any mix (a URI decided twice: the later part wins), still the same answer.
    odd = [{"uri": r["uri"], "status": rng.choice(["accepted", "duplicate", "rejected"])} for r in first + second[:30]]
    odd_parts = _parts([dict(o, reason=None, duplicate_of=None) for o in odd], 25, DECISION_SCHEMA)
    _same(
        _on_cluster(analysis, decisions + odd_parts, max_hamming, True, pieces),
        reference(analysis, decisions + odd_parts, max_hamming, near=True),
    )


def test_nothing_to_decide(ray_local):
    assert _on_cluster([], [], 8, True, 2) == []
    rows = random_inputs(random.Random(5), 20, 8)
    analysis = _parts(rows, 7, ANALYSIS_SCHEMA)
    done = _parts(reference(analysis, [], 8, near=True), 9, DECISION_SCHEMA)
    assert _on_cluster(analysis, done, 8, True, 2) == []
