"""Pose AP against pycocotools called directly and against a hand-written OKS; degenerate inputs."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from eval_testdata import coco_pose_set
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from data_engine import schema
from eval.metrics import MetricInputError
from eval.metrics.pose import group_positions, infer_subset, pose_metrics, pose_metrics_from_files


def _pycocotools_stats(gt: dict, preds: list[dict], sigmas: np.ndarray) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(preds))
        ev = COCOeval(coco, dt, "keypoints")
        ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("subset", ["coco17", "body+feet+hands", "all"])
def test_pose_matches_pycocotools_with_schema_sigmas(subset: str) -> None:
    rng = np.random.default_rng(7)
    gt, preds = coco_pose_set(rng, subset, images=4, persons=3)
    ours = pose_metrics(gt, preds, subset)
    ref = _pycocotools_stats(gt, preds, schema.subset_sigmas(subset))
    for i, key in enumerate(("AP", "AP50", "AP75", "APm", "APl", "AR")):
        expected = None if ref[i] < 0 else ref[i]
        assert ours[key] == pytest.approx(expected), key
    assert 0 < ours["AP"] < 1  # the noise is tuned so the test is not trivially all-or-nothing
    assert ours["groups"]["all"]["AP"] == ours["AP"]


def test_pose_group_equals_pycocotools_on_sliced_keypoints() -> None:
    rng = np.random.default_rng(3)
    gt, preds = coco_pose_set(rng, "all", images=3, persons=2)
    ours = pose_metrics(gt, preds, "all")
    assert set(ours["groups"]) == {"body", "feet", "face", "left_hand", "right_hand", "all"}
    positions = group_positions("all", "left_hand")
    assert len(positions) == 20
    sliced_gt = copy.deepcopy(gt)
    for ann in sliced_gt["annotations"]:
        kps = np.asarray(ann["keypoints"]).reshape(-1, 3)[positions]
        ann["keypoints"] = kps.reshape(-1).tolist()
        ann["num_keypoints"] = int((kps[:, 2] > 0).sum())
    sliced_preds = [
        dict(p, keypoints=np.asarray(p["keypoints"]).reshape(-1, 3)[positions].reshape(-1).tolist()) for p in preds
    ]
    ref = _pycocotools_stats(sliced_gt, sliced_preds, schema.sigmas()[schema.subset("left_hand")])
    assert ours["groups"]["left_hand"]["AP"] == pytest.approx(ref[0])
    # Group APs differ from each other: the slicing really selects different points and sigmas.
    assert len({round(g["AP"], 6) for g in ours["groups"].values()}) > 1


def test_pose_ap_equals_hand_computed_oks_for_one_person() -> None:
    """One GT and one prediction: AP at threshold t is 1 if OKS >= t else 0, so AP = mean_t [OKS >= t]."""
    subset = "coco17"
    rng = np.random.default_rng(11)
    gt, preds = coco_pose_set(rng, subset, images=1, persons=1, noise=6.0)
    ann = gt["annotations"][0]
    ann["area"] = 150.0 * 200.0  # large: COCO's APm has no ground truth, APl does
    g = np.asarray(ann["keypoints"]).reshape(-1, 3)
    p = np.asarray(preds[0]["keypoints"]).reshape(-1, 3)
    visible = g[:, 2] > 0
    sigmas = schema.subset_sigmas(subset)
    d2 = ((g[:, :2] - p[:, :2]) ** 2).sum(axis=1)
    oks = float(np.mean(np.exp(-d2 / (2 * ann["area"] * (2 * sigmas) ** 2))[visible]))
    thresholds = np.linspace(0.5, 0.95, 10)
    expected_ap = float(np.mean(oks >= thresholds))
    ours = pose_metrics(gt, preds, subset)
    assert ours["AP"] == pytest.approx(expected_ap)
    assert ours["AR"] == pytest.approx(expected_ap)
    assert ours["APm"] is None and ours["APl"] == pytest.approx(expected_ap)
    assert ours["AP50"] == pytest.approx(1.0 if oks >= 0.5 else 0.0)
    assert 0.0 < expected_ap < 1.0, oks  # an OKS between the thresholds, so the test can tell them apart


def test_perfect_predictions_score_one_and_empty_predictions_zero() -> None:
    rng = np.random.default_rng(0)
    gt, _ = coco_pose_set(rng, "coco17", images=2, persons=2)
    perfect = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in gt["annotations"]
    ]
    assert pose_metrics(gt, perfect)["AP"] == pytest.approx(1.0)
    empty = pose_metrics(gt, [])
    assert empty["AP"] == 0.0 and empty["AR"] == 0.0
    assert all(v is None or v == 0.0 for g in empty["groups"].values() for v in g.values())


def test_subset_is_inferred_from_category_names_or_count() -> None:
    rng = np.random.default_rng(0)
    gt, _ = coco_pose_set(rng, "body+feet+hands", images=1, persons=1)
    assert infer_subset(gt) == "body+feet+hands"
    del gt["categories"][0]["keypoints"]
    assert infer_subset(gt) == "body+feet+hands"  # 63 is unique among the subsets
    gt17, _ = coco_pose_set(rng, "coco17", images=1, persons=1)
    del gt17["categories"][0]["keypoints"]
    assert infer_subset(gt17) == "coco17"


def test_group_without_labelled_points_is_none_not_nan() -> None:
    rng = np.random.default_rng(5)
    gt, preds = coco_pose_set(rng, "body+feet", images=2, persons=1)
    feet = group_positions("body+feet", "feet")
    for ann in gt["annotations"]:
        kps = np.asarray(ann["keypoints"]).reshape(-1, 3)
        kps[feet] = 0
        ann["keypoints"] = kps.reshape(-1).tolist()
    result = pose_metrics(gt, preds, "body+feet")
    assert result["groups"]["feet"]["AP"] is None
    assert result["groups"]["body"]["AP"] is not None
    json.dumps(result, allow_nan=False)  # no NaN anywhere


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda gt, p: p[0].pop("score"), "prediction 0 has no 'score'"),
        (lambda gt, p: p[0].update(keypoints=p[0]["keypoints"][:-3]), "3 x 17"),
        (lambda gt, p: p[0].update(image_id=999), "image_id 999"),
        (lambda gt, p: p[0].update(category_id=7), "category_id 7"),
        (lambda gt, p: p[1].update(score=float("nan")), "prediction 1: score"),
        (lambda gt, p: gt["annotations"][0].pop("area"), "has no 'area'"),
        (lambda gt, p: gt["annotations"][1].update(bbox=[1, 2]), "bbox must be 4"),
        (lambda gt, p: gt.update(annotations=[]), "no annotations"),
    ],
)
def test_bad_pose_input_names_the_fault(mutate, message: str) -> None:
    rng = np.random.default_rng(1)
    gt, preds = coco_pose_set(rng, "coco17", images=2, persons=1)
    mutate(gt, preds)
    with pytest.raises(MetricInputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        pose_metrics(gt, preds, "coco17")


def test_pose_files_bad_json_and_wrong_types(tmp_path) -> None:
    rng = np.random.default_rng(1)
    gt, preds = coco_pose_set(rng, "coco17", images=1, persons=1)
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt))
    pred_path.write_text(json.dumps(preds)[:-20])  # truncated
    with pytest.raises(MetricInputError, match=r"pred.json.*not valid JSON"):
        pose_metrics_from_files(str(gt_path), str(pred_path))
    pred_path.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(MetricInputError, match=r"must be a list"):
        pose_metrics_from_files(str(gt_path), str(pred_path))
    with pytest.raises(MetricInputError, match=r"does not exist"):
        pose_metrics_from_files(str(tmp_path / "missing.json"), str(pred_path))
    pred_path.write_text(json.dumps(preds))
    with pytest.raises(MetricInputError, match=r"unknown keypoint subset 'hand'"):
        pose_metrics_from_files(str(gt_path), str(pred_path), "hand")
    assert pose_metrics_from_files(str(gt_path), str(pred_path))["keypoints"] == "coco17"


def test_oks_area_from_the_person_mask_and_its_source_is_reported() -> None:
    """COCO scales OKS by the segmentation area; the box area is larger and flatters the same predictions."""
    from eval.model_eval import person_area

    mask = np.zeros((100, 80), bool)
    mask[20:80, 30:50] = True  # a 60 x 20 person inside a 80 x 40 box
    assert person_area(mask, (20.0, 10.0, 60.0, 90.0)) == (1200.0, "mask")
    assert person_area(None, (20.0, 10.0, 60.0, 90.0)) == (3200.0, "box")
    assert person_area(np.zeros((100, 80), bool), (20.0, 10.0, 60.0, 90.0)) == (3200.0, "box")  # nobody there

    rng = np.random.default_rng(11)
    gt, preds = coco_pose_set(rng, "coco17", images=4, persons=2)
    assert pose_metrics(gt, preds, "coco17")["oks_area"] == "given"  # a foreign file: its own areas, as given
    boxes, masks = copy.deepcopy(gt), copy.deepcopy(gt)
    for a in boxes["annotations"]:
        a["area_source"] = "box"
    for a in masks["annotations"]:
        a["area"], a["area_source"] = a["area"] * 0.4, "mask"  # people fill ~40% of their boxes
    by_box, by_mask = pose_metrics(boxes, preds, "coco17"), pose_metrics(masks, preds, "coco17")
    assert by_box["oks_area"] == "box" and by_mask["oks_area"] == "mask"
    assert by_mask["AP"] < by_box["AP"]  # the same errors, judged against the person's real size
    masks["annotations"][0]["area_source"] = "box"
    assert pose_metrics(masks, preds, "coco17")["oks_area"] == "mixed"
