"""Segmentation: one confusion matrix over the whole set, then mIoU, mAcc and aAcc.

    hv eval seg --gt gt_seg/ --pred pred_seg/ [--vocab goliath28|lip20]

Class maps are 8-bit PNGs of class ids (the sample contract's `seg.png`), matched by file name; ground
truth 255 = ignore. IoU_c = TP / (TP + FP + FN); mIoU averages over the classes whose union is non-zero
(a class absent from both sides says nothing about the model); mAcc averages TP / GT pixels over the
classes present in the ground truth; aAcc = correct / labelled pixels.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from data_engine import schema
from data_engine.sample import decode_seg
from eval.metrics import MetricInputError
from eval.metrics.files import iter_pairs


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, where: str = "map") -> np.ndarray:
    """(C, C) int64 counts, row = ground-truth class, column = predicted class; GT 255 is skipped.

    gt, pred: (H, W) integer class ids. A GT id outside 0..C-1 (other than 255) or a prediction id
    outside 0..C-1 at a labelled pixel is an error naming `where`.
    """
    if gt.shape != pred.shape:
        raise MetricInputError(f"{where}: prediction has shape {pred.shape}, ground truth {gt.shape}")
    gt = gt.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    labelled = gt != schema.IGNORE_INDEX
    gt, pred = gt[labelled], pred[labelled]
    bad_gt = np.unique(gt[(gt < 0) | (gt >= num_classes)])
    if bad_gt.size:
        raise MetricInputError(f"{where}: ground truth has class ids {bad_gt.tolist()} outside 0-{num_classes - 1}")
    bad_pred = np.unique(pred[(pred < 0) | (pred >= num_classes)])
    if bad_pred.size:
        raise MetricInputError(f"{where}: prediction has class ids {bad_pred.tolist()} outside 0-{num_classes - 1}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(confusion: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """{mIoU, mAcc, aAcc, per_class: name -> IoU (None if the class is in neither map), per_class_acc}."""
    total = int(confusion.sum())
    if total == 0:
        raise MetricInputError("no labelled pixel in the ground truth (every pixel is 255 = ignore)")
    tp = np.diag(confusion).astype(np.float64)
    gt_count = confusion.sum(axis=1).astype(np.float64)
    pred_count = confusion.sum(axis=0).astype(np.float64)
    union = gt_count + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
    present = union > 0  # non-empty since total > 0
    return {
        "mIoU": float(iou[present].mean()),
        "mAcc": float(acc[gt_count > 0].mean()),
        "aAcc": float(tp.sum() / total),
        "per_class": {n: (None if not present[c] else float(iou[c])) for c, n in enumerate(class_names)},
        "per_class_acc": {n: (None if gt_count[c] == 0 else float(acc[c])) for c, n in enumerate(class_names)},
        "pixels": total,
    }


def seg_metrics(pairs: list[tuple[str, np.ndarray, np.ndarray]], vocab: str = "goliath28") -> dict[str, Any]:
    """Metrics over (name, gt, pred) maps pooled into one confusion matrix."""
    try:
        names = schema.vocabulary(vocab).names
    except ValueError as e:
        raise MetricInputError(str(e)) from None
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    for name, gt, pred in pairs:
        confusion += confusion_matrix(gt, pred, len(names), where=name)
    if not pairs:
        raise MetricInputError("no image pairs to evaluate")
    result = scores_from_confusion(confusion, names)
    result.update(vocab=vocab, images=len(pairs))
    return result


def seg_metrics_from_files(gt_dir: str, pred_dir: str, vocab: str = "goliath28") -> dict[str, Any]:
    # Pool as we read so a large set never sits in memory: one confusion matrix is all the state.
    try:
        names = schema.vocabulary(vocab).names
    except ValueError as e:
        raise MetricInputError(str(e)) from None
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    count = 0
    for name, gt, pred in iter_pairs(gt_dir, pred_dir, decode_seg):
        confusion += confusion_matrix(gt, pred, len(names), where=os.path.join(pred_dir, name))
        count += 1
    try:
        result = scores_from_confusion(confusion, names)
    except MetricInputError as e:
        raise MetricInputError(f"{gt_dir}: {e}") from None
    result.update(vocab=vocab, images=count)
    return result
