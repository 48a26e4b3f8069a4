"""Relative depth: align each prediction to its ground truth by least-squares scale and shift, then score.

    hv eval depth --gt gt_depth/ --pred pred_depth/

Maps are 16-bit PNGs in millimetres (the sample contract's `depth.png`), matched by file name; valid
pixels are GT > 0. Per image, s and t minimise sum over valid pixels of (s * pred + t - gt)^2, then with
a = s * pred + t:

    rmse   = sqrt(mean((a - gt)^2))                 (metres)
    absrel = mean(|a - gt| / gt)
    delta_k = mean(max(a / gt, gt / a) < 1.25^k)     (a <= 0 counts as a miss), k = 1, 2, 3

each averaged over the images. An image without a valid pixel is listed under `skipped`, not scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_engine.sample import decode_depth
from eval.metrics import MetricInputError
from eval.metrics.files import iter_pairs

DEPTH_KEYS: tuple[str, ...] = ("rmse", "absrel", "delta1", "delta2", "delta3")


def align_scale_shift(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(s, t) minimising ||s * pred + t - gt||^2 over 1-D arrays of valid pixels.

    A constant prediction carries no relative information: s = 0, t = mean(gt) (the least-squares
    solution of smallest norm along the scale direction).
    """
    p = pred.astype(np.float64)
    g = gt.astype(np.float64)
    p_mean, g_mean = p.mean(), g.mean()
    p_var = np.mean((p - p_mean) ** 2)
    if p_var <= 1e-18 * max(1.0, p_mean**2):
        return 0.0, float(g_mean)
    s = np.mean((p - p_mean) * (g - g_mean)) / p_var
    return float(s), float(g_mean - s * p_mean)


def depth_image_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float] | None:
    """Metrics of one (H, W) image in metres; None when the ground truth has no valid pixel."""
    if pred.shape != gt.shape:
        raise MetricInputError(f"prediction has shape {pred.shape}, ground truth {gt.shape}")
    valid = gt > 0
    if not valid.any():
        return None
    g = gt[valid].astype(np.float64)
    p = pred[valid].astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise MetricInputError("prediction has non-finite values at valid pixels")
    s, t = align_scale_shift(p, g)
    a = s * p + t
    positive = a > 0
    ratio = np.full_like(g, np.inf)  # a non-positive aligned depth is never within any threshold
    ratio[positive] = np.maximum(a[positive] / g[positive], g[positive] / a[positive])
    return {
        "rmse": float(np.sqrt(np.mean((a - g) ** 2))),
        "absrel": float(np.mean(np.abs(a - g) / g)),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


def depth_metrics(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Mean over images of the per-image metrics for (name, gt, pred) maps in metres."""
    per_image: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    for name, gt, pred in pairs:
        try:
            scores = depth_image_metrics(pred, gt)
        except MetricInputError as e:
            raise MetricInputError(f"{name}: {e}") from None
        if scores is None:
            skipped.append(name)
        else:
            per_image[name] = scores
    if not per_image:
        what = f"all {len(skipped)} images" if skipped else "the set"
        raise MetricInputError(f"no valid ground-truth depth pixel (GT > 0) in {what}")
    result: dict[str, Any] = {k: float(np.mean([s[k] for s in per_image.values()])) for k in DEPTH_KEYS}
    result.update(images=len(per_image), skipped=skipped, per_image=per_image)
    return result


def depth_metrics_from_files(gt_dir: str, pred_dir: str) -> dict[str, Any]:
    pairs = list(iter_pairs(gt_dir, pred_dir, decode_depth, npy_channels=None))
    return depth_metrics(pairs)
