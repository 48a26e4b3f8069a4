"""Benchmark of `hv curate`: the Ray Data DAG against the ideal of its own per-image functions.

    .venv/bin/python benchmarks/curate.py                 # 2000 images of 1024x768, detectors none and hog
    .venv/bin/python benchmarks/curate.py --n 300 --detectors none --repeats 1
    .venv/bin/python benchmarks/curate.py --images /tmp/bench-images   # generate once, reuse on later runs
    .venv/bin/python benchmarks/curate.py --inputs 2000 10000 --images /tmp/bench-small   # driver memory
    .venv/bin/python benchmarks/curate.py --inputs 1000000 --inputs-size 96 --set quality.min_short_side=96 \
        --images /tmp/bench-96   # 1M inputs: 10 min making the 96 px images, 33 curating (2 cores)

`--inputs N ...`: the driver's peak memory at N inputs (distinct JPEGs of `--inputs-size` pixels square, 256 by
default, one list file of N URIs), each N curated from scratch in a fresh process: its peak RSS (ru_maxrss) once
Ray has started and at the end, and the throughput. Growth with N is per-input state held by the driver.

Data: varied photo-like JPEGs (random crops of 16 real photos shipped with scikit-image and matplotlib, flipped,
colour-cast, overlaid with random shapes and sensor noise), plus `--dup-fraction` deliberate duplicates (byte
copies and resized re-encodes of earlier images), so the dedup and write phases see what users have: few
duplicates, and all of them planned. The benchmark prints planned vs found duplicates.

Two baselines, both the same per-image functions (analyse_uri, then build_members for the accepted) in a plain
loop over the same files, timed right before and right after every DAG run (the machine is shared: alternating
cancels the drift):
- ideal (the issue's definition): one loop in this process, times the number of CPUs;
- parallel: `--cpus` plain loops at once in worker processes at the niceness of Ray's workers. On a machine
  other jobs share, this is what `--cpus` busy processes really get, so DAG / parallel is the DAG's own
  overhead and ideal / parallel is what the sharing cost.
Ray is started before the clocks (as on a cluster) and each run curates into a fresh folder. Prints every run,
the median ratios, and where the DAG's time went (its phases).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
from PIL import Image

_PHOTOS = ["astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "hubble_deep_field"]
_PHOTOS += ["immunohistochemistry", "clock", "brick", "grass", "gravel", "retina", "cell"]


def _photos() -> list[np.ndarray]:
    """The real photos that ship inside scikit-image and matplotlib, as (H, W, 3) uint8."""
    import matplotlib.cbook as cbook
    from skimage import data

    out = []
    for name in _PHOTOS:
        a = np.asarray(getattr(data, name)())
        out.append(np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3])
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        out.append(np.asarray(Image.open(f).convert("RGB")))
    return out


def _crop(photo: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of `photo` at the aspect of width x height, resized to it, maybe flipped: (H, W, 3) uint8."""
    import cv2

    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.3, 0.9)
    ch, cw = int(min(ph, pw * height / width) * scale), int(min(pw, ph * width / height) * scale)
    y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    img = cv2.resize(photo[y : y + ch, x : x + cw], (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(img[:, ::-1]) if rng.random() < 0.5 else img


def _varied_image(photos: list[np.ndarray], width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A crop of one photo with an inset crop of another, colour-cast, with shapes and noise: (H, W, 3) uint8.

    Crops of one photo alone collide in the perceptual hash when they overlap much (1 pair in 100 images at 16
    photos); the inset and the shapes move the low frequencies, so unplanned duplicates stay rare.
    """
    import cv2

    img = _crop(photos[int(rng.integers(len(photos)))], width, height, rng)
    iw, ih = int(width * rng.uniform(0.3, 0.6)), int(height * rng.uniform(0.3, 0.6))
    ix, iy = int(rng.integers(0, width - iw + 1)), int(rng.integers(0, height - ih + 1))
    img[iy : iy + ih, ix : ix + iw] = _crop(photos[int(rng.integers(len(photos)))], iw, ih, rng)
    img = img.astype(np.float32) * rng.uniform(0.75, 1.25, 3).astype(np.float32)
    # Shapes move the low frequencies the perceptual hash sees, so crops of one photo stay distinct images.
    shapes = img.copy()
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(float(c) for c in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            axes = (int(rng.integers(30, width // 3)), int(rng.integers(30, height // 3)))
            cv2.ellipse(shapes, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            corner = (cx + int(rng.integers(40, width // 2)), cy + int(rng.integers(40, height // 2)))
            cv2.rectangle(shapes, (cx, cy), corner, colour, -1)
    alpha = rng.uniform(0.35, 0.7)
    # Sensor-like noise keeps upscaled small photos above the blur threshold, as real photos are.
    noise = 8 * rng.standard_normal((height, width, 1), dtype=np.float32)
    return np.clip(img * (1 - alpha) + shapes * alpha + noise, 0, 255).astype(np.uint8)


def make_images(folder: str, n: int, width: int, height: int, dup_fraction: float, seed: int = 0) -> int:
    """Write n JPEGs into `folder`; returns how many are deliberate duplicates of an earlier one."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    os.makedirs(folder, exist_ok=True)
    planned = 0
    for i in range(n):
        path = os.path.join(folder, f"{i:06d}.jpg")
        if i >= 10 and rng.random() < dup_fraction:
            earlier = os.path.join(folder, f"{int(rng.integers(0, i)):06d}.jpg")
            if rng.random() < 0.5:
                shutil.copyfile(earlier, path)  # exact duplicate
            else:
                with Image.open(earlier) as im:  # near duplicate: resized and re-encoded
                    im.resize((int(width * 0.9), int(height * 0.9))).save(path, quality=85)
            planned += 1
            continue
        image = _varied_image(photos, width, height, rng)
        Image.fromarray(image).save(path, quality=int(rng.integers(80, 95)))
    return planned


# ------------------------------------------------------------------------------------------------ baselines

_worker_state: dict = {}


def _plain_loop_init(cfg, niceness: int) -> None:
    """Pool worker start-up: the niceness Ray gives its workers, and the detector built once (as an actor would)."""
    os.nice(niceness)
    _worker_state["cfg"] = cfg
    _worker_state["detector"] = None
    if cfg.detector.name.value != "none":
        from data_engine.detect import build_detector

        _worker_state["detector"] = build_detector(cfg.detector)


def plain_loop(files: list[str], cfg=None, detector=None) -> float:
    """The per-image functions over `files` in a plain loop; returns seconds."""
    from data_engine.analysis import analyse_uri, apply_persons, build_members

    if cfg is None:  # in a pool worker
        cfg, detector = _worker_state["cfg"], _worker_state["detector"]
    start = time.perf_counter()
    for uri in files:
        row = analyse_uri(uri, cfg, keep_pixels=detector is not None)
        if detector is not None and row.get("pixels") is not None:
            rgb = np.frombuffer(row["pixels"], np.uint8).reshape(row["pixels_h"], row["pixels_w"], 3)
            scale = row["width"] / row["pixels_w"]
            apply_persons(row, [(*(v * scale for v in b[:4]), b[4]) for b in detector.detect([rgb])[0]], cfg)
        if row.get("reason") is None:
            build_members(row, cfg)
    return time.perf_counter() - start


class Baselines:
    """The single-process loop (here) and `cpus` loops at once (a pool of processes), on the same files."""

    def __init__(self, cfg, files: list[str], cpus: int) -> None:
        self.cfg, self.files, self.cpus = cfg, files, cpus
        self.detector = None
        if cfg.detector.name.value != "none":
            from data_engine.detect import build_detector

            self.detector = build_detector(cfg.detector)
        niceness = cfg.worker_niceness
        self.pool = ProcessPoolExecutor(cpus, get_context("spawn"), _plain_loop_init, (cfg, niceness))
        self.parallel()  # warm-up: imports and the detector in every worker

    def single(self) -> float:
        """Images/s of one plain loop in this process, times the number of CPUs (the issue's ideal)."""
        return len(self.files) / plain_loop(self.files, self.cfg, self.detector) * self.cpus

    def parallel(self) -> float:
        """Images/s of `cpus` plain loops running at once, each over all the files."""
        start = time.perf_counter()
        list(self.pool.map(plain_loop, [self.files] * self.cpus))
        return len(self.files) * self.cpus / (time.perf_counter() - start)

    def close(self) -> None:
        self.pool.shutdown()


# ------------------------------------------------------------------------------------------- driver memory


def _small_images(folder: str, size: int, indices: range) -> None:
    photos = None
    for i in indices:
        path = os.path.join(folder, f"{i:07d}.jpg")
        if not os.path.exists(path):
            photos = photos or _photos()
            image = _varied_image(photos, size, size, np.random.default_rng([7, i]))
            Image.fromarray(image).save(path, quality=85)


def make_small_images(folder: str, n: int, size: int = 256, procs: int = 1) -> None:
    """Distinct size x size JPEGs 0..n-1 in `folder` (each from its own seed: growing n keeps the earlier ones),
    made by `procs` processes."""
    if size < 96:
        raise SystemExit(f"--inputs-size {size}: at least 96 (the varied images' shapes need it)")
    os.makedirs(folder, exist_ok=True)
    first = os.path.join(folder, f"{0:07d}.jpg")
    if os.path.exists(first):  # existing images are reused: they must be of the size asked for
        with Image.open(first) as im:
            if im.size != (size, size):
                raise SystemExit(f"--images {folder}: holds {im.size[0]}x{im.size[1]} JPEGs, not {size}x{size}")
    if procs <= 1:
        _small_images(folder, size, range(n))
        return
    step = -(-n // (procs * 16))
    with ProcessPoolExecutor(procs, mp_context=get_context("spawn")) as pool:
        for done in [pool.submit(_small_images, folder, size, range(a, min(n, a + step))) for a in range(0, n, step)]:
            done.result()


def _private_mb() -> float:
    """This process's private (anonymous) resident memory: unlike RSS, not the pages of Ray's shared object store
    that the driver maps while it reads results."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def _driver_run(list_file: str, out: str, cpus: int, overrides: list[str], results) -> None:
    """In a fresh process: curate the list from scratch and report this process's (the driver's) memory."""
    import resource
    import threading

    import psutil

    from data_engine.curate import run_curate
    from data_engine.curate_config import load_config
    from data_engine.curate_ray import ray_session

    settings = ["progress=false", f"num_cpus={cpus}", *overrides]
    cfg = load_config(None, settings, inputs=[list_file], out=out, detector={"name": "none"})
    with ray_session(cfg):
        at_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        private = {"start": _private_mb(), "peak": _private_mb()}
        done = threading.Event()

        def sample() -> None:  # every 50 ms: private memory has no kernel-kept peak
            while not done.wait(0.05):
                private["peak"] = max(private["peak"], _private_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stats = run_curate(cfg, log=lambda s: None)
        finally:
            done.set()
            sampler.join()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        now = psutil.Process().memory_info().rss // 1024
    results.put(
        {
            "start_mb": at_start / 1024,
            "peak_mb": peak / 1024,
            "end_mb": now / 1024,
            "private_start_mb": private["start"],
            "private_peak_mb": private["peak"],
            "stats": stats,
        }
    )


def driver_memory(sizes: list[int], images: str, size: int, cpus: int, overrides: list[str], work: str) -> None:
    for n in sizes:
        t = time.perf_counter()
        make_small_images(images, n, size, cpus)
        print(f"{n} images ready in {time.perf_counter() - t:.1f} s", flush=True)
        list_file = os.path.join(work, f"inputs-{n}.txt")
        with open(list_file, "w") as f:
            f.writelines(os.path.join(images, f"{i:07d}.jpg") + "\n" for i in range(n))
        ctx = get_context("spawn")
        results = ctx.Queue()
        out = os.path.join(work, f"out-{n}")
        child = ctx.Process(target=_driver_run, args=(list_file, out, cpus, overrides, results))
        child.start()
        r = results.get()
        child.join()
        shutil.rmtree(out, ignore_errors=True)
        run = r["stats"]["this_run"]
        print(
            f"inputs {n}: driver peak RSS {r['peak_mb']:.0f} MB (after Ray start {r['start_mb']:.0f} MB, "
            f"+{r['peak_mb'] - r['start_mb']:.0f} MB during the job, {r['end_mb']:.0f} MB at the end); private "
            f"memory peak {r['private_peak_mb']:.0f} MB (+{r['private_peak_mb'] - r['private_start_mb']:.0f} MB); "
            f"{run['images_per_s']:.1f} img/s; {r['stats']['status']}; phases {run['phase_seconds']}",
            flush=True,
        )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--dup-fraction", type=float, default=0.03, help="deliberate duplicates among the images")
    parser.add_argument("--images", default="", help="image folder to reuse (generated there when missing)")
    parser.add_argument("--detectors", nargs="+", default=["none", "hog"])
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3, help="DAG runs per detector, each between baselines")
    parser.add_argument("--ideal-sample", type=int, default=150, help="images timed in each plain loop")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="curate config overrides")
    parser.add_argument("--inputs", nargs="*", type=int, default=[], metavar="N", help="driver memory at N inputs")
    parser.add_argument(
        "--inputs-size",
        type=int,
        default=256,
        metavar="PX",
        help="side of the --inputs JPEGs (>= 96; below 256 set quality.min_short_side to at most it)",
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from data_engine.curate import run_curate
    from data_engine.curate_config import load_config
    from data_engine.curate_ray import ray_session

    work = tempfile.mkdtemp(prefix="hv-bench-curate-")
    if args.inputs:
        try:
            images = args.images or os.path.join(work, "small")
            driver_memory(args.inputs, images, args.inputs_size, args.cpus, args.set, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    try:
        images = args.images or os.path.join(work, "images")
        marker = os.path.join(images, ".planned-duplicates")
        if not os.path.exists(marker):
            t = time.perf_counter()
            planned = make_images(images, args.n, args.width, args.height, args.dup_fraction)
            with open(marker, "w") as f:
                f.write(str(planned))
            print(f"generated {args.n} JPEGs of {args.width}x{args.height} in {time.perf_counter() - t:.1f} s")
        with open(marker) as f:
            planned = int(f.read())
        files = sorted(os.path.join(images, f) for f in os.listdir(images) if f.endswith(".jpg"))
        print(f"{len(files)} images, {planned} planned duplicates")
        for name in args.detectors:
            overrides = ["progress=false", f"num_cpus={args.cpus}", "detector.min_height=100", *args.set]
            cfg = load_config(None, overrides, inputs=[images], out=os.path.join(work, "out"), detector={"name": name})
            baselines = Baselines(cfg, files[: args.ideal_sample], args.cpus)
            ratios_ideal, ratios_parallel, rates = [], [], []
            try:
                with ray_session(cfg):
                    for r in range(args.repeats):
                        shutil.rmtree(cfg.out, ignore_errors=True)
                        before = (baselines.single(), baselines.parallel())
                        stats = run_curate(cfg, log=lambda s: None)
                        after = (baselines.parallel(), baselines.single())
                        ideal, parallel = (before[0] + after[1]) / 2, (before[1] + after[0]) / 2
                        run = stats["this_run"]
                        rate = run["images_per_s"]
                        rates.append(rate)
                        ratios_ideal.append(rate / ideal)
                        ratios_parallel.append(rate / parallel)
                        phases = ", ".join(f"{k} {v:.1f} s" for k, v in run["phase_seconds"].items())
                        print(
                            f"detector {name} run {r + 1}: DAG {rate:.1f} img/s; ideal {ideal:.1f} "
                            f"({args.cpus} x one loop), parallel {parallel:.1f} ({args.cpus} loops at once); "
                            f"DAG/ideal {rate / ideal:.2f}, DAG/parallel {rate / parallel:.2f}; "
                            f"{stats['status']}; phases: {phases}",
                            flush=True,
                        )
            finally:
                baselines.close()
            print(
                f"detector {name}: median of {args.repeats}: DAG {_median(rates):.1f} img/s, "
                f"DAG/ideal {_median(ratios_ideal):.2f}, DAG/parallel {_median(ratios_parallel):.2f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
