"""Global deduplication: exact (same SHA-256, so same key) and near (64-bit perceptual hash within a Hamming
distance), across the whole input set and against everything earlier runs on the same DIR accepted.

Near-duplicate search never compares all pairs. The 64 bits are cut into `max_hamming + 1` bands; two hashes
within distance t differ in at most t bits, so by the pigeonhole principle at least one of the t + 1 bands is
identical. Each kept hash is filed under its value of every band; a query reads only the t + 1 buckets its own
bands name and measures the full distance to those hashes (vectorised popcount). With bands of b bits a
bucket holds about kept / 2^b hashes, so the work per image is (t + 1) * kept / 2^b, not kept.

Decision rule (greedy, best first): candidates (images that passed every filter) are sorted best first (most
pixels, then best person score, then sharpest, then URI for a stable order). Each one is a duplicate of the
closest already-kept image within the threshold, else it is kept. Images kept by earlier runs are already in
shards and stay kept, whatever their rank. Greedy best-first (rather than connected components) keeps a chain
A~B~C from merging two different photos A and C through a middle one.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from data_engine.decode import Reason

_HASH_SIZE = 8  # 8 x 8 low-frequency DCT coefficients -> 64 bits
_DCT_SIZE = 32


def phash(grey_image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a grey image (the pHash scheme: 32x32, DCT, 8x8 low band vs its median)."""
    import cv2

    small = cv2.resize(grey_image, (_DCT_SIZE, _DCT_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:_HASH_SIZE, :_HASH_SIZE]
    bits = (low > np.median(low)).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def phash_hex(value: int) -> str:
    return f"{value:016x}"


def bands(max_hamming: int) -> list[tuple[int, int]]:
    """(shift, mask) of each of the `max_hamming + 1` pigeonhole bands of a 64-bit hash."""
    edges = np.linspace(0, 64, max_hamming + 2).round().astype(int)
    return [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in itertools.pairwise(edges)]


class NearDuplicateIndex:
    """Hashes filed by band (pigeonhole), queried for the closest one within `max_hamming`."""

    def __init__(self, max_hamming: int) -> None:
        self.max_hamming = max_hamming
        self._bands = bands(max_hamming)
        # Per band: band value -> (hashes as uint64, item ids). array('Q') appends in O(1) and numpy reads it
        # without a copy.
        self._buckets: list[dict[int, tuple[array.array, array.array]]] = [{} for _ in self._bands]

    def add(self, value: int, item: int) -> None:
        for (shift, mask), buckets in zip(self._bands, self._buckets, strict=True):
            hashes, items = buckets.setdefault((value >> shift) & mask, (array.array("Q"), array.array("q")))
            hashes.append(value)
            items.append(item)

    def query(self, value: int) -> tuple[int, int] | None:
        """(item, distance) of the closest filed hash within max_hamming (lowest item on ties), or None."""
        best: tuple[int, int] | None = None
        query = np.uint64(value)
        for (shift, mask), buckets in zip(self._bands, self._buckets, strict=True):
            bucket = buckets.get((value >> shift) & mask)
            if bucket is None:
                continue
            hashes = np.frombuffer(bucket[0], dtype=np.uint64)
            distances = np.bitwise_count(hashes ^ query)
            i = int(np.argmin(distances))
            d = int(distances[i])
            if d > self.max_hamming:
                continue
            item = int(np.frombuffer(bucket[1], dtype=np.int64)[distances == d].min())
            if best is None or (d, item) < (best[1], best[0]):
                best = (item, d)
        return best


@dataclass
class Candidate:
    """An image that passed decoding, quality and detection: it is either kept or a duplicate."""

    uri: str
    key: str
    phash: int
    pixels: int
    person_score: float
    blur: float

    def rank(self) -> tuple:
        return (-self.pixels, -self.person_score, -self.blur, self.uri)


@dataclass
class Verdict:
    uri: str
    duplicate_of: str | None  # None: kept
    reason: str | None


def decide(
    candidates: Iterable[Candidate], kept_before: Iterable[tuple[str, int]], max_hamming: int, near: bool = True
) -> list[Verdict]:
    """Keep or mark each candidate (rule in the module docstring). `kept_before`: (key, phash) already in shards."""
    exact: dict[str, str] = {}
    index = NearDuplicateIndex(max_hamming)
    kept_keys: list[str] = []

    def keep(key: str, value: int) -> None:
        exact[key] = key
        index.add(value, len(kept_keys))
        kept_keys.append(key)

    for key, value in kept_before:
        if key not in exact:
            keep(key, value)
    verdicts = []
    for c in sorted(candidates, key=Candidate.rank):
        if c.key in exact:
            verdicts.append(Verdict(c.uri, exact[c.key], f"{Reason.exact_duplicate.value}: same bytes as {c.key}"))
            continue
        match = index.query(c.phash) if near else None
        if match is not None:
            item, distance = match
            other = kept_keys[item]
            verdicts.append(Verdict(c.uri, other, f"{Reason.near_duplicate.value}: Hamming {distance} to {other}"))
            continue
        keep(c.key, c.phash)
        verdicts.append(Verdict(c.uri, None, None))
    return verdicts
