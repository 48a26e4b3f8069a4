"""Pose: COCO keypoint AP/AR with the Goliath OKS sigmas of a keypoint subset, overall and per group.

    hv eval pose --gt gt.json --pred results.json [--keypoints all|coco17|body+feet+hands|...]

Ground truth is a COCO keypoint file (`images`, `annotations` with 3·K `keypoints`, `bbox` xywh, `area`,
`categories`); predictions are COCO results (`image_id`, `category_id`, `keypoints`, `score`). pycocotools
does the matching and averaging; only the sigmas (from `data_engine.schema`) and the per-group slicing
are ours. A group is evaluated as in COCO-WholeBody: keypoints outside the group are dropped from both
sides and `num_keypoints` is recounted, so a person with no labelled point in the group is ignored.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from typing import Any

import numpy as np

from data_engine import schema
from eval.metrics import MetricInputError
from eval.metrics.pck import pck

# The groups reported under `groups`, in the order of the Sapiens paper's tables.
REPORT_GROUPS: tuple[str, ...] = ("body", "feet", "face", "left_hand", "right_hand", "all")
# pycocotools' stats layout for keypoints: AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl.
_STAT_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR")


def infer_subset(gt: dict[str, Any]) -> str:
    """The keypoint subset a COCO file uses: by the category's keypoint names if they match a subset
    exactly, else by the number of keypoints if that is unambiguous (17 -> coco17)."""
    num = _num_keypoints(gt)
    for category in gt.get("categories", []):
        names = category.get("keypoints")
        if names:
            for subset_name in schema.SUBSET_NAMES:
                if list(names) == schema.subset_names(subset_name):
                    return subset_name
    if num == len(schema.subset("coco17")):
        return "coco17"  # the COCO file format's own 17 points, in COCO order
    matches = [n for n in schema.SUBSET_NAMES if len(schema.subset(n)) == num]
    if len(matches) == 1:
        return matches[0]
    raise MetricInputError(
        f"cannot tell the keypoint subset of {num} keypoints per person; pass --keypoints "
        f"(one of: {', '.join(schema.SUBSET_NAMES)})"
    )


def _num_keypoints(gt: dict[str, Any]) -> int:
    for ann in gt.get("annotations", []):
        return len(ann.get("keypoints", [])) // 3
    for category in gt.get("categories", []):
        if category.get("keypoints"):
            return len(category["keypoints"])
    raise MetricInputError("ground truth has no annotations and no category keypoint names")


def validate_gt(gt: Any, num_keypoints: int) -> None:
    """Raise MetricInputError naming the first annotation that breaks the COCO keypoint format."""
    if not isinstance(gt, dict):
        raise MetricInputError(f"ground truth must be a COCO object, got {type(gt).__name__}")
    for field in ("images", "annotations", "categories"):
        if not isinstance(gt.get(field), list):
            raise MetricInputError(f"ground truth needs a list '{field}'")
    if not gt["annotations"]:
        raise MetricInputError("ground truth has no annotations: there is nothing to evaluate against")
    image_ids = {img.get("id") for img in gt["images"]}
    for i, ann in enumerate(gt["annotations"]):
        where = f"ground-truth annotation {i} (id {ann.get('id')!r})"
        for field in ("id", "image_id", "keypoints", "bbox", "area"):
            if field not in ann:
                raise MetricInputError(f"{where} has no '{field}'")
        _check_keypoints(ann["keypoints"], num_keypoints, where)
        if len(ann["bbox"]) != 4 or not all(_finite(v) for v in ann["bbox"]):
            raise MetricInputError(f"{where}: bbox must be 4 finite numbers [x, y, w, h]")
        if not _finite(ann["area"]) or ann["area"] < 0:
            raise MetricInputError(f"{where}: area must be a non-negative number, got {ann['area']!r}")
        if ann["image_id"] not in image_ids:
            raise MetricInputError(f"{where}: image_id {ann['image_id']!r} is not among the ground-truth images")


def validate_predictions(preds: Any, gt: dict[str, Any], num_keypoints: int) -> None:
    if not isinstance(preds, list):
        raise MetricInputError(f"predictions must be a list of COCO results, got {type(preds).__name__}")
    image_ids = {img["id"] for img in gt["images"]}
    category_ids = {c.get("id") for c in gt["categories"]}
    for i, det in enumerate(preds):
        where = f"prediction {i}"
        if not isinstance(det, dict):
            raise MetricInputError(f"{where} must be an object, got {type(det).__name__}")
        for field in ("image_id", "category_id", "keypoints", "score"):
            if field not in det:
                raise MetricInputError(f"{where} has no '{field}'")
        _check_keypoints(det["keypoints"], num_keypoints, where)
        if not _finite(det["score"]):
            raise MetricInputError(f"{where}: score must be a finite number, got {det['score']!r}")
        if det["image_id"] not in image_ids:
            raise MetricInputError(f"{where}: image_id {det['image_id']!r} is not among the ground-truth images")
        if det["category_id"] not in category_ids:
            raise MetricInputError(f"{where}: category_id {det['category_id']!r} is not a ground-truth category")


def _check_keypoints(kps: Any, num_keypoints: int, where: str) -> None:
    if not isinstance(kps, list) or len(kps) != 3 * num_keypoints:
        got = len(kps) if isinstance(kps, list) else type(kps).__name__
        raise MetricInputError(f"{where}: keypoints must be a flat list of 3 x {num_keypoints} numbers, got {got}")
    if not all(_finite(v) for v in kps):
        raise MetricInputError(f"{where}: keypoints hold a non-finite or non-numeric value")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def group_positions(subset_name: str, group: str) -> np.ndarray:
    """Positions within `subset_name` of the keypoints that belong to `group` ("all" = every position)."""
    members = schema.subset(subset_name)
    if group == "all":
        return np.arange(len(members))
    wanted = set(int(i) for i in schema.subset(group))
    return np.array([p for p, g in enumerate(members) if int(g) in wanted], dtype=np.int64)


def _slice(kps: list[float], positions: np.ndarray) -> list[float]:
    arr = np.asarray(kps, dtype=np.float64).reshape(-1, 3)[positions]
    return arr.reshape(-1).tolist()


def coco_keypoint_stats(gt: dict[str, Any], preds: list[dict[str, Any]], sigmas: np.ndarray) -> dict[str, float | None]:
    """pycocotools keypoint evaluation: {AP, AP50, AP75, APm, APl, AR} as fractions.

    `num_keypoints` of each GT annotation is recounted from its visibilities (pycocotools ignores a person
    with none). A value is None where pycocotools has no ground truth to average over (its -1), e.g. APm
    with no medium-sized person. No prediction at all gives 0 for every defined value.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = copy.deepcopy(gt)
    for ann in gt["annotations"]:
        ann["num_keypoints"] = int(np.count_nonzero(np.asarray(ann["keypoints"]).reshape(-1, 3)[:, 2] > 0))
        ann.setdefault("iscrowd", 0)
        ann.setdefault("category_id", gt["categories"][0]["id"])
    if not any(ann["num_keypoints"] > 0 and not ann["iscrowd"] for ann in gt["annotations"]):
        return dict.fromkeys(_STAT_KEYS)
    # pycocotools prints progress on stdout, which belongs to our one JSON object.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not preds:
            # loadRes cannot load an empty list; with nothing predicted every recall and precision is 0.
            return _empty_prediction_stats(coco_gt, sigmas)
        coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        evaluator = COCOeval(coco_gt, coco_dt, "keypoints")
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {key: (None if stats[i] < 0 else float(stats[i])) for i, key in enumerate(_STAT_KEYS)}


def _empty_prediction_stats(coco_gt: Any, sigmas: np.ndarray) -> dict[str, float | None]:
    """Stats with no detection: 0 where the area range holds ground truth, None where it holds none."""
    from pycocotools.cocoeval import Params

    params = Params(iouType="keypoints")
    anns = [a for a in coco_gt.dataset["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]

    def has_gt(area_name: str) -> bool:
        lo, hi = params.areaRng[params.areaRngLbl.index(area_name)]
        return any(lo <= a["area"] <= hi for a in anns)

    out: dict[str, float | None] = {}
    for key in _STAT_KEYS:
        area = {"APm": "medium", "APl": "large"}.get(key, "all")
        out[key] = 0.0 if has_gt(area) else None
    return out


def pose_metrics(gt: dict[str, Any], preds: list[dict[str, Any]], subset_name: str | None = None) -> dict[str, Any]:
    """{AP, AP50, AP75, APm, APl, AR, pck: {PCK@0.05, PCK@0.1, PCK@0.2}, keypoints, num_keypoints,
    groups: {group: {...}}}.

    `groups` holds every reported group with at least one keypoint in the subset (coco17 has no hands).
    """
    if not isinstance(gt, dict):
        raise MetricInputError(f"ground truth must be a COCO object, got {type(gt).__name__}")
    subset_name = subset_name or infer_subset(gt)
    try:
        subset_sigmas = schema.subset_sigmas(subset_name)
    except ValueError as e:
        raise MetricInputError(str(e)) from None
    num = len(subset_sigmas)
    validate_gt(gt, num)
    validate_predictions(preds, gt, num)
    result: dict[str, Any] = coco_keypoint_stats(gt, preds, subset_sigmas)
    result["pck"] = pck(gt, preds, subset_sigmas)  # a box-relative scale next to the OKS's (eval.metrics.pck)
    groups: dict[str, dict[str, float | None]] = {}
    for group in REPORT_GROUPS:
        positions = group_positions(subset_name, group)
        if len(positions) == 0:
            continue
        if group == "all":
            groups[group] = {k: result[k] for k in _STAT_KEYS}
            continue
        gt_group = dict(
            gt, annotations=[dict(a, keypoints=_slice(a["keypoints"], positions)) for a in gt["annotations"]]
        )
        preds_group = [dict(p, keypoints=_slice(p["keypoints"], positions)) for p in preds]
        groups[group] = coco_keypoint_stats(gt_group, preds_group, subset_sigmas[positions])
    result.update(keypoints=subset_name, num_keypoints=num, persons=len(gt["annotations"]), predictions=len(preds))
    result["oks_area"] = oks_area_source(gt["annotations"])
    result["groups"] = groups
    return result


def oks_area_source(annotations: list[dict[str, Any]]) -> str:
    """Which areas scaled the OKS: "mask" (COCO's convention: segmentation areas), "box", "mixed", or "given"
    (a ground-truth file that does not say: its own `area` values were used as they are)."""
    sources = {a.get("area_source") for a in annotations}
    if sources == {"mask"} or sources == {"box"}:
        return sources.pop()  # type: ignore[return-value]
    return "mixed" if sources <= {"mask", "box"} and sources else "given"


def load_json(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise MetricInputError(f"{what} file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MetricInputError(f"{what} file {path!r} is not valid JSON: {e}") from None


def pose_metrics_from_files(gt_path: str, pred_path: str, subset_name: str | None = None) -> dict[str, Any]:
    gt = load_json(gt_path, "ground-truth")
    preds = load_json(pred_path, "prediction")
    if isinstance(preds, dict) and isinstance(preds.get("annotations"), list):
        preds = preds["annotations"]  # a results file saved as a COCO object: accept its annotation list
    try:
        return pose_metrics(gt, preds, subset_name)
    except MetricInputError as e:
        raise MetricInputError(f"{pred_path} vs {gt_path}: {e}") from None
