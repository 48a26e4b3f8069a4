"""Pairing ground-truth and prediction maps by file name, and reading them with the sample-contract codecs.

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


def list_maps(folder: str, what: str, suffix: str = ".png") -> list[str]:
    """Sorted file names ending in `suffix` directly inside `folder`; an error if there are none."""
    if not os.path.isdir(folder):
        raise MetricInputError(f"{what} folder {folder!r} does not exist or is not a folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(suffix) and not n.startswith("."))
    if not names:
        raise MetricInputError(f"{what} folder {folder!r} holds no {suffix} files")
    return names


def paired_names(gt_dir: str, pred_dir: str, suffix: str = ".png") -> list[str]:
    gt_names = list_maps(gt_dir, "ground-truth", suffix)
    pred_names = list_maps(pred_dir, "prediction", suffix)
    missing = sorted(set(gt_names) - set(pred_names))
    extra = sorted(set(pred_names) - set(gt_names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ground-truth file(s) have no prediction ({_some(missing)})")
        if extra:
            parts.append(f"{len(extra)} prediction file(s) have no ground truth ({_some(extra)})")
        raise MetricInputError(f"{pred_dir} vs {gt_dir}: names do not match: " + "; ".join(parts))
    return gt_names


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


def iter_pairs(
    gt_dir: str, pred_dir: str, decoder: Callable[[bytes], np.ndarray]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, gt, pred) for each matched file, with sizes checked."""
    for name in paired_names(gt_dir, pred_dir):
        gt = read_map(os.path.join(gt_dir, name), decoder)
        pred = read_map(os.path.join(pred_dir, name), decoder)
        if gt.shape != pred.shape:
            raise MetricInputError(
                f"{os.path.join(pred_dir, name)}: prediction has shape {pred.shape}, ground truth {gt.shape}"
            )
        yield name, gt, pred
