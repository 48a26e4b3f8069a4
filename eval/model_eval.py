"""The metrics of a checkpoint on held-out shards: `hv eval TASK --checkpoint CKPT --shards GLOB`.

    hv eval pose --checkpoint runs/pose/model.safetensors --shards 'val/*.tar' --out-dir runs/pose/eval flip_test=true
    hv eval seg --checkpoint runs/multi --shards 'val/*.tar' --out-dir runs/multi/eval-seg batch_size=16

The model runs on each sample that carries the task's label (pose: top-down on the ground-truth person
boxes; dense: the whole image), and the same pure metric functions as the file commands score it. OUT_DIR
gets `metrics.json` (the printed object), `config.yaml` (the resolved eval config), `pictures/` (prediction
next to ground truth for the first `pictures` samples) and, for pose, `gt_coco.json` / `pred_coco.json`,
so `hv eval pose --gt ... --pred ...` reproduces the numbers. Bad samples are listed in `bad_samples`
(policy `bad_samples=skip`) or stop the run (`raise`); samples without the label are counted in `skipped`.
"""

from __future__ import annotations

import functools
import json
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from data_engine.coco import gt_annotation, gt_category
from data_engine.sample import LABEL_MEMBER_OF, Sample, decode
from eval.config import EvalConfig, resolve_device
from eval.metrics import MetricInputError
from train.models.tasks import Task

EvalTask = Task


def _samples(shards: list[str], cfg: EvalConfig, report, task: EvalTask) -> Iterator[Sample]:
    """The samples to score, with only `task`'s label and the person mask (pose's OKS area) decoded."""
    from data_engine import shards as shard_io
    from train.models.tasks import TASKS

    labels = (LABEL_MEMBER_OF[TASKS[task].member], LABEL_MEMBER_OF["mask"])
    decoder = functools.partial(decode, labels=labels)
    samples = shard_io.iter_samples(shards, policy=cfg.bad_samples, report=report, decoder=decoder)
    for n, sample in enumerate(samples):
        if cfg.max_samples and n >= cfg.max_samples:
            return
        yield sample


def evaluate_checkpoint(
    task: EvalTask, checkpoint: str, shards: list[str], cfg: EvalConfig, out_dir: str | None = None
) -> dict[str, Any]:
    """Metrics of `task` for the model in `checkpoint` over the samples of `shards` (see the module doc)."""
    from data_engine.shards import ReadReport, ShardError, expand
    from eval.inference import ModelRunner, describe
    from train.models.weights import load_finetuned

    try:
        paths = expand(shards)
    except FileNotFoundError as e:
        raise MetricInputError(str(e)) from None
    loaded = load_finetuned(checkpoint, device="cpu")
    if task not in loaded.tasks:
        raise MetricInputError(f"checkpoint {loaded.path} has no {task} head (its tasks: {', '.join(loaded.tasks)})")
    runner = ModelRunner(loaded, cfg.batch_size, cfg.flip_test, resolve_device(cfg.device))
    report = ReadReport()
    pictures = _PictureWriter(out_dir, cfg.pictures, runner)
    from eval.tasks import EVAL_TASKS

    scorer = EVAL_TASKS[task].scorer_class()(runner, cfg)
    try:
        for sample in _samples(paths, cfg, report, task):
            scorer.add(sample, pictures)
        scorer.flush(pictures)
    except ShardError as e:
        raise MetricInputError(str(e)) from None
    if scorer.count == 0:
        reasons = dict(scorer.skipped) or {"no samples read": report.samples}
        raise MetricInputError(f"no sample in {', '.join(shards)} could be scored for {task}: {reasons}")
    result = scorer.result()
    result.update(
        task=task,
        samples_scored=scorer.count,
        skipped=dict(scorer.skipped),
        bad_samples=[{"shard": b.shard, "key": b.key, "reason": b.reason} for b in report.bad],
        model=describe(runner),
        shards=paths,
    )
    if out_dir:
        from train.config import save_config

        os.makedirs(out_dir, exist_ok=True)
        save_config(cfg, os.path.join(out_dir, "config.yaml"))
        scorer.write_files(out_dir)
        _write_json(os.path.join(out_dir, "metrics.json"), result)
    return result


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


class _PictureWriter:
    """Prediction-vs-ground-truth panels for the first `limit` samples, as OUT_DIR/pictures/{key}.png."""

    def __init__(self, out_dir: str | None, limit: int, runner) -> None:
        self.folder = os.path.join(out_dir, "pictures") if out_dir else None
        self.limit = limit if out_dir else 0
        self.written = 0
        self.runner = runner

    @property
    def wanted(self) -> bool:
        return self.written < self.limit

    def write(self, key: str, pictures: list[np.ndarray], titles: list[str]) -> None:
        from eval.visualize import panel, png_bytes

        assert self.folder is not None
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, f"{key}.png"), "wb") as f:
            f.write(png_bytes(panel(pictures, titles)))
        self.written += 1


class _Scorer(ABC):
    """Accumulates one task's metric state over the samples; `result()` turns it into the metrics dict."""

    def __init__(self, runner, cfg: EvalConfig) -> None:
        self.runner = runner
        self.cfg = cfg
        self.count = 0
        self.skipped: Counter[str] = Counter()
        self.pending: list[Sample] = []

    @abstractmethod
    def add(self, sample: Sample, pictures: _PictureWriter) -> None: ...

    @abstractmethod
    def flush(self, pictures: _PictureWriter) -> None:
        """Score samples held back for batching."""

    @abstractmethod
    def result(self) -> dict[str, Any]: ...

    def write_files(self, out_dir: str) -> list[str]:
        """Extra files beside metrics.json (their paths); the dense tasks have none."""
        return []


class PoseScorer(_Scorer):
    """Builds the COCO ground truth and results of the set, then scores them with `pose_metrics`."""

    def __init__(self, runner, cfg: EvalConfig) -> None:
        super().__init__(runner, cfg)
        self.keypoint_set = runner.keypoint_set
        self.gt: dict[str, Any] = {
            "images": [],
            "annotations": [],
            "categories": [gt_category(self.keypoint_set)],
        }
        self.preds: list[dict[str, Any]] = []

    def add(self, sample: Sample, pictures: _PictureWriter) -> None:
        if sample.pose is None or not sample.pose.persons:
            self.skipped["no pose.json or no person"] += 1
            return
        usable = [p for p in sample.pose.persons if p.bbox[2] > p.bbox[0] and p.bbox[3] > p.bbox[1]]
        if len(usable) < len(sample.pose.persons):
            # A top-down model cannot crop an empty box; the person is not scored, and said so.
            self.skipped["person with an empty box"] += len(sample.pose.persons) - len(usable)
            if not usable:
                return
            sample.pose.persons = usable
        self.pending.append(sample)
        if len(self.pending) >= self.cfg.batch_size:
            self.flush(pictures)

    def flush(self, pictures: _PictureWriter) -> None:
        if not self.pending:
            return
        boxes = [[p.bbox for p in s.pose.persons] for s in self.pending]  # type: ignore[union-attr]
        for sample, predicted in zip(
            self.pending, self.runner.pose_many([s.image for s in self.pending], boxes), strict=True
        ):
            self._score(sample, predicted, pictures)
        self.pending = []

    def _score(self, sample: Sample, predicted: np.ndarray, pictures: _PictureWriter) -> None:
        """Add one sample's ground truth and predictions (N, K, 3) to the COCO sets."""
        from eval.inference import map_keypoints

        assert sample.pose is not None
        image_id = len(self.gt["images"]) + 1
        self.gt["images"].append(
            {"id": image_id, "file_name": sample.key, "width": sample.width, "height": sample.height}
        )
        boxes = [p.bbox for p in sample.pose.persons]
        gt_all = []
        for person, pred in zip(sample.pose.persons, predicted, strict=True):
            kps = map_keypoints(np.asarray(person.keypoints, np.float64), sample.pose.keypoint_set, self.keypoint_set)
            area, area_source = person_area(sample.mask, tuple(float(v) for v in person.bbox))
            annotation = gt_annotation(len(self.gt["annotations"]) + 1, image_id, person.bbox, kps, area, area_source)
            gt_all.append(np.asarray(annotation["keypoints"]).reshape(-1, 3))
            self.gt["annotations"].append(annotation)
            confident = pred[:, 2][pred[:, 2] > self.cfg.keypoint_threshold]
            self.preds.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": pred.astype(np.float64).reshape(-1).tolist(),
                    # mmpose's top-down rule: the mean score of the confident keypoints (box score 1: GT boxes).
                    "score": float(confident.mean()) if confident.size else 0.0,
                }
            )
        self.count += 1
        if pictures.wanted:
            from eval.visualize import display_scale, draw_pose, enlarge

            # Small images are enlarged before drawing, so the skeleton is drawn at the picture's resolution.
            f = display_scale(sample.height)
            big = enlarge(sample.image, f)
            big_boxes = [[v * f for v in b] for b in boxes]
            gt_vis = draw_pose(big, [_scaled(k, f) for k in gt_all], self.keypoint_set, 0.5, big_boxes)
            pred_vis = draw_pose(
                big, [_scaled(k, f) for k in predicted], self.keypoint_set, self.cfg.keypoint_threshold, big_boxes
            )
            pictures.write(sample.key, [gt_vis, pred_vis], ["ground truth", "prediction"])

    def result(self) -> dict[str, Any]:
        from eval.metrics.pose import pose_metrics

        return pose_metrics(self.gt, self.preds, self.keypoint_set)

    def write_files(self, out_dir: str) -> list[str]:
        """The COCO files `hv eval pose --gt --pred` reads, to reproduce or re-slice the numbers."""
        paths = [os.path.join(out_dir, "gt_coco.json"), os.path.join(out_dir, "pred_coco.json")]
        _write_json(paths[0], self.gt)
        _write_json(paths[1], self.preds)
        return paths


def person_area(mask: np.ndarray | None, box: tuple[float, float, float, float]) -> tuple[float, str]:
    """The area that scales a person's OKS, and where it came from.

    COCO uses the person's segmentation area; the box area (COCO's convention for boxes only) is larger and
    makes every keypoint error look smaller (one audit: AP 0.823 with box areas vs 0.708 with mask areas on the
    same predictions). With a `mask.png`, the foreground pixels inside the person's box; else the box area.
    """
    x0, y0, x1, y1 = box
    box_area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
    if mask is None:
        return box_area, "box"
    h, w = mask.shape[:2]
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1, r1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
    pixels = float(np.count_nonzero(mask[r0:r1, c0:c1])) if c1 > c0 and r1 > r0 else 0.0
    if pixels == 0:
        return box_area, "box"  # a mask that misses this person (another one's) says nothing about its size
    return pixels, "mask"


def _scaled(keypoints: np.ndarray, factor: float) -> np.ndarray:
    """(K, 3) keypoints with x, y multiplied by factor (continuous coordinates scale about the origin corner)."""
    out = np.array(keypoints, dtype=np.float64, copy=True)
    out[:, :2] *= factor
    return out


class _DenseScorer(_Scorer):
    task = ""
    member = ""

    def add(self, sample: Sample, pictures: _PictureWriter) -> None:
        if getattr(sample, self.member) is None:
            self.skipped[f"no {self.member}.png"] += 1
            return
        problem = self.check(sample)
        if problem:
            self.skipped[problem] += 1
            return
        self.pending.append(sample)
        if len(self.pending) >= self.cfg.batch_size:
            self.flush(pictures)

    def check(self, sample: Sample) -> str | None:
        return None

    def flush(self, pictures: _PictureWriter) -> None:
        if not self.pending:
            return
        maps = self.runner.dense([s.image for s in self.pending], [self.task])
        for sample, predicted in zip(self.pending, maps, strict=True):
            self.score(sample, predicted[self.task])
            self.count += 1
            if pictures.wanted:
                gt_vis, pred_vis = self.pictures(sample, predicted[self.task])
                pictures.write(sample.key, [sample.image, gt_vis, pred_vis], ["image", "ground truth", "prediction"])
        self.pending = []

    @abstractmethod
    def score(self, sample: Sample, predicted: np.ndarray) -> None: ...

    @abstractmethod
    def pictures(self, sample: Sample, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class SegScorer(_DenseScorer):
    task = member = "seg"

    def __init__(self, runner, cfg: EvalConfig) -> None:
        from data_engine import schema

        super().__init__(runner, cfg)
        self.names = schema.vocabulary(runner.vocabulary).names
        self.confusion = np.zeros((len(self.names), len(self.names)), np.int64)

    def check(self, sample: Sample) -> str | None:
        if sample.seg_vocabulary != self.runner.vocabulary:
            return f"seg vocabulary {sample.seg_vocabulary} (the model predicts {self.runner.vocabulary})"
        return None

    def score(self, sample: Sample, predicted: np.ndarray) -> None:
        from eval.metrics.seg import confusion_matrix

        self.confusion += confusion_matrix(sample.seg, predicted, len(self.names), where=sample.key)

    def pictures(self, sample: Sample, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from eval.visualize import seg_with_legend

        vocab = self.runner.vocabulary
        return seg_with_legend(sample.image, sample.seg, vocab), seg_with_legend(sample.image, predicted, vocab)

    def result(self) -> dict[str, Any]:
        from eval.metrics.seg import scores_from_confusion

        result = scores_from_confusion(self.confusion, self.names)
        result["vocab"] = self.runner.vocabulary
        return result


class DepthScorer(_DenseScorer):
    task = member = "depth"

    def __init__(self, runner, cfg: EvalConfig) -> None:
        super().__init__(runner, cfg)
        self.per_image: dict[str, dict[str, float]] = {}
        self.no_valid: list[str] = []

    def score(self, sample: Sample, predicted: np.ndarray) -> None:
        from eval.metrics.depth import depth_image_metrics

        scores = depth_image_metrics(predicted, sample.depth)
        if scores is None:
            self.no_valid.append(sample.key)
        else:
            self.per_image[sample.key] = scores

    def pictures(self, sample: Sample, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from eval.visualize import colorize_depth

        valid = sample.depth > 0
        return colorize_depth(sample.depth), colorize_depth(predicted, valid=valid)

    def result(self) -> dict[str, Any]:
        from eval.metrics.depth import DEPTH_KEYS

        if not self.per_image:
            raise MetricInputError(f"no valid ground-truth depth pixel (GT > 0) in any of {len(self.no_valid)} samples")
        result: dict[str, Any] = {k: float(np.mean([s[k] for s in self.per_image.values()])) for k in DEPTH_KEYS}
        result.update(images=len(self.per_image), no_valid_pixel=self.no_valid)
        return result


class NormalScorer(_DenseScorer):
    task = member = "normal"

    def __init__(self, runner, cfg: EvalConfig) -> None:
        super().__init__(runner, cfg)
        self.errors: list[np.ndarray] = []

    def score(self, sample: Sample, predicted: np.ndarray) -> None:
        from eval.metrics.normal import angular_errors

        self.errors.append(angular_errors(predicted, sample.normal))

    def pictures(self, sample: Sample, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from eval.visualize import normal_to_rgb

        valid = np.any(sample.normal != 0, axis=-1)
        return normal_to_rgb(sample.normal), normal_to_rgb(predicted * valid[..., None])

    def result(self) -> dict[str, Any]:
        from eval.metrics.normal import summarise_errors

        return summarise_errors(np.concatenate(self.errors))
