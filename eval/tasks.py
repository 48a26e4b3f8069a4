"""What eval knows of each task, keyed by the names of `train.models.tasks.TASKS` (one row per task there).

| task   | headline metric | better | from files (`hv eval TASK --gt --pred`) | from a checkpoint (`--checkpoint`) |
|--------|-----------------|--------|-----------------------------------------|------------------------------------|
| pose   | AP              | higher | COCO keypoint AP, Goliath OKS sigmas     | top-down on the GT boxes           |
| seg    | mIoU            | higher | PNG class maps matched by name          | whole image                        |
| depth  | rmse            | lower  | 16-bit mm PNGs, scale-and-shift aligned | whole image                        |
| normal | mean            | lower  | 16-bit RGB normal PNGs, angular error   | whole image                        |

The model side (heads, losses, decoding) is `train.models.tasks`; eval imports train, never the other way
round. The scorers (the checkpoint path: metric state, pictures of prediction next to ground truth) are in
`eval.model_eval`; the trivial baselines the demo reports are in `demo.baselines`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from train.models.tasks import TASK_NAMES, Task


@dataclass(frozen=True)
class EvalTaskDef:
    name: Task
    headline: str  # the metric key a report or the demo shows first
    higher_is_better: bool
    file_metric: str  # "module:function" taking (gt, pred, *options) paths; imported when used
    scorer: str  # "module:class" scoring a checkpoint's predictions sample by sample
    help: str  # `hv eval TASK`'s one line in --help
    file_options: tuple[str, ...] = ()  # `hv eval TASK` options passed to the file metric after gt and pred
    gt_help: str = "folder of ground-truth PNGs"
    pred_help: str = "folder of predicted PNGs with the same file names"

    def metric_function(self) -> Callable[..., dict[str, Any]]:
        return _resolve(self.file_metric)

    def scorer_class(self) -> type:
        return _resolve(self.scorer)


def _resolve(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


_SCORERS = "eval.model_eval"
EVAL_TASKS: dict[Task, EvalTaskDef] = {
    "pose": EvalTaskDef(
        "pose", "AP", True, "eval.metrics.pose:pose_metrics_from_files", f"{_SCORERS}:PoseScorer",
        "COCO keypoint AP/AR with the Goliath OKS sigmas, per group", ("keypoints",),
        gt_help="COCO keypoint ground truth JSON", pred_help="COCO keypoint results JSON",
    ),
    "seg": EvalTaskDef(
        "seg", "mIoU", True, "eval.metrics.seg:seg_metrics_from_files", f"{_SCORERS}:SegScorer",
        "mIoU / mAcc / aAcc over PNG class maps matched by name", ("vocab",),
    ),
    "depth": EvalTaskDef(
        "depth", "rmse", False, "eval.metrics.depth:depth_metrics_from_files", f"{_SCORERS}:DepthScorer",
        "scale-and-shift aligned depth metrics over 16-bit mm PNGs",
    ),
    "normal": EvalTaskDef(
        "normal", "mean", False, "eval.metrics.normal:normal_metrics_from_files", f"{_SCORERS}:NormalScorer",
        "angular error of 16-bit RGB normal PNGs",
    ),
}  # fmt: skip
assert tuple(EVAL_TASKS) == TASK_NAMES, "every task of train.models.tasks needs its eval row"
