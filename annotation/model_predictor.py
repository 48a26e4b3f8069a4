"""Pre-annotations from a fine-tuned checkpoint: `hv annotate predict SHARDS --checkpoint RUN ...`.

    hv annotate predict 'runs/curated/shards/*.tar' --project people-pose --task pose \
        --checkpoint runs/finetune/model.safetensors --model-version pose-tiny-v1

A `train.predictor.Predictor` wrapped as the `annotation.predict.Predictor` plug-in: one sample in, one
`Prediction` out. Pose is top-down on the person boxes curation recorded in `json.persons` (the whole
image when there are none); keypoints whose heatmap peak is under `keypoint_threshold`, or that fall off
the image, are left unplaced (v = 0) so annotators add them rather than correct noise; v = 2 otherwise.
A person's score, and the prediction's, is the mean peak of its placed keypoints (Label Studio sorts
tasks by it). Segmentation is the model's class map at the image's own size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from annotation.predict import Prediction
from data_engine.sample import PersonPose, Pose, Sample


def person_boxes(sample: Sample) -> np.ndarray:
    """(N, 4) xyxy boxes: the detector's persons from curation, else the whole image."""
    boxes = [p["bbox"] for p in sample.meta.get("persons", []) if isinstance(p, dict) and len(p.get("bbox", [])) == 4]
    if not boxes:
        boxes = [[0.0, 0.0, float(sample.width), float(sample.height)]]
    return np.asarray(boxes, dtype=np.float32)


def checkpoint_version(checkpoint: str) -> str:
    """A model version naming the run: `finetune-pose` for runs/finetune-pose/model.safetensors."""
    path = Path(checkpoint).resolve()
    return path.parent.name if path.is_file() else path.name


def load_model(checkpoint: str, device: str = "cpu"):
    """A `train.predictor.Predictor` for `checkpoint` (a run folder or model.safetensors)."""
    from train.predictor import Predictor as ModelPredictor

    return ModelPredictor(checkpoint, device=device)


def model_predictor(
    checkpoint: str,
    task: Literal["pose", "seg"],
    device: str = "cpu",
    keypoint_threshold: float = 0.3,
):
    """A `Sample -> Prediction` function backed by the fine-tuned model in `checkpoint`.

    Raises ValueError naming the checkpoint when it has no head for `task`.
    """
    model = load_model(checkpoint, device)
    if task not in model.tasks:
        raise ValueError(f"checkpoint {checkpoint} has no {task} head (its tasks: {', '.join(model.tasks)})")
    return predictor_for(model, task, keypoint_threshold)


def predictor_for(model, task: Literal["pose", "seg", "bbox"], keypoint_threshold: float = 0.3):
    """The `Sample -> Prediction` function of a loaded model for one task. bbox: the pose head's people, each
    box the extent of its placed keypoints (the model has no detector head)."""
    keypoint_set = model.spec.keypoint_set if task in ("pose", "bbox") else ""

    def predict_pose(sample: Sample) -> Prediction:
        boxes = person_boxes(sample)
        found = model.pose([sample.image], [boxes])[0]
        persons, person_scores = [], []
        for box, xy, scores in zip(found.boxes, found.keypoints, found.scores, strict=True):
            inside = (xy[:, 0] >= 0) & (xy[:, 0] <= sample.width) & (xy[:, 1] >= 0) & (xy[:, 1] <= sample.height)
            placed = (scores >= keypoint_threshold) & inside  # an annotator cannot drag a point off the image
            kp = np.zeros((len(scores), 3), dtype=np.float32)
            kp[:, :2] = xy
            kp[:, 2] = np.where(placed, 2.0, 0.0)
            kp[~placed, :2] = 0.0
            persons.append(PersonPose(bbox=tuple(float(v) for v in box), keypoints=kp))  # type: ignore[arg-type]
            person_scores.append(float(scores[placed].mean()) if placed.any() else 0.0)
        return Prediction(pose=Pose(keypoint_set, persons), score=float(np.mean(person_scores)))

    def predict_boxes(sample: Sample) -> Prediction:
        pose = predict_pose(sample)
        assert pose.pose is not None
        persons = []
        for person in pose.pose.persons:
            placed = person.keypoints[person.keypoints[:, 2] > 0, :2]
            if len(placed) == 0:
                continue
            (x0, y0), (x1, y1) = placed.min(axis=0), placed.max(axis=0)
            box = (float(x0), float(y0), float(max(x1, x0 + 1.0)), float(max(y1, y0 + 1.0)))
            persons.append(PersonPose(bbox=box, keypoints=np.zeros_like(person.keypoints)))
        return Prediction(pose=Pose(keypoint_set, persons), score=pose.score)

    def predict_seg(sample: Sample) -> Prediction:
        dense = model.dense([sample.image], tasks=["seg"])[0]
        assert dense.seg is not None and dense.seg_probs is not None
        return Prediction(seg=dense.seg, score=float(dense.seg_probs.mean()))

    return {"pose": predict_pose, "bbox": predict_boxes, "seg": predict_seg}[task]
