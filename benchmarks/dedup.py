"""Benchmark of the global dedup phase alone: the in-driver greedy `hv curate` used before
(data_engine.dedup_ray.decide_in_driver) against the cluster path (decide_on_cluster), on synthetic analysis
state (no images, so large N is cheap to set up).

    .venv/bin/python benchmarks/dedup.py --rows 20000 50000
    .venv/bin/python benchmarks/dedup.py --rows 100000 --paths cluster --cpus 8

Each (N, path) runs in a fresh spawned driver process that starts a local Ray first, then decides N analysed
rows read from Parquet parts of `--part-rows` (as state/analysis holds them). Prints the driver's peak RSS growth
during the phase (ru_maxrss after minus before; Ray's own processes are not counted) and its peak private
(anonymous) memory growth, which leaves out the object store's shared pages, the seconds, and whether
the two paths gave identical rows (when both ran). Data: random 64-bit hashes, `--near` of them a few bits from
an earlier one and `--exact` byte copies, so the buckets and components look like real inputs with few
duplicates.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import tempfile
import time
from collections.abc import Iterable
from multiprocessing import get_context

import pyarrow as pa
import pyarrow.parquet as pq


def make_parts(folder: str, n: int, part_rows: int, near: float, exact: float, seed: int = 0) -> list[str]:
    from data_engine.analysis import ANALYSIS_SCHEMA

    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(n):
        pick = rng.random()
        if rows and pick < exact:
            row = dict(rng.choice(rows), uri=f"img/{i:08d}.jpg")
        else:
            value = rng.getrandbits(64)
            if rows and pick < exact + near:
                value = int(rng.choice(rows)["phash"], 16)
                for b in rng.sample(range(64), rng.randint(1, 6)):
                    value ^= 1 << b
            key = hashlib.sha256(str(i).encode()).hexdigest()[:16]
            row = {"uri": f"img/{i:08d}.jpg", "key": key, "phash": f"{value:016x}", "reason": None}
            row.update(width=rng.choice([640, 1024]), height=480, person_score=None, blur=rng.random() * 100)
        rows.append(row)
    paths = []
    for start in range(0, n, part_rows):
        path = os.path.join(folder, f"part-{start // part_rows:06d}.parquet")
        pq.write_table(pa.Table.from_pylist(rows[start : start + part_rows], schema=ANALYSIS_SCHEMA), path)
        paths.append(path)
    return paths


def _run(paths: list[str], path_kind: str, cpus: int, max_hamming: int, results) -> None:
    """In a fresh process: Ray up, then one dedup phase; report this process's memory growth and time."""
    import resource

    import ray

    from data_engine.dedup_ray import ANALYSIS_COLUMNS, decide_in_driver, decide_on_cluster
    from data_engine.ray_runtime import init_ray

    init_ray(num_cpus=cpus, object_store_memory=512 * 1024 * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    anon = _AnonPeak()
    t = time.perf_counter()
    analysis = (pq.read_table(p, columns=ANALYSIS_COLUMNS) for p in paths)
    if path_kind == "driver":
        counts, digest = _digest(decide_in_driver(analysis, [], max_hamming, near=True))
    else:  # streamed, as decide_phase writes them: the driver never holds the rows
        tables = decide_on_cluster(analysis, [], max_hamming, near=True, pieces=cpus)
        counts, digest = _digest(r for table in tables for r in table.to_pylist())
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    anon_mb = anon.stop()
    ray.shutdown()
    results.put(
        {"growth_mb": (after - before) / 1024, "anon_mb": anon_mb, "seconds": seconds, "rows": counts, "digest": digest}
    )


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


class _AnonPeak:
    """Peak growth of this process's private (anonymous) memory, sampled every 10 ms. RSS alone also counts the
    pages of Ray's shared-memory object store that the driver touched (its puts and gets)."""

    def __init__(self) -> None:
        import threading

        self.start, self.peak = _rss_anon_kib(), 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, _rss_anon_kib() - self.start)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak / 1024


def _digest(rows: Iterable[dict]) -> tuple[int, str]:
    """(count, an order-free digest): XOR of each row's hash, so streamed rows need not be sorted or kept."""
    count, acc = 0, 0
    for r in rows:
        count += 1
        acc ^= int.from_bytes(hashlib.blake2b(repr(sorted(r.items())).encode(), digest_size=8).digest(), "big")
    return count, f"{acc:016x}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=int, default=[20_000])
    parser.add_argument("--paths", nargs="+", choices=["driver", "cluster"], default=["driver", "cluster"])
    parser.add_argument("--part-rows", type=int, default=1_000, help="rows per analysis part (checkpoint_rows)")
    parser.add_argument("--near", type=float, default=0.03, help="fraction of near copies")
    parser.add_argument("--exact", type=float, default=0.02, help="fraction of byte copies")
    parser.add_argument("--max-hamming", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="hv-bench-dedup-") as folder:
            paths = make_parts(folder, n, args.part_rows, args.near, args.exact)
            digests = set()
            for kind in args.paths:
                ctx = get_context("spawn")
                results = ctx.Queue()
                child = ctx.Process(target=_run, args=(paths, kind, args.cpus, args.max_hamming, results))
                child.start()
                r = results.get()
                child.join()
                digests.add(r["digest"])
                print(
                    f"rows {n} {kind:>7}: driver RSS growth {r['growth_mb']:.0f} MB (private {r['anon_mb']:.0f} MB), "
                    f"{r['seconds']:.2f} s, "
                    f"{r['rows']} decisions (digest {r['digest']})",
                    flush=True,
                )
            if len(args.paths) > 1:
                print(f"rows {n}: identical decisions: {len(digests) == 1}", flush=True)


if __name__ == "__main__":
    main()
