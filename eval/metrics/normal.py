"""Surface normals: angular error in degrees, pooled over every valid pixel of the set.

    hv eval normal --gt gt_normal/ --pred pred_normal/

Maps are 16-bit RGB PNGs (the sample contract's `normal.png`), matched by file name; valid pixels are
those where the ground truth is not (0, 0, 0). error = degrees(arccos(clip(n_gt . n_pred / |n_pred|, -1, 1))).
A prediction of (0, 0, 0) at a valid pixel has no direction and counts as 180 degrees (a full miss).
Keys: mean, median, within_11_25, within_22_5, within_30 (fractions of pixels under the threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_engine.sample import decode_normal
from eval.metrics import MetricInputError
from eval.metrics.files import iter_pairs

THRESHOLDS_DEG: dict[str, float] = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}


def angular_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(M,) float64 degrees at the valid pixels of (H, W, 3) maps; valid = gt not all zero."""
    if pred.shape != gt.shape or gt.ndim != 3 or gt.shape[-1] != 3:
        raise MetricInputError(f"prediction has shape {pred.shape}, ground truth {gt.shape}; both need (H, W, 3)")
    valid = np.any(gt != 0, axis=-1)
    g = gt[valid].astype(np.float64)
    p = pred[valid].astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise MetricInputError("prediction has non-finite values at valid pixels")
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    p_norm = np.linalg.norm(p, axis=-1)
    has_direction = p_norm > 1e-12
    cos = np.full(len(g), -1.0)
    cos[has_direction] = np.sum(g[has_direction] * p[has_direction], axis=-1) / p_norm[has_direction]
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def summarise_errors(errors: np.ndarray) -> dict[str, float]:
    if errors.size == 0:
        raise MetricInputError("no valid ground-truth normal pixel (every pixel is (0, 0, 0))")
    out = {"mean": float(errors.mean()), "median": float(np.median(errors))}
    out.update({k: float(np.mean(errors < t)) for k, t in THRESHOLDS_DEG.items()})
    out["pixels"] = int(errors.size)
    return out


def normal_metrics(pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Pooled metrics over (name, gt, pred) maps."""
    errors: list[np.ndarray] = []
    for name, gt, pred in pairs:
        try:
            errors.append(angular_errors(pred, gt))
        except MetricInputError as e:
            raise MetricInputError(f"{name}: {e}") from None
    result: dict[str, Any] = summarise_errors(np.concatenate(errors) if errors else np.zeros(0))
    result["images"] = len(pairs)
    return result


def normal_metrics_from_files(gt_dir: str, pred_dir: str) -> dict[str, Any]:
    # Keep only the per-pixel errors (8 bytes each), not the maps, while reading the set.
    errors: list[np.ndarray] = []
    count = 0
    for name, gt, pred in iter_pairs(gt_dir, pred_dir, decode_normal, npy_channels=3):
        try:
            errors.append(angular_errors(pred, gt))
        except MetricInputError as e:
            raise MetricInputError(f"{pred_dir}/{name}: {e}") from None
        count += 1
    try:
        result: dict[str, Any] = summarise_errors(np.concatenate(errors))
    except MetricInputError as e:
        raise MetricInputError(f"{gt_dir}: {e}") from None
    result["images"] = count
    return result
