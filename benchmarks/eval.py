"""Eval benchmarks: each line is our implementation against a baseline, same process, same data.

    .venv/bin/python benchmarks/eval.py [--repeat 3]

- seg: one `np.bincount` confusion matrix vs the textbook per-class boolean masks (28 classes);
- depth: closed-form least-squares scale/shift vs `np.linalg.lstsq` on the [pred, 1] design matrix;
- pose: the full per-group evaluation (6 pycocotools runs) vs one pycocotools run on all 308 points,
  i.e. what the per-group table costs on top of the headline AP.
Ratios > 1 mean ours is faster (for pose: how many times the headline AP the full table costs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks.timing import best_of
from data_engine import schema
from eval.metrics.depth import align_scale_shift
from eval.metrics.pose import coco_keypoint_stats, pose_metrics
from eval.metrics.seg import confusion_matrix


def seg_masks_baseline(pairs, classes: int) -> np.ndarray:
    cm = np.zeros((classes, classes), np.int64)
    for gt, pred in pairs:
        labelled = gt != 255
        for g in range(classes):
            gmask = (gt == g) & labelled
            for p in range(classes):
                cm[g, p] += np.count_nonzero(gmask & (pred == p))
    return cm


def bench_seg(rng, repeat: int) -> None:
    pairs = []
    for _ in range(8):
        gt = rng.integers(0, 28, (512, 384)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.1] = 255
        pairs.append(
            (gt, np.where(rng.random(gt.shape) < 0.7, gt % 28, rng.integers(0, 28, gt.shape)).astype(np.uint8))
        )
    ours = sum(confusion_matrix(g, p, 28) for g, p in pairs)
    assert np.array_equal(ours, seg_masks_baseline(pairs, 28))
    t_ours = best_of(lambda: sum(confusion_matrix(g, p, 28) for g, p in pairs), repeat)
    t_base = best_of(lambda: seg_masks_baseline(pairs, 28), repeat)
    print(
        f"seg confusion 8 x 512x384, 28 classes: ours {t_ours * 1e3:.1f} ms, per-class masks {t_base * 1e3:.1f} ms, "
        f"speed-up x{t_base / t_ours:.1f}"
    )


def bench_depth(rng, repeat: int) -> None:
    images = [(rng.uniform(0, 1, 200_000), rng.uniform(1, 4, 200_000)) for _ in range(8)]

    def lstsq():
        for p, g in images:
            np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), g, rcond=None)

    def ours():
        for p, g in images:
            align_scale_shift(p, g)

    t_ours, t_base = best_of(ours, repeat), best_of(lstsq, repeat)
    print(
        f"depth alignment 8 x 200k px: ours {t_ours * 1e3:.1f} ms, lstsq {t_base * 1e3:.1f} ms, "
        f"speed-up x{t_base / t_ours:.1f}"
    )


def bench_pose(rng, repeat: int) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "eval"))
    from eval_testdata import coco_pose_set

    gt, preds = coco_pose_set(rng, "all", images=50, persons=2)
    sigmas = schema.subset_sigmas("all")
    with contextlib.redirect_stdout(io.StringIO()):
        t_full = best_of(lambda: pose_metrics(gt, preds, "all"), repeat)
        t_one = best_of(lambda: coco_keypoint_stats(gt, preds, sigmas), repeat)
    print(
        f"pose 100 persons x 308 kpts: per-group table {t_full * 1e3:.0f} ms, headline AP only {t_one * 1e3:.0f} ms, "
        f"cost ratio x{t_full / t_one:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    bench_seg(rng, args.repeat)
    bench_depth(rng, args.repeat)
    bench_pose(rng, args.repeat)


if __name__ == "__main__":
    main()
