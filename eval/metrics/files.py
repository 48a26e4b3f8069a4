"""Pairing ground-truth and prediction maps by file name, and reading them with the sample-contract codecs.

Dense predictions may also be NumPy files (`NAME.npy` beside the ground truth's `NAME.png`), as Sapiens'
own depth and normal scripts write them: (H, W) float depth, (H, W, 3) float normals.

A prediction folder must hold exactly the ground truth's names: a missing or an extra file is an error
that lists them, because a metric over a silently smaller set is a different metric.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from data_engine.sample import SampleError
from eval.metrics import MetricInputError

T = TypeVar("T")
_MAX_LISTED = 5


def list_maps(folder: str, what: str, suffix: str | tuple[str, ...] = ".png") -> list[str]:
    """Sorted file names ending in `suffix` (or one of them) directly inside `folder`; an error if there are none."""
    if not os.path.isdir(folder):
        raise MetricInputError(f"{what} folder {folder!r} does not exist or is not a folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(suffix) and not n.startswith("."))
    if not names:
        raise MetricInputError(f"{what} folder {folder!r} holds no {' or '.join(np.atleast_1d(suffix))} files")
    return names


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]


def paired_names(
    gt_dir: str, pred_dir: str, suffix: str = ".png", pred_suffixes: tuple[str, ...] = (".png",)
) -> list[tuple[str, str]]:
    """(ground-truth name, prediction name) pairs, matched by the name without its extension."""
    gt_names = {_stem(n): n for n in list_maps(gt_dir, "ground-truth", suffix)}
    pred_names: dict[str, str] = {}
    for name in list_maps(pred_dir, "prediction", pred_suffixes):
        if _stem(name) in pred_names:
            raise MetricInputError(
                f"{pred_dir}: two predictions for {_stem(name)!r} ({pred_names[_stem(name)]}, {name})"
            )
        pred_names[_stem(name)] = name
    missing = sorted(gt_names[k] for k in set(gt_names) - set(pred_names))
    extra = sorted(pred_names[k] for k in set(pred_names) - set(gt_names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ground-truth file(s) have no prediction ({_some(missing)})")
        if extra:
            parts.append(f"{len(extra)} prediction file(s) have no ground truth ({_some(extra)})")
        raise MetricInputError(f"{pred_dir} vs {gt_dir}: names do not match: " + "; ".join(parts))
    return [(gt_names[k], pred_names[k]) for k in sorted(gt_names)]


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def read_map(path: str, decoder: Callable[[bytes], T]) -> T:
    """Decode one PNG with a sample-contract codec; any failure is a MetricInputError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise MetricInputError(f"cannot read {path}: {e}") from None
    if not data:
        raise MetricInputError(f"{path} is empty")
    try:
        return decoder(data)
    except SampleError as e:
        raise MetricInputError(f"{path}: {e}") from None
    except Exception as e:  # Pillow / OpenCV raise several types on truncated or corrupt files
        raise MetricInputError(f"{path}: not a readable PNG ({type(e).__name__}: {e})") from None


def read_npy(path: str, channels: int | None) -> np.ndarray:
    """A float prediction map from a `.npy` file: (H, W) when `channels` is None, else (H, W, channels)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # NumPy raises ValueError / OSError / EOFError on broken files
        raise MetricInputError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None
    if arr.ndim == 3 and channels is None and arr.shape[0] == 1:
        arr = arr[0]  # (1, H, W), as some depth scripts save it
    ndim_ok = arr.ndim == 2 if channels is None else (arr.ndim == 3 and arr.shape[2] == channels)
    if not ndim_ok or not np.issubdtype(arr.dtype, np.number):
        want = "(H, W)" if channels is None else f"(H, W, {channels})"
        raise MetricInputError(f"{path}: a prediction must be a {want} number array, got {arr.shape} {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise MetricInputError(f"{path}: the prediction has NaN or infinite values")
    if channels == 3:  # normals: unit length, zero stays zero (no prediction)
        norm = np.linalg.norm(arr, axis=-1, keepdims=True)
        arr = np.where(norm > 0, arr / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
    return arr


def iter_pairs(
    gt_dir: str, pred_dir: str, decoder: Callable[[bytes], np.ndarray], npy_channels: int | None | bool = False
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, gt, pred) for each matched file, with sizes checked. `npy_channels` (None for (H, W), or a channel
    count) also accepts `.npy` predictions of that shape; False accepts PNGs only."""
    pred_suffixes = (".png",) if npy_channels is False else (".png", ".npy")
    for name, pred_name in paired_names(gt_dir, pred_dir, pred_suffixes=pred_suffixes):
        gt = read_map(os.path.join(gt_dir, name), decoder)
        pred_path = os.path.join(pred_dir, pred_name)
        if pred_name.lower().endswith(".npy"):
            pred = read_npy(pred_path, None if npy_channels is None else int(npy_channels))
        else:
            pred = read_map(pred_path, decoder)
        if gt.shape != pred.shape:
            raise MetricInputError(f"{pred_path}: prediction has shape {pred.shape}, ground truth {gt.shape}")
        yield name, gt, pred
