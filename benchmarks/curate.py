"""Benchmark of `hv curate`: the Ray Data DAG against the ideal of its own per-image functions.

    .venv/bin/python benchmarks/curate.py                 # 2000 images of 1024x768, detectors none and hog
    .venv/bin/python benchmarks/curate.py --n 300 --detectors none

Ideal = the same per-image functions (analyse_uri, then build_members for the accepted) in a plain
single-process loop, times the number of CPUs Ray gets. Both run in this process on the same files; Ray is
started before the DAG's clock starts (as on a cluster), and each detector curates into a fresh folder.
Prints images/s and the ratio DAG / ideal, and where the DAG's time went (its phases).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image


def make_images(folder: str, n: int, width: int, height: int) -> None:
    """n distinct JPEGs: a textured photo-like base, shifted and tinted per image so no two are duplicates."""
    from skimage import data

    base = np.asarray(Image.fromarray(data.astronaut()).resize((width * 2, height * 2)))
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        y, x = rng.integers(0, height), rng.integers(0, width)
        crop = base[y : y + height, x : x + width].astype(np.int16)
        crop = np.roll(crop, shift=(i * 37) % height, axis=0) + rng.integers(-20, 20, 3)
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def ideal_rate(files: list[str], cfg) -> float:
    """Images/s of the per-image functions in one process, with the detector when one is configured."""
    from data_engine.analysis import analyse_uri, apply_persons, build_members

    detector = None
    if cfg.detector.name.value != "none":
        from data_engine.detect import build_detector

        detector = build_detector(cfg.detector)
    start = time.perf_counter()
    for uri in files:
        row = analyse_uri(uri, cfg, keep_pixels=detector is not None)
        if detector is not None and row.get("pixels") is not None:
            rgb = np.frombuffer(row["pixels"], np.uint8).reshape(row["pixels_h"], row["pixels_w"], 3)
            scale = row["width"] / row["pixels_w"]
            apply_persons(row, [(*(v * scale for v in b[:4]), b[4]) for b in detector.detect([rgb])[0]], cfg)
        if row.get("reason") is None:
            build_members(row, cfg)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--detectors", nargs="+", default=["none", "hog"])
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--ideal-sample", type=int, default=300, help="images timed in the plain loop")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from data_engine.curate import ray_session, run_curate
    from data_engine.curate_config import load_config

    work = tempfile.mkdtemp(prefix="hv-bench-curate-")
    try:
        images = os.path.join(work, "images")
        t = time.perf_counter()
        make_images(images, args.n, args.width, args.height)
        print(f"generated {args.n} JPEGs of {args.width}x{args.height} in {time.perf_counter() - t:.1f} s")
        files = sorted(os.path.join(images, f) for f in os.listdir(images))
        for name in args.detectors:
            overrides = ["progress=false", f"num_cpus={args.cpus}", "detector.min_height=100"]
            cfg = load_config(
                None, overrides, inputs=[images], out=os.path.join(work, f"out-{name}"), detector={"name": name}
            )
            sample = files[: args.ideal_sample]
            ideal = ideal_rate(sample, cfg) * args.cpus
            with ray_session(cfg):
                stats = run_curate(cfg, log=lambda s: None)
            run = stats["this_run"]
            rate = run["images_per_s"]
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in run["phase_seconds"].items())
            print(
                f"detector {name}: DAG {rate:.1f} img/s; ideal {ideal:.1f} img/s ({args.cpus} CPUs x plain loop); "
                f"ratio {rate / ideal:.2f}; {stats['status']}; phases: {phases}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
