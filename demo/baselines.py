"""Trivial baselines, scored with the same metric code as the models, so the numbers sit side by side:

- pose:   the mean pose of the train split (keypoints relative to the person box) placed in each held-out box
- seg:    the train split's majority class everywhere
- depth:  a constant map (after the per-image scale-and-shift alignment this predicts the mean depth); and,
          reported next to it, a vertical ramp (depth = the image row, aligned the same way): the renders' cameras
          mostly look down, so the feet are farther than the head, and a model can score well above the constant
          by learning only that
- normal: the train split's mean normal everywhere
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data_engine import schema
from data_engine.sample import Sample
from data_engine.shards import iter_samples


def _train_statistics(train: Path, keypoint_names: list[str]) -> dict[str, Any]:
    k = len(keypoint_names)
    kp_sum, kp_count = np.zeros((k, 2)), np.zeros(k)
    class_pixels = np.zeros(256, np.int64)
    normal_sum = np.zeros(3)
    for sample in iter_samples(str(train), policy="skip"):
        if sample.pose is not None:
            names = schema.subset_names(sample.pose.keypoint_set)
            rows = [names.index(n) if n in names else -1 for n in keypoint_names]
            for person in sample.pose.persons:
                x0, y0, x1, y1 = person.bbox
                w, h = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
                for j, row in enumerate(rows):
                    if row >= 0 and person.keypoints[row, 2] > 0:
                        x, y, _ = person.keypoints[row]
                        kp_sum[j] += ((x - x0) / w, (y - y0) / h)
                        kp_count[j] += 1
        if sample.seg is not None:
            class_pixels += np.bincount(sample.seg.reshape(-1), minlength=256)
        if sample.normal is not None:
            valid = np.any(sample.normal != 0, axis=-1)
            normal_sum += sample.normal[valid].sum(axis=0)
    class_pixels[schema.IGNORE_INDEX] = 0
    mean_normal = normal_sum / max(np.linalg.norm(normal_sum), 1e-12)
    return {
        "mean_pose": kp_sum / np.maximum(kp_count, 1)[:, None],
        "pose_labelled": kp_count > 0,
        "majority_class": int(np.argmax(class_pixels)),
        "mean_normal": mean_normal.astype(np.float32),
    }


def _pose_baseline(gt: dict[str, Any], keypoint_set: str, stats: dict[str, Any]) -> dict[str, Any]:
    from eval.metrics.pose import pose_metrics

    preds = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        kps = []
        for (u, v), labelled in zip(stats["mean_pose"], stats["pose_labelled"], strict=True):
            kps += [x + u * w, y + v * h, 1.0 if labelled else 0.0]
        preds.append(
            {"image_id": ann["image_id"], "category_id": ann.get("category_id", 1), "keypoints": kps, "score": 1.0}
        )
    return pose_metrics(gt, preds, keypoint_set)


def baseline_metrics(train: Path, heldout: Path, pose_eval_dir: Path) -> dict[str, dict[str, Any]]:
    """Baseline metrics per task on the held-out split. `pose_eval_dir` holds the model evaluation's
    `gt_coco.json`, so the pose baseline is scored on exactly the same people and keypoint subset."""
    from eval.metrics.depth import depth_metrics
    from eval.metrics.normal import normal_metrics
    from eval.metrics.pose import infer_subset
    from eval.metrics.seg import seg_metrics

    gt = json.loads((pose_eval_dir / "gt_coco.json").read_text())
    keypoint_set = infer_subset(gt)
    stats = _train_statistics(train, schema.subset_names(keypoint_set))

    seg_pairs, depth_pairs, ramp_pairs, normal_pairs = [], [], [], []
    vocabulary = "goliath28"
    held: list[Sample] = list(iter_samples(str(heldout), policy="skip"))
    for s in held:
        if s.seg is not None:
            vocabulary = s.seg_vocabulary
            seg_pairs.append((s.key, s.seg, np.full_like(s.seg, stats["majority_class"])))
        if s.depth is not None:
            depth_pairs.append((s.key, s.depth, np.ones_like(s.depth)))
            rows = np.arange(1, s.depth.shape[0] + 1, dtype=np.float32)[:, None]
            ramp_pairs.append((s.key, s.depth, np.broadcast_to(rows, s.depth.shape)))
        if s.normal is not None:
            normal_pairs.append((s.key, s.normal, np.broadcast_to(stats["mean_normal"], s.normal.shape)))
    seg_scores = seg_metrics(seg_pairs, vocabulary)
    return {
        "pose": {"method": "mean train pose in each box", **_pose_baseline(gt, keypoint_set, stats)},
        "seg": {
            "method": f"majority class ({schema.vocabulary(vocabulary).classes[stats['majority_class']].name})",
            **seg_scores,
        },
        "depth": {
            "method": "constant depth (the aligned mean)",
            **_strip(depth_metrics(depth_pairs)),
            "vertical_ramp": {"method": "depth = image row, aligned", **_strip(depth_metrics(ramp_pairs))},
        },
        "normal": {
            "method": f"mean train normal {np.round(stats['mean_normal'], 3).tolist()}",
            **normal_metrics(normal_pairs),
        },
    }


def _strip(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "per_image"}
