"""The tasks, described once. Fine-tuning, prediction, eval, the report and the demo iterate over `TASKS`.

| task   | rows                 | head (deconv x2, 1x1 convs, width) | output                      | loss            |
|--------|----------------------|------------------------------------|-----------------------------|-----------------|
| pose   | one crop per person  | 2, 2, 768                          | K heatmaps at 1/4 the input | heatmap MSE     |
| seg    | one whole-image view | 3, 3, 768                          | C logits at 1/2             | weighted CE     |
| depth  | one whole-image view | 4, 2, 384                          | 1 positive depth at 1/1     | SiLog           |
| normal | one whole-image view | 3, 3, 768                          | 3 raw vectors at 1/2        | L1 + (1 - cos)  |

A `TaskDef` says what the model side needs: the head's shape and output channels, the batch arrays its loss
reads, the loss, and how a raw head output becomes a prediction (activation and the un-mirroring of Sapiens'
flip test). What eval needs (the metric, the trivial baseline, the picture) is in `eval.tasks`, keyed by the
same names: eval imports train, never the other way round.

This module imports no torch at load time (numpy only), so configs and command lines can check task names cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from train.models.spec import ModelSpec

Task = Literal["pose", "seg", "depth", "normal"]
RowKind = Literal["topdown", "dense"]


@dataclass(frozen=True)
class HeadSpec:
    """The shape of one head: how many x2 deconvolutions, how many 1x1 convs after them, the default width, and
    whether the output is made positive (softplus)."""

    num_deconv: int
    num_conv: int
    channels: int  # default width at the sapiens sizes
    positive: bool = False

    @property
    def output_stride(self) -> int:
        """Input pixels per output pixel: 16 / 2^num_deconv (4 for pose, 2 for seg/normal, 1 for depth)."""
        return 16 // (2**self.num_deconv)


@dataclass(frozen=True)
class LossInputs:
    """What a loss needs beyond the prediction and the batch: the run's loss options."""

    pose_ohkm_topk: int | None = None  # None: plain heatmap MSE; k: MSE over each crop's k hardest keypoints
    pose_foreground_weight: float = 0.0  # heatmap pixels weighted 1 + this * target (0: the plain MSE)
    class_weight: torch.Tensor | None = None  # seg: per-class cross-entropy weights
    depth_silog_lambda: float = 0.5  # the SiLog loss's lambda (1: blind to each image's depth scale)
    depth_log_offset: float = 0.0  # added to target and prediction before the SiLog loss's log (0: the paper's)
    depth_loss: str = "silog"  # "silog" (the paper's) or "ssi" (shift-and-scale-invariant L1, MiDaS)
    depth_grad_weight: float = 0.0  # weight of MiDaS's gradient matching term added to the depth loss (0: off)


@dataclass(frozen=True)
class TaskDef:
    name: Task
    member: str  # the `data_engine.sample.Sample` attribute carrying its label (pose.json, seg.png, ...)
    rows: RowKind  # topdown: one crop per labelled person; dense: one whole-image view per sample
    head: HeadSpec
    targets: tuple[str, ...]  # batch arrays the loss reads (the first one marks a row that carries the task)
    out_channels: Callable[[ModelSpec], int]
    loss: Callable[[torch.Tensor, dict[str, torch.Tensor], LossInputs], torch.Tensor]
    # prediction: the head's raw output (N, C, h, w) -> what is averaged and resampled (probabilities, unit vectors)
    activate: Callable[[torch.Tensor], torch.Tensor]
    # flip test: an activated output of the mirrored input -> the same in the input's frame (flip: the keypoint or
    # class mirror permutation); `combine` then merges it with the output of the input itself
    unflip: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    description: str
    # dense tasks: a whole-image view (`train.transforms.dense.DenseItem`) -> this task's targets, or None when
    # the view lacks its label; top-down targets come from the crop itself (`train.transforms.pose.topdown_item`)
    view_targets: Callable[[Any], dict[str, np.ndarray] | None] | None = None
    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda a, b: 0.5 * (a + b)
    # dense prediction: the activated output resampled at an image's pixel centres (C, H, W) and the 2x2 rotation
    # from the model's view back to the image -> named maps at the image's size (`DensePrediction.maps`)
    to_image: Callable[[torch.Tensor, np.ndarray], dict[str, np.ndarray]] | None = None


def _pose_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor], inputs: LossInputs) -> torch.Tensor:
    from train.losses import heatmap_mse, heatmap_ohkm_mse

    target, weight, foreground = batch["pose_heatmaps"], batch["pose_weights"], inputs.pose_foreground_weight
    if inputs.pose_ohkm_topk is not None:
        return heatmap_ohkm_mse(pred, target, weight, inputs.pose_ohkm_topk, foreground)
    return heatmap_mse(pred, target, weight, foreground)


def _seg_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor], inputs: LossInputs) -> torch.Tensor:
    from train.losses import weighted_ce

    return weighted_ce(pred, batch["seg"], inputs.class_weight)


def _depth_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor], inputs: LossInputs) -> torch.Tensor:
    from train.losses import gradient_matching_loss, silog_loss, ssi_loss

    target, mask = batch["depth"], batch["depth_mask"]
    if inputs.depth_loss == "ssi":
        loss = ssi_loss(pred, target, mask)
    else:
        loss = silog_loss(pred, target, mask, lam=inputs.depth_silog_lambda, offset=inputs.depth_log_offset)
    if inputs.depth_grad_weight:
        loss = loss + inputs.depth_grad_weight * gradient_matching_loss(pred, target, mask)
    return loss


def _normal_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor], inputs: LossInputs) -> torch.Tensor:
    from train.losses import normal_loss

    return normal_loss(pred, batch["normal"], batch["normal_mask"])


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return x.softmax(1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.normalize(x, dim=1)


def _mean_direction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _unit(a + b)


def _unflip_channels(mirrored: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
    """Mirror x back and give each channel its mirror partner's map (keypoints, classes)."""
    out = mirrored.flip(-1)
    return out if flip is None else out[:, flip.to(out.device)]


def _unflip_vectors(mirrored: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
    """Mirror x back; a camera-space normal's x component changes sign under a horizontal flip."""
    out = mirrored.flip(-1).clone()
    out[:, 0] = -out[:, 0]
    return out


def _seg_targets(view: Any) -> dict[str, np.ndarray] | None:
    return None if view.seg is None else {"seg": view.seg}


def _depth_targets(view: Any) -> dict[str, np.ndarray] | None:
    if view.depth is None or view.depth_mask is None:
        return None
    return {"depth": view.depth, "depth_mask": view.depth_mask}


def _normal_targets(view: Any) -> dict[str, np.ndarray] | None:
    if view.normal is None or view.normal_mask is None:
        return None
    return {"normal": np.ascontiguousarray(view.normal.transpose(2, 0, 1)), "normal_mask": view.normal_mask}


def _class_map(probs: torch.Tensor, turn: np.ndarray) -> dict[str, np.ndarray]:
    best, ids = probs.max(0)
    return {"seg": ids.cpu().numpy().astype(np.uint8), "seg_probs": best.cpu().numpy()}


def _depth_map(depth: torch.Tensor, turn: np.ndarray) -> dict[str, np.ndarray]:
    return {"depth": depth[0].cpu().numpy()}


def _normal_map(normal: torch.Tensor, turn: np.ndarray) -> dict[str, np.ndarray]:
    """Unit normals (H, W, 3), their (x, y) turned back by the view's rotation (the fit view has none)."""
    out = _unit(normal[None])[0].permute(1, 2, 0).cpu().numpy()
    out[..., :2] = out[..., :2] @ turn.T.astype(np.float32)
    return {"normal": out.astype(np.float32)}


def _keypoints(spec: ModelSpec) -> int:
    from data_engine import schema

    return len(schema.subset(spec.keypoint_set))


def _classes(spec: ModelSpec) -> int:
    from data_engine import schema

    return len(schema.vocabulary(spec.vocabulary))


TASKS: dict[Task, TaskDef] = {
    "pose": TaskDef(
        name="pose", member="pose", rows="topdown", head=HeadSpec(2, 2, 768), targets=("pose_heatmaps", "pose_weights"),
        out_channels=_keypoints, loss=_pose_loss, activate=_identity, unflip=_unflip_channels,
        description="K keypoint heatmaps at 1/4 the input",
    ),
    "seg": TaskDef(
        name="seg", member="seg", rows="dense", head=HeadSpec(3, 3, 768), targets=("seg",),
        out_channels=_classes, loss=_seg_loss, activate=_softmax, unflip=_unflip_channels,
        description="class logits at 1/2 the input", view_targets=_seg_targets, to_image=_class_map,
    ),
    "depth": TaskDef(
        name="depth", member="depth", rows="dense", head=HeadSpec(4, 2, 384, positive=True),
        targets=("depth", "depth_mask"),
        out_channels=lambda spec: 1, loss=_depth_loss, activate=_identity, unflip=_unflip_channels,
        description="positive relative depth at the input's size", view_targets=_depth_targets, to_image=_depth_map,
    ),
    "normal": TaskDef(
        name="normal", member="normal", rows="dense", head=HeadSpec(3, 3, 768), targets=("normal", "normal_mask"),
        out_channels=lambda spec: 3, loss=_normal_loss, activate=_unit, unflip=_unflip_vectors, combine=_mean_direction,
        description="camera-space normal vectors at 1/2 the input", view_targets=_normal_targets,
        to_image=_normal_map,
    ),
}  # fmt: skip
TASK_NAMES: tuple[Task, ...] = tuple(TASKS)
DENSE_TASKS: tuple[Task, ...] = tuple(t for t, d in TASKS.items() if d.rows == "dense")


def task_def(name: Any) -> TaskDef:
    """The TaskDef of `name`; ValueError naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


def output_stride(task: Task) -> int:
    """Input pixels per output pixel of `task`'s head."""
    return task_def(task).head.output_stride
