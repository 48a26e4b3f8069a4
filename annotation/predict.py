"""Pre-annotations: Label Studio predictions (with score and model_version) for pushed tasks, so that
annotators correct instead of starting from nothing.

    hv annotate predict 'runs/synth/*.tar' --project people-pose --task pose --model-version synth-v1

By default the labels come from the shards themselves (`pose.json` / `seg.png`: synthetic renders, or a
model's output written as shards). A model plugs in as a `Predictor`, a function from a Sample to a
`Prediction` (a Pose over any keypoint subset and/or an (H, W) uint8 class map, and a score), or None
to skip the sample:

    def my_model(sample: Sample) -> Prediction | None:
        heatmaps = net(preprocess(sample.image))
        return Prediction(pose=decode_heatmaps(heatmaps), score=float(confidence))

    predict(studio, paths, "people-pose", "pose", config, model_version="sapiens-0.3b-ep40", predictor=my_model)

Idempotent per model version: a task that already holds a prediction of `model_version` is skipped; with
`only_unlabelled`, so is a task an annotator has finished (`hv annotate loop` pre-annotates only the rest).
Samples whose key has no task in the project are recorded (push them first), not silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotation import convert, labeling
from annotation.client import Studio
from annotation.config import AnnotateConfig
from annotation.errors import AnnotationError
from annotation.push import project_kind
from data_engine import schema, shards
from data_engine.sample import PersonPose, Pose, Sample


@dataclass
class Prediction:
    pose: Pose | None = None
    seg: np.ndarray | None = None  # (H, W) uint8 class ids of the project's vocabulary, 255 = none
    score: float = 1.0


Predictor = Callable[[Sample], "Prediction | None"]


def labels_from_sample(sample: Sample) -> Prediction | None:
    """The default predictor: the labels the shard already holds."""
    if sample.pose is None and sample.seg is None:
        return None
    return Prediction(pose=sample.pose, seg=sample.seg, score=1.0)


def remap_pose(pose: Pose, keypoint_set: str) -> Pose:
    """The same persons over another keypoint subset, matched by keypoint name; missing ones get v = 0."""
    if pose.keypoint_set == keypoint_set:
        return pose
    source = {int(g): row for row, g in enumerate(schema.subset(pose.keypoint_set))}
    target = schema.subset(keypoint_set)
    persons = []
    for person in pose.persons:
        kp = np.zeros((len(target), 3), dtype=np.float32)
        for row, g in enumerate(target):
            if int(g) in source:
                kp[row] = person.keypoints[source[int(g)]]
        persons.append(PersonPose(bbox=person.bbox, keypoints=kp))
    return Pose(keypoint_set=keypoint_set, persons=persons)


@dataclass
class PredictReport:
    project_id: int = 0
    samples: int = 0
    created: int = 0
    already_there: int = 0
    labelled: int = 0  # with only_unlabelled: tasks passed over because an annotator finished them
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {shard, key, reason}

    def summary(self) -> str:
        return (
            f"project {self.project_id}: {self.samples} samples read, {self.created} predictions created, "
            f"{self.already_there} already there, {len(self.skipped)} skipped"
            + (f", {self.labelled} already labelled" if self.labelled else "")
        )


def prediction_results(prediction: Prediction, task: labeling.TaskType, task_data: dict, sample: Sample) -> list[dict]:
    if task == "pose":
        if prediction.pose is None:
            raise ValueError("the predictor gave no pose")
        return convert.pose_to_results(
            remap_pose(prediction.pose, task_data["keypoint_set"]), sample.width, sample.height
        )
    if prediction.seg is None:
        raise ValueError("the predictor gave no segmentation")
    vocabulary = task_data.get("vocabulary", "goliath28")
    if prediction.seg is sample.seg and sample.seg_vocabulary != vocabulary:
        raise ValueError(f"the shard's seg is {sample.seg_vocabulary}, the project uses {vocabulary}")
    if prediction.seg.shape != (sample.height, sample.width):
        raise ValueError(f"seg of shape {prediction.seg.shape} for a {sample.width}x{sample.height} image")
    return convert.seg_to_results(prediction.seg, vocabulary)


def predict(
    studio: Studio,
    shard_paths: list[str],
    title: str,
    task: labeling.TaskType,
    config: AnnotateConfig,
    model_version: str,
    predictor: Predictor = labels_from_sample,
    progress: bool = True,
    only_unlabelled: bool = False,
) -> PredictReport:
    from tqdm import tqdm

    if task not in ("pose", "seg"):
        raise AnnotationError(f"pre-annotation is for pose or seg projects, not {task}")
    files = shards.expand(shard_paths)
    studio.check()
    project = studio.require_project(title)
    report = PredictReport(project_id=int(project["id"]))
    kind = project_kind(project.get("label_config", ""))
    if kind != task:
        raise AnnotationError(f"project {title!r} is a {kind} project, not {task}")

    tasks: dict[str, tuple[int, dict]] = {}
    has_version: set[int] = set()
    labelled: set[int] = set()
    for t in studio.iter_tasks(report.project_id, with_annotations=True, page_size=config.page_size):
        tasks[str(t["data"].get("key"))] = (int(t["id"]), t["data"])
        if only_unlabelled and any(not a.get("was_cancelled") for a in t.get("annotations", [])):
            labelled.add(int(t["id"]))
        if any(_model_version(p) == model_version for p in t.get("predictions", [])):
            has_version.add(int(t["id"]))

    read = shards.ReadReport()
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        if batch:
            created = studio.import_predictions(report.project_id, batch)
            report.created += created
            if created < len(batch):
                # Label Studio answers 200 and drops results it finds invalid; never let that pass unseen.
                report.skipped.append(
                    {"key": None, "reason": f"Label Studio created only {created} of {len(batch)} predictions"}
                )
            batch.clear()

    for sample in tqdm(
        shards.iter_samples(files, policy=config.bad_samples, report=read), desc="predict", disable=not progress
    ):
        report.samples += 1
        if sample.key not in tasks:
            report.skipped.append({"key": sample.key, "reason": f"no task in project {title!r}: push it first"})
            continue
        task_id, task_data = tasks[sample.key]
        if task_id in labelled:
            report.labelled += 1
            continue
        if task_id in has_version:
            report.already_there += 1
            continue
        prediction = predictor(sample)
        if prediction is None:
            report.skipped.append({"key": sample.key, "reason": "no labels to pre-annotate with"})
            continue
        try:
            result = prediction_results(prediction, task, task_data, sample)
        except (ValueError, KeyError) as e:
            report.skipped.append({"key": sample.key, "reason": str(e)})
            continue
        has_version.add(task_id)
        # Label Studio 1.23 answers 200 but creates nothing for a score outside [0, 1] (seen with raw heatmap
        # peaks of an early model): clamp it.
        score = min(max(float(prediction.score), 0.0), 1.0)
        batch.append({"task": task_id, "result": result, "score": score, "model_version": model_version})
        if len(batch) >= config.batch_size:
            flush()
    flush()
    report.skipped.extend({"shard": b.shard, "key": b.key, "reason": b.reason} for b in read.bad)
    return report


def _model_version(prediction: Any) -> str | None:
    return prediction.get("model_version") if isinstance(prediction, dict) else None
