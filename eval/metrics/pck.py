"""PCK: the fraction of labelled keypoints a prediction places within `alpha` x the person's box size.

OKS-based AP (`eval.metrics.pose`) scales each keypoint's tolerance by the person's mask area and the keypoint's
sigma: on small people it asks for a few pixels on the face and wrists, and a weak model and a trivial one can
both score 0. PCK keeps a readable scale: with the box size s = max(box width, box height) (mmpose's bbox
normalisation), a labelled keypoint (v > 0) counts as correct when the matched prediction is within alpha * s.

Matching, as COCO's is score-ordered: predictions in descending score take, one by one, the still unmatched
ground-truth person of their image and category with the highest OKS (> 0). A ground-truth person left
without a prediction counts every labelled keypoint as a miss; extra predictions do not count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PCK_THRESHOLDS: tuple[float, ...] = (0.05, 0.1, 0.2)


def _oks(pred: np.ndarray, gt: np.ndarray, area: float, sigmas: np.ndarray) -> float:
    """COCO's object keypoint similarity of one (K, 3) prediction to one (K, 3) labelled person."""
    labelled = gt[:, 2] > 0
    if not labelled.any():
        return 0.0
    d2 = ((pred[:, :2] - gt[:, :2]) ** 2).sum(axis=1)
    e = d2 / ((2 * sigmas) ** 2 * 2 * (area + np.spacing(1)))
    return float(np.exp(-e[labelled]).mean())


def match_predictions(
    gt: dict[str, Any], preds: list[dict[str, Any]], sigmas: np.ndarray
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(ground-truth annotation, its matched prediction or None) for every annotation, in the file's order."""
    by_image: dict[tuple[Any, Any], list[int]] = {}
    default_category = gt["categories"][0]["id"] if gt["categories"] else None
    annotations = gt["annotations"]
    for i, ann in enumerate(annotations):
        by_image.setdefault((ann["image_id"], ann.get("category_id", default_category)), []).append(i)
    points = [np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3) for a in annotations]
    matched: list[dict[str, Any] | None] = [None] * len(annotations)
    for det in sorted(preds, key=lambda d: -d["score"]):  # stable: ties keep the file's order
        kps = np.asarray(det["keypoints"], dtype=np.float64).reshape(-1, 3)
        best, best_oks = None, 0.0
        for i in by_image.get((det["image_id"], det["category_id"]), []):
            if matched[i] is None:
                similarity = _oks(kps, points[i], float(annotations[i]["area"]), sigmas)
                if similarity > best_oks:
                    best, best_oks = i, similarity
        if best is not None:
            matched[best] = det
    return list(zip(annotations, matched, strict=True))


def pck(
    gt: dict[str, Any],
    preds: list[dict[str, Any]],
    sigmas: np.ndarray,
    thresholds: tuple[float, ...] = PCK_THRESHOLDS,
) -> dict[str, float | None]:
    """{"PCK@alpha": fraction} over every labelled keypoint of the ground truth; None with no labelled keypoint."""
    hits = np.zeros(len(thresholds))
    total = 0
    for ann, det in match_predictions(gt, preds, sigmas):
        truth = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        labelled = truth[:, 2] > 0
        total += int(labelled.sum())
        if det is None or not labelled.any():
            continue
        size = max(float(ann["bbox"][2]), float(ann["bbox"][3]))
        pred = np.asarray(det["keypoints"], dtype=np.float64).reshape(-1, 3)
        distance = np.linalg.norm(pred[labelled, :2] - truth[labelled, :2], axis=1)
        hits += [(distance <= alpha * size).sum() for alpha in thresholds]
    return {f"PCK@{alpha:g}": (float(h / total) if total else None) for alpha, h in zip(thresholds, hits, strict=True)}
