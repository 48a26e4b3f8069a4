"""The fine-tuning config: `hv train finetune --config FILE key=value ...` (configs/finetune/*.yaml).

    cfg = load_finetune_config("configs/finetune/pose_tiny.yaml", ["steps=20"], task="pose")
    cfg.model_spec()      # the ModelSpec its checkpoint stores (train.models.spec)
    cfg.active_tasks      # ("pose",); for task=multi, the listed tasks in TASKS order

Sections: `model` (arch and input size), `data` (shards, loader), one per task (`pose`, `seg`, `depth`,
`normal`: targets, augmentation and loss weight), `augment` (whole-image views), plus the engine's
`TrainConfig` keys (steps, batch size, precision, ZeRO stage, `optim`, `deepspeed`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from data_engine.shards import BadSamplePolicy
from train.config import ConfigError, OptimConfig, Schedule, TrainConfig, load_config
from train.models.spec import ModelSpec
from train.models.tasks import TASK_NAMES, LossInputs, Task
from train.transforms.dense import DenseAugConfig
from train.transforms.pose import TopDownAugment

# One value per task of TASKS, and `multi`: every task in `tasks`, on one backbone.
TaskMode = Enum("TaskMode", {**{t: t for t in TASK_NAMES}, "multi": "multi"}, type=str)  # type: ignore[misc]


class Vocabulary(str, Enum):
    goliath28 = "goliath28"
    lip20 = "lip20"
    sapiens2_29 = "sapiens2_29"


@dataclass
class ModelConfig:
    arch: str = "tiny"  # a name of train.models.vit.ARCHS
    image_size: list[int] = field(default_factory=lambda: [1024, 768])  # (H, W): pose crops and dense views
    depth: int | None = None  # override the arch's block count (small test models, as in the pretrain config)
    head_channels: int | None = None  # None: the Sapiens widths (768; 384 for depth)
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    # Arch details beyond the name, and non-default head layouts: what a converted checkpoint's ModelSpec holds
    # (`backbone_options`, `head_options`); set from `--init` when it names such a checkpoint.
    backbone_options: dict[str, Any] = field(default_factory=dict)
    head_options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DataConfig:
    shards: str = ""  # files, folders or globs (local or pyarrow.fs URIs), comma-separated (as in pretraining)
    bad_samples: BadSamplePolicy = BadSamplePolicy.skip  # skip: count and report broken samples; raise: stop
    shuffle_buffer: int = 64
    num_workers: int = 0  # loader processes per rank making rows (augmentation); 0 = in the training process
    background_shards: str = ""  # shards of images pasted behind people, comma-separated; empty: random fields
    max_backgrounds: int = 256  # how many background images are held in memory

    def shard_patterns(self) -> list[str]:
        return _patterns(self.shards)

    def background_patterns(self) -> list[str]:
        return _patterns(self.background_shards)


def _patterns(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


class PoseLoss(str, Enum):
    mse = "mse"  # heatmap MSE over every labelled keypoint (Sapiens 0.3b/0.6b/2b)
    ohkm = "ohkm"  # the same over each crop's `ohkm_topk` hardest labelled keypoints (Sapiens 1b, topk 128)


class DepthLoss(str, Enum):
    silog = "silog"  # scale-invariant log loss on min-max normalised depth (Sapiens; `silog_lambda`, `log_offset`)
    ssi = "ssi"  # shift-and-scale-invariant L1 (MiDaS): only the depth's shape, as relative-depth evaluation scores


@dataclass
class PoseConfig(TopDownAugment):
    """Top-down pose: the crop, target and augmentation settings (`TopDownAugment`), the keypoints and the loss."""

    keypoint_set: str = "all"  # the model's keypoints (a data_engine.schema subset); samples map to it by name
    loss: PoseLoss = PoseLoss.mse
    ohkm_topk: int = 8  # keypoints kept per crop by loss=ohkm (mmpose's default 8; Sapiens-1B: 128 of 308)
    # Heatmap pixels weighted 1 + this * target (`train.losses.heatmap_mse`): 0 is the Sapiens MSE; the CPU demo's
    # short runs use 20, which learns the same keypoints in fewer steps.
    foreground_weight: float = 0.0
    loss_weight: float = 1.0


@dataclass
class SegConfig:
    vocabulary: Vocabulary = Vocabulary.goliath28
    class_weights: bool = True  # the vocabulary's cross-entropy weights
    loss_weight: float = 1.0


@dataclass
class LossWeight:
    loss_weight: float = 1.0


@dataclass
class DepthConfig:
    # The SiLog loss's lambda (`train.losses.silog_loss`): 0.5 is the Sapiens/Eigen value; 1 makes the loss blind
    # to each image's global depth scale (with log_offset 0), as relative-depth evaluation (scale-and-shift
    # aligned) is.
    silog_lambda: float = 0.5
    # Added to the min-max normalised target and to the prediction before the loss's log (`silog_loss`): 0 is the
    # paper's loss, whose log puts most of the weight on the few pixels nearest the camera; 1 weighs the person's
    # pixels about evenly (the demo's short runs; benchmarks/RESULTS.md).
    log_offset: float = 0.0
    # `ssi`: the MiDaS loss. Depth-only on the validation subjects it gave RMSE 0.1373 against 0.1409 (silog with
    # offset 1); in the demo's multi-task runs 0.1403 against 0.1391-0.1396 (benchmarks/RESULTS.md).
    loss: DepthLoss = DepthLoss.silog
    # MiDaS's multi-scale gradient matching term (`train.losses.gradient_matching_loss`), added to either loss with
    # this weight (0: off; MiDaS uses 0.5 with ssi): it asks for the local depth steps where a limb passes in front
    # of the body, not only the tilted plane that most of a view's depth spread is. In the demo's multi-task runs
    # on the validation subjects, ssi with 0.5 gave RMSE 0.1488 against 0.1506 without (benchmarks/RESULTS.md).
    grad_weight: float = 0.0
    loss_weight: float = 1.0


@dataclass
class FinetuneConfig(TrainConfig):
    task: TaskMode = TaskMode.pose  # type: ignore[valid-type]
    tasks: list[str] = field(default_factory=lambda: list(TASK_NAMES))  # used when task = multi (TASKS names)
    init: str | None = None  # a pretrain/fine-tune run folder or a .safetensors file; None: random backbone
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    normal: LossWeight = field(default_factory=LossWeight)
    augment: DenseAugConfig = field(default_factory=DenseAugConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=5e-4, betas=[0.9, 0.999], weight_decay=0.1, layer_decay=0.85, schedule=Schedule.poly
        )
    )

    @property
    def active_tasks(self) -> tuple[Task, ...]:
        if self.task == TaskMode.multi:
            return tuple(t for t in TASK_NAMES if t in self.tasks)
        return (self.task.value,)  # type: ignore[return-value]

    def model_spec(self) -> ModelSpec:
        """What the checkpoint of this run stores about its model."""
        return ModelSpec(
            arch=self.model.arch, image_size=(int(self.model.image_size[0]), int(self.model.image_size[1])),
            tasks=self.active_tasks, depth=self.model.depth, head_channels=self.model.head_channels,
            keypoint_set=self.pose.keypoint_set, vocabulary=self.seg.vocabulary.value,
            pose_sigma=self.pose.sigma, bbox_padding=self.pose.bbox_padding,
            backbone_options=dict(self.model.backbone_options),
            head_options={t: dict(o) for t, o in self.model.head_options.items() if t in self.active_tasks},
        )  # fmt: skip

    def loss_weight(self, task: Task) -> float:
        """The task section's `loss_weight`; 1 for a task without a section of its own."""
        return float(getattr(getattr(self, task, None), "loss_weight", 1.0))

    def loss_inputs(self, class_weight=None) -> LossInputs:
        ohkm = self.pose.ohkm_topk if self.pose.loss == PoseLoss.ohkm else None
        return LossInputs(
            pose_ohkm_topk=ohkm,
            pose_foreground_weight=self.pose.foreground_weight,
            class_weight=class_weight,
            depth_silog_lambda=self.depth.silog_lambda,
            depth_log_offset=self.depth.log_offset,
            depth_loss=self.depth.loss.value,
            depth_grad_weight=self.depth.grad_weight,
        )

    def validate(self) -> None:
        super().validate()
        from data_engine import schema
        from train.models.spec import SpecError

        if not self.tasks or any(t not in TASK_NAMES for t in self.tasks):
            raise ConfigError(f"tasks {list(self.tasks)}: each must be one of {', '.join(TASK_NAMES)}")
        try:
            self.model_spec()
            schema.subset_flip_indices(self.pose.keypoint_set)
        except (SpecError, ValueError) as e:
            raise ConfigError(str(e)) from None
        _validate_own_head_options(self.model.head_options)
        num_keypoints = len(schema.subset(self.pose.keypoint_set))
        if self.pose.loss == PoseLoss.ohkm and not 1 <= self.pose.ohkm_topk <= num_keypoints:
            raise ConfigError(
                f"pose.ohkm_topk {self.pose.ohkm_topk} must be in [1, {num_keypoints}] (the keypoints of "
                f"pose.keypoint_set={self.pose.keypoint_set}); or set pose.loss=mse"
            )
        if not (math.isfinite(self.pose.foreground_weight) and self.pose.foreground_weight >= 0):
            weight = self.pose.foreground_weight
            raise ConfigError(f"pose.foreground_weight must be a finite number >= 0 (0: the plain MSE), got {weight}")
        if not 0 <= self.depth.silog_lambda <= 1:  # also refuses nan
            raise ConfigError(f"depth.silog_lambda must be in [0, 1] (0.5: Sapiens), got {self.depth.silog_lambda}")
        if not (math.isfinite(self.depth.log_offset) and self.depth.log_offset >= 0):
            offset = self.depth.log_offset
            raise ConfigError(f"depth.log_offset must be a finite number >= 0 (0: Sapiens), got {offset}")
        if not (math.isfinite(self.depth.grad_weight) and self.depth.grad_weight >= 0):
            weight = self.depth.grad_weight
            raise ConfigError(f"depth.grad_weight must be a finite number >= 0 (0: off), got {weight}")
        for name, pair in (
            ("pose.scale_range", self.pose.scale_range),
            ("augment.scale_range", self.augment.scale_range),
            ("pose.photometric.contrast_range", self.pose.photometric.contrast_range),
            ("pose.photometric.saturation_range", self.pose.photometric.saturation_range),
        ):
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise ConfigError(f"{name} must be [low, high] with 0 < low <= high, got {list(pair)}")
        validate_pose_augmentation(self.pose)


# The options of this package's own head style (`train.models.heads._default_head`); other styles check theirs.
_OWN_HEAD_KEYS = ("style", "num_deconv", "num_conv", "width", "patch_size")


def _validate_own_head_options(head_options: dict[str, dict[str, Any]]) -> None:
    """Start-up errors naming the key for `model.head_options` of this package's head style, which would
    otherwise fail in each rank's model build with a bare TypeError."""
    for task, options in head_options.items():
        if options.get("style", "humanvision") != "humanvision":
            continue
        unknown = sorted(set(options) - set(_OWN_HEAD_KEYS))
        if unknown:
            raise ConfigError(f"model.head_options.{task}: unknown keys {unknown} (known: {', '.join(_OWN_HEAD_KEYS)})")
        for key in ("num_deconv", "num_conv", "width"):
            value = options.get(key)
            minimum = 1 if key == "width" else 0
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
                raise ConfigError(f"model.head_options.{task}.{key} must be an integer >= {minimum}, got {value!r}")


def validate_pose_augmentation(pose: TopDownAugment) -> None:
    hb, ph = pose.half_body, pose.photometric
    probabilities = {"pose.half_body.prob": hb.prob, "pose.half_body.upper_prob": hb.upper_prob}
    probabilities |= {"pose.photometric.jitter_prob": ph.jitter_prob, "pose.photometric.blur_prob": ph.blur_prob}
    probabilities |= {"pose.photometric.median_blur_prob": ph.median_blur_prob}
    probabilities |= {"pose.photometric.dropout_prob": ph.dropout_prob}
    for name, value in probabilities.items():
        if not 0 <= value <= 1:
            raise ConfigError(f"{name} must be a probability in [0, 1], got {value}")
    if min(hb.min_keypoints, hb.min_upper, hb.min_lower) < 1 or hb.padding <= 0:
        raise ConfigError("pose.half_body: min_keypoints, min_upper and min_lower must be >= 1, padding > 0")
    if ph.blur_max_kernel < 3 or ph.blur_max_kernel % 2 == 0:
        raise ConfigError(f"pose.photometric.blur_max_kernel must be odd and >= 3, got {ph.blur_max_kernel}")
    size = list(ph.dropout_size_range)
    if len(size) != 2 or not 0 < size[0] <= size[1] <= 1:
        raise ConfigError(f"pose.photometric.dropout_size_range must be [low, high] in (0, 1], got {size}")
    if ph.brightness_delta < 0 or not 0 <= ph.hue_delta <= 180:
        raise ConfigError("pose.photometric: brightness_delta must be >= 0 and hue_delta in [0, 180] degrees")


def load_finetune_config(
    path: str | None, overrides: Sequence[str] = (), task: str | None = None, init: str | None = None
) -> FinetuneConfig:
    """The config file, then --task / --init, then key=value overrides (which win).

    When the init file's header holds a ModelSpec (a converted Sapiens checkpoint, a fine-tuned model), the
    model's arch, depth, backbone_options and, for the tasks both have, head_options come from it unless the
    config file or an override sets them: the user need not know a converted model's patch padding or head layout.
    """
    extra = []
    if task is not None:
        extra.append(f"task={task}")
    if init is not None:
        extra.append(f"init={init}")
    cfg = load_config(FinetuneConfig, path, [*extra, *overrides])
    inherited = _model_from_init(cfg, path, overrides)
    return load_config(FinetuneConfig, path, [*extra, *overrides], flags=inherited) if inherited else cfg


_INHERITED_MODEL_KEYS = ("arch", "depth", "backbone_options", "head_options")


def _model_from_init(cfg: FinetuneConfig, path: str | None, overrides: Sequence[str]) -> dict[str, Any]:
    """`model.*` flags taken from the init file's ModelSpec: those that neither the file nor an override sets."""
    if not cfg.init:
        return {}
    from train.models.spec import SpecError
    from train.models.weights import header_model_spec, resolve_weights_file

    try:
        file = resolve_weights_file(cfg.init)
        spec = header_model_spec(file)
    except (FileNotFoundError, SpecError):
        return {}  # the init check names a missing file; a bad spec surfaces when the init is loaded
    explicit = _explicit_model_keys(path, overrides)
    if spec is not None:
        values = {
            "arch": spec.arch,
            "depth": spec.depth,
            "backbone_options": dict(spec.backbone_options),
            "head_options": {t: dict(o) for t, o in spec.head_options.items() if t in cfg.active_tasks},
        }
    else:  # a converted backbone-only file (Sapiens2 pretrain) names its arch in a `backbone_spec` entry
        from train.models.convert_sapiens2 import backbone_spec

        try:
            backbone = backbone_spec(file)
        except Exception:  # a foreign torch file (.pth): no header to read
            backbone = None
        if not backbone:
            return {}
        values = {"arch": backbone.get("arch"), "backbone_options": dict(backbone.get("backbone_options") or {})}
    return {f"model.{k}": v for k, v in values.items() if k not in explicit and v not in (None, {})}


def _explicit_model_keys(path: str | None, overrides: Sequence[str]) -> set[str]:
    """Which of the inherited `model` keys the config file or the overrides set."""
    import yaml

    keys: set[str] = set()
    if path:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        model = raw.get("model") if isinstance(raw, dict) else None
        keys |= set(model) if isinstance(model, dict) else set()
    for item in overrides:
        parts = item.partition("=")[0].strip().split(".")
        if parts[0] == "model":
            keys |= set(_INHERITED_MODEL_KEYS) if len(parts) == 1 else {parts[1]}
    return keys & set(_INHERITED_MODEL_KEYS)
