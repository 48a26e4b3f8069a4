"""PCK against hand-counted cases: the box scale, the matching, unlabelled and unmatched people."""

from __future__ import annotations

import numpy as np
import pytest
from eval_testdata import coco_pose_set

from data_engine import schema
from eval.metrics.pck import pck
from eval.metrics.pose import pose_metrics

SIGMAS = schema.subset_sigmas("coco17")


def _person(image_id: int, ann_id: int, origin: tuple[float, float], box: tuple[float, float] = (40.0, 100.0)) -> dict:
    """17 labelled keypoints on a vertical line inside a box of `box` (w, h) at `origin`."""
    x0, y0 = origin
    kps = []
    for k in range(17):
        kps += [x0 + 20.0, y0 + 5.0 + 5.0 * k, 2]
    bbox = [x0, y0, *box]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "keypoints": kps, "bbox": bbox, "area": 3000}


def _gt(*annotations: dict) -> dict:
    images = sorted({a["image_id"] for a in annotations})
    return {
        "images": [{"id": i, "width": 200, "height": 200} for i in images],
        "annotations": list(annotations),
        "categories": [{"id": 1, "name": "person", "keypoints": schema.subset_names("coco17")}],
    }


def _pred(ann: dict, shift: tuple[float, float] = (0.0, 0.0), score: float = 1.0) -> dict:
    kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    kps[:, :2] += shift
    return {"image_id": ann["image_id"], "category_id": 1, "keypoints": kps.reshape(-1).tolist(), "score": score}


def test_distances_are_measured_against_the_box_size() -> None:
    person = _person(1, 1, (10.0, 10.0))  # box 40 x 100: the scale is 100 px
    gt = _gt(person)
    assert pck(gt, [_pred(person)], SIGMAS) == {"PCK@0.05": 1.0, "PCK@0.1": 1.0, "PCK@0.2": 1.0}
    # 8 px off: outside 5 px (0.05), inside 10 px and 20 px.
    assert pck(gt, [_pred(person, (8.0, 0.0))], SIGMAS) == {"PCK@0.05": 0.0, "PCK@0.1": 1.0, "PCK@0.2": 1.0}
    # 15 px off: only 0.2 holds.
    assert pck(gt, [_pred(person, (0.0, 15.0))], SIGMAS) == {"PCK@0.05": 0.0, "PCK@0.1": 0.0, "PCK@0.2": 1.0}
    # A box lying on its side (100 x 40) also scales by its larger side, its width: 8 px is within 0.1 of it.
    lying = _person(1, 1, (10.0, 10.0), box=(100.0, 40.0))
    assert pck(_gt(lying), [_pred(lying, (0.0, 8.0))], SIGMAS) == {"PCK@0.05": 0.0, "PCK@0.1": 1.0, "PCK@0.2": 1.0}


def test_unlabelled_keypoints_do_not_count_and_a_missed_person_counts_as_misses() -> None:
    seen = _person(1, 1, (10.0, 10.0))
    kps = np.asarray(seen["keypoints"], dtype=np.float64).reshape(-1, 3)
    kps[:7, 2] = 0  # 7 of 17 unlabelled: 10 labelled keypoints remain
    seen["keypoints"] = kps.reshape(-1).tolist()
    missed = _person(2, 2, (10.0, 10.0))  # 17 labelled keypoints, no prediction in its image
    wrong = _pred(seen)
    wrong_kps = np.asarray(wrong["keypoints"]).reshape(-1, 3)
    wrong_kps[:7, :2] += 90.0  # far off, but only on the unlabelled keypoints
    wrong["keypoints"] = wrong_kps.reshape(-1).tolist()
    result = pck(_gt(seen, missed), [wrong], SIGMAS)
    assert result["PCK@0.05"] == pytest.approx(10 / 27)
    assert pck(_gt(seen), [], SIGMAS)["PCK@0.2"] == 0.0
    blank = _person(1, 1, (10.0, 10.0))
    blank["keypoints"] = [0.0] * 51
    assert pck(_gt(blank), [_pred(blank)], SIGMAS) == dict.fromkeys(("PCK@0.05", "PCK@0.1", "PCK@0.2"))


def test_predictions_match_the_person_they_fit_not_the_file_order() -> None:
    left, right = _person(1, 1, (10.0, 10.0)), _person(1, 2, (120.0, 10.0))
    gt = _gt(left, right)
    # Listed right-first, and one more low-scoring prediction that fits nobody: each person gets its own.
    preds = [_pred(right, (2.0, 0.0)), _pred(left, (2.0, 0.0)), _pred(left, (60.0, 60.0), score=0.1)]
    assert pck(gt, preds, SIGMAS)["PCK@0.05"] == 1.0
    # The higher score chooses first: a confident wrong pose takes the person, the better one is left over.
    preds = [_pred(left, (12.0, 0.0), score=0.9), _pred(left, score=0.5)]
    assert pck(_gt(left), preds, SIGMAS)["PCK@0.1"] == 0.0


def test_pose_metrics_report_pck_next_to_the_oks_ap() -> None:
    rng = np.random.default_rng(5)
    gt, preds = coco_pose_set(rng, "coco17", images=3, persons=2)
    result = pose_metrics(gt, preds, "coco17")
    assert result["pck"] == pck(gt, preds, SIGMAS)
    assert 0 <= result["pck"]["PCK@0.05"] <= result["pck"]["PCK@0.1"] <= result["pck"]["PCK@0.2"] <= 1
    assert result["pck"]["PCK@0.2"] > 0
