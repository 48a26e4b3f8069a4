"""COCO files around `hv predict`: detection results in (as `--boxes`), keypoint results out.

COCO detection results are `[{image_id, category_id, bbox: [x, y, w, h], score}, ...]`; an image is matched
by its id, which COCO writes as the number in the file name (`000000397133.jpg` is image 397133). Keypoint
results are `[{image_id, category_id: 1, keypoints: K x 3 flat, score}, ...]`, what pycocotools' `loadRes`
and `hv eval pose --pred` read; an input whose name is not a number gets its position in `index.json`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PERSON_CATEGORY = 1  # COCO's person


class CocoResultsError(ValueError):
    """A detection results file that cannot be used. The message names the file and the entry."""


def image_id(name: str, position: int) -> int:
    """COCO's image id for an input name: the number it is (`000000397133` -> 397133), else `position`."""
    return int(name) if name.isdigit() else position


def detections_by_image(path: str, detections: list[Any]) -> dict[str, list[list[float]]]:
    """COCO detection results -> {str(image_id): [[x0, y0, x1, y1, score], ...]} of the person boxes."""
    table: dict[str, list[list[float]]] = {}
    for i, det in enumerate(detections):
        if not isinstance(det, dict) or not {"image_id", "bbox"} <= det.keys():
            raise CocoResultsError(
                f"boxes file {path!r}: entry {i} must be an object with image_id, bbox [x, y, w, h] and score"
            )
        if det.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY:
            continue
        bbox = det["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise CocoResultsError(f"boxes file {path!r}: entry {i} bbox must be [x, y, w, h], got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise CocoResultsError(f"boxes file {path!r}: entry {i} has an empty box {bbox} (needs w > 0, h > 0)")
        score = det.get("score", 1.0)
        table.setdefault(str(det["image_id"]), []).append([x, y, x + w, y + h, float(score)])
    return table


def keypoint_result(image: int, keypoints: np.ndarray, score: float) -> dict[str, Any]:
    """One person's keypoint result; `keypoints` (K, 3) of [x, y, confidence]."""
    return {
        "image_id": image,
        "category_id": PERSON_CATEGORY,
        "keypoints": np.round(np.asarray(keypoints, np.float64), 3).reshape(-1).tolist(),
        "score": float(score),
    }
