"""Fine-tuning for pose, body-part segmentation, depth and normals on one ViT backbone (Sapiens' four tasks).

    hv train finetune --task pose --config configs/finetune/pose_tiny.yaml --out runs/pose \\
        --init runs/pretrain data.shards='out/synth/*.tar' steps=200
    hv train finetune --task multi --config configs/finetune/multi_tiny.yaml --out runs/multi --cpus 2 zero_stage=2
    hv train finetune --task seg --config configs/finetune/seg_sapiens_0.3b.yaml --out RUN --gpus 8   # one node
    # several nodes: the deepspeed launcher with a hostfile runs this module on every rank:
    deepspeed --hostfile hosts --master_addr node0 --master_port 29500 --module train.finetune \\
        --config configs/finetune/seg_sapiens_1b.yaml --out RUN --task seg

The model is `FinetuneModel`: the backbone's `forward_features` (B, C, H/16, W/16) feeds one head per task
(`train.heads`). Batches come from `train.data_finetune` and may mix pose crops with whole-image views; each
head runs only on the rows that carry its targets. Training is `train.engine.fit` (DeepSpeed, checkpoints,
resume, metrics.jsonl, layer-wise LR decay through `backbone.layer_id`); at the end rank 0 writes
`RUN/model.safetensors`, the consolidated fp32 weights with the resolved config inside, which
`train.predictor.Predictor` loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import nn

from train.config import ConfigError, OptimConfig, Schedule, TrainConfig, load_config, save_config
from train.data_finetune import make_batches_fn
from train.data_finetune import write_report as _write_report
from train.heads import TASKS, Task, build_head
from train.losses import heatmap_mse, heatmap_ohkm_mse, normal_loss, silog_loss, weighted_ce


class TaskMode(str, Enum):
    pose = "pose"
    seg = "seg"
    depth = "depth"
    normal = "normal"
    multi = "multi"  # every task in `tasks`, one backbone


@dataclass
class ModelConfig:
    arch: str = "tiny"  # a name of train.models.vit.ARCHS
    image_size: list[int] = field(default_factory=lambda: [1024, 768])  # (H, W): pose crops and dense views
    depth: int | None = None  # override the arch's block count (small test models, as in the pretrain config)
    head_channels: int | None = None  # None: the Sapiens widths (768; 384 for depth)
    drop_path: float = 0.0
    grad_checkpointing: bool = False


@dataclass
class DataConfig:
    shards: str = ""  # files, folders or globs (local or pyarrow.fs URIs), comma-separated (as in pretraining)
    bad_samples: str = "skip"  # "skip": count and report broken samples; "raise": stop at the first
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


@dataclass
class HalfBodyConfig:
    """mmpose RandomHalfBody (Sapiens pose): crop to the upper or lower body's labelled keypoints."""

    prob: float = 0.3  # of a half-body crop, for a person with at least min_keypoints labelled
    min_keypoints: int = 9
    min_upper: int = 2  # a half with fewer labelled keypoints is not chosen (the other one is)
    min_lower: int = 3
    upper_prob: float = 0.7  # upper body preferred when both halves qualify
    padding: float = 1.5  # the half's keypoint box grows by this factor


@dataclass
class PhotometricConfig:
    """Pixel-only augmentation of pose crops (Sapiens: PhotometricDistortion, Blur, MedianBlur, CoarseDropout)."""

    enabled: bool = True
    jitter_prob: float = 0.5  # each of brightness, contrast, saturation, hue
    brightness_delta: float = 32.0  # 0-255 units
    contrast_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    saturation_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    hue_delta: float = 18.0  # degrees
    blur_prob: float = 0.1
    median_blur_prob: float = 0.1
    blur_max_kernel: int = 7  # odd kernels 3..this
    dropout_prob: float = 1.0  # one rectangle set to 0 (albumentations CoarseDropout, one hole)
    dropout_size_range: list[float] = field(default_factory=lambda: [0.2, 0.4])  # of the crop's height and width


@dataclass
class PoseConfig:
    keypoint_set: str = "all"  # the model's keypoints (a data_engine.schema subset); samples map to it by name
    sigma: float = 2.0  # heatmap Gaussian sigma in heatmap pixels (Sapiens: 6 at 256x192)
    bbox_padding: float = 1.25
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    rotation_deg: float = 40.0
    rotation_prob: float = 0.6
    shift: float = 0.1
    flip_prob: float = 0.5
    half_body: HalfBodyConfig = field(default_factory=HalfBodyConfig)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    loss: PoseLoss = PoseLoss.mse
    ohkm_topk: int = 8  # keypoints kept per crop by loss=ohkm (mmpose's default 8; Sapiens-1B: 128 of 308)
    loss_weight: float = 1.0


@dataclass
class DenseAugConfig:
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    rotation_deg: float = 45.0
    rotation_prob: float = 0.5
    shift: float = 0.1
    flip_prob: float = 0.5
    background_prob: float = 0.5


@dataclass
class SegConfig:
    vocabulary: str = "goliath28"  # goliath28 or lip20
    class_weights: bool = True  # the vocabulary's cross-entropy weights
    loss_weight: float = 1.0


@dataclass
class LossWeight:
    loss_weight: float = 1.0


@dataclass
class FinetuneConfig(TrainConfig):
    task: TaskMode = TaskMode.pose
    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # used when task = multi
    init: str | None = None  # a pretrain/fine-tune run folder or a .safetensors file; None: random backbone
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    depth: LossWeight = field(default_factory=LossWeight)
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
            return tuple(t for t in TASKS if t in self.tasks)
        return (self.task.value,)  # type: ignore[return-value]

    def validate(self) -> None:
        super().validate()
        from data_engine import schema
        from train.models.vit import ARCHS

        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ConfigError(f"tasks {list(self.tasks)}: each must be one of {', '.join(TASKS)}")
        if self.model.arch not in ARCHS:
            raise ConfigError(f"model.arch {self.model.arch!r} is not one of {', '.join(ARCHS)}")
        size = list(self.model.image_size)
        if len(size) != 2 or any(v <= 0 or v % 16 for v in size):
            raise ConfigError(f"model.image_size {size} must be [H, W], each a positive multiple of 16")
        if self.data.bad_samples not in ("skip", "raise"):
            raise ConfigError(f"data.bad_samples must be 'skip' or 'raise', got {self.data.bad_samples!r}")
        try:
            schema.subset(self.pose.keypoint_set)
            schema.subset_flip_indices(self.pose.keypoint_set)
            schema.vocabulary(self.seg.vocabulary)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        num_keypoints = len(schema.subset(self.pose.keypoint_set))
        if self.pose.loss == PoseLoss.ohkm and not 1 <= self.pose.ohkm_topk <= num_keypoints:
            raise ConfigError(
                f"pose.ohkm_topk {self.pose.ohkm_topk} must be in [1, {num_keypoints}] (the keypoints of "
                f"pose.keypoint_set={self.pose.keypoint_set}); or set pose.loss=mse"
            )
        for name, pair in (
            ("pose.scale_range", self.pose.scale_range),
            ("augment.scale_range", self.augment.scale_range),
            ("pose.photometric.contrast_range", self.pose.photometric.contrast_range),
            ("pose.photometric.saturation_range", self.pose.photometric.saturation_range),
        ):
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise ConfigError(f"{name} must be [low, high] with 0 < low <= high, got {list(pair)}")
        validate_pose_augmentation(self.pose)


def validate_pose_augmentation(pose: PoseConfig) -> None:
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


# ----------------------------------------------------------------------------------------------- the model


def head_out_channels(cfg: FinetuneConfig, task: Task) -> int:
    from data_engine import schema

    if task == "pose":
        return len(schema.subset(cfg.pose.keypoint_set))
    if task == "seg":
        return len(schema.vocabulary(cfg.seg.vocabulary))
    return 3 if task == "normal" else 1


class FinetuneModel(nn.Module):
    """A backbone with one head per task.

    forward(images (B, 3, H, W), routes {task: (N_t,) row indices} or None) -> {task: head output on those
    rows}; routes None runs every head on every row. Heads: pose (N, K, H/4, W/4) heatmaps, seg (N, C, H/2, W/2)
    logits, depth (N, 1, H, W) positive relative depth, normal (N, 3, H/2, W/2) unnormalised vectors.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def forward(self, images: torch.Tensor, routes: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        features = self.backbone.forward_features(images)  # (B, C, H/16, W/16)
        out = {}
        for task, head in self.heads.items():
            if routes is None:
                out[task] = head(features)
            elif task in routes and len(routes[task]) > 0:
                out[task] = head(features[routes[task]])
        return out


def build_model(cfg: FinetuneConfig) -> FinetuneModel:
    from train.models.vit import build_vit

    overrides = {"depth": cfg.model.depth} if cfg.model.depth else {}
    backbone = build_vit(
        cfg.model.arch,
        img_size=tuple(cfg.model.image_size),
        drop_path=cfg.model.drop_path,
        grad_checkpointing=cfg.model.grad_checkpointing,
        **overrides,
    )
    heads = {
        task: build_head(task, backbone.embed_dim, head_out_channels(cfg, task), cfg.model.head_channels)
        for task in cfg.active_tasks
    }
    return FinetuneModel(backbone, heads)


# ------------------------------------------------------------------------------------------ initialisation


@dataclass
class InitReport:
    source: str
    loaded: list[str]  # backbone parameter names filled from the file
    missing: list[str]  # backbone parameters the file lacks (left at their random init)
    unexpected: list[str]  # file entries that look like backbone weights but fit no parameter
    ignored: list[str]  # other entries (an MAE decoder, heads of another task)
    resized: list[str]  # position embeddings resampled to this run's token grid

    def summary(self) -> str:
        return (
            f"init from {self.source}: {len(self.loaded)} backbone tensors loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.ignored)} ignored (not backbone), "
            f"{len(self.resized)} resized"
        )


# Where backbone weights sit in the files we know: a bare ViT, MAE (`encoder.`), a fine-tuned model (`backbone.`).
_BACKBONE_PREFIXES = ("backbone.", "encoder.", "")
# Run-folder weight files in order of preference: a fine-tuning export, then `hv train export-weights` outputs.
_RUN_WEIGHT_FILES = ("model.safetensors", "weights.safetensors", "encoder.safetensors")


def resolve_weights_file(path: str) -> str:
    """A .safetensors file, or the export inside a run folder. Raises FileNotFoundError naming what was looked for."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r}: no such weights file or run folder")
    for name in _RUN_WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(
        f"{path!r}: no {' / '.join(_RUN_WEIGHT_FILES)} in the run folder; export it (hv train export-weights {path})"
    )


def read_init_state(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str]:
    """(state dict, the run's config as a dict or None, source name) from a safetensors file, a run folder, or a
    foreign torch file (.pt/.pth/.bin/.ckpt, read tensors-only: nothing in it is unpickled freely).

    A run folder without an export is consolidated in memory from its newest checkpoint (any ZeRO stage).
    """
    import yaml

    from train.export import TORCH_FILE_SUFFIXES, consolidated_state_dict, read_torch_state_dict, read_weights

    try:
        file = resolve_weights_file(path)
    except FileNotFoundError:
        if not os.path.isdir(os.path.join(path, "checkpoints")):
            raise
        config_path = os.path.join(path, "config.yaml")
        config = None
        if os.path.isfile(config_path):
            with open(config_path) as f:
                config = yaml.safe_load(f)
        return consolidated_state_dict(path), config, f"{path} (newest checkpoint)"
    if not file.endswith(TORCH_FILE_SUFFIXES):
        state, _ = read_weights(file)
        return state, read_embedded_config(file), file
    return read_torch_state_dict(file), None, file


def load_init(model: FinetuneModel, path: str, include_heads: bool = True) -> InitReport:
    """Fill the backbone (and, from a fine-tuned file, the heads that fit) from an export or a run folder.

    The backbone is loaded strictly: a missing or misshapen backbone weight raises ValueError naming the source
    and the file's arch (usually a `model.arch` / `model.depth` that differs from the pretraining run's).
    Position embeddings stored for another token grid are resampled (bicubic) to this model's grid.
    """
    from train.models.layers import resize_pos_embed

    state, source_cfg, source = read_init_state(path)
    own = model.backbone.state_dict()
    prefix = max(_BACKBONE_PREFIXES, key=lambda p: sum(k[len(p) :] in own for k in state if k.startswith(p)))
    backbone_state: dict[str, torch.Tensor] = {}
    head_state: dict[str, torch.Tensor] = {}
    ignored, unexpected, resized = [], [], []
    for key, value in state.items():
        in_backbone = key.startswith(prefix) if prefix else not key.startswith(("heads.", "decoder", "mask_token"))
        if in_backbone:
            name = key[len(prefix) :]
            if name in own:
                backbone_state[name] = value
            else:
                unexpected.append(key)
        elif key.startswith("heads.") and include_heads:
            head_state[key[len("heads.") :]] = value
        else:
            ignored.append(key)
    if not backbone_state:
        raise ValueError(f"init {source}: no backbone weights found (looked for keys under {_BACKBONE_PREFIXES})")
    pos = backbone_state.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape:
        grid = _grid_of(pos.shape[1], source_cfg, source)
        backbone_state["pos_embed"] = resize_pos_embed(pos, grid, model.backbone.grid)
        resized.append("pos_embed")
    missing = sorted(set(own) - set(backbone_state))
    misshapen = [n for n, v in backbone_state.items() if v.shape != own[n].shape]
    if missing or unexpected or misshapen:
        arch = (source_cfg or {}).get("model", {})
        raise ValueError(
            f"init {source}: backbone does not match (missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}, misshapen {misshapen[:4]}); the source was arch={arch.get('arch')} "
            f"depth={arch.get('depth')}: set model.arch / model.depth to match"
        )
    model.backbone.load_state_dict(backbone_state, strict=True)
    head_own = model.heads.state_dict()
    fitting = {k: v for k, v in head_state.items() if k in head_own and v.shape == head_own[k].shape}
    ignored += [f"heads.{k}" for k in head_state if k not in fitting]
    if fitting:
        model.heads.load_state_dict(fitting, strict=False)
    return InitReport(source, sorted(backbone_state), missing, unexpected, ignored, resized)


def _grid_of(tokens: int, cfg: dict[str, Any] | None, source: str) -> tuple[int, int]:
    """The token grid a stored position embedding was made for: from the source's config, else square."""
    model_cfg = (cfg or {}).get("model", {}) or {}
    size = model_cfg.get("img_size") or model_cfg.get("image_size")
    if size and (size[0] // 16) * (size[1] // 16) == tokens:
        return size[0] // 16, size[1] // 16
    side = round(tokens**0.5)
    if side * side != tokens:
        raise ValueError(f"init {source}: position embedding of {tokens} tokens has no known grid (not square)")
    return side, side


def read_embedded_config(file: str) -> dict[str, Any] | None:
    """The resolved config stored in a safetensors header (`config` metadata) or in a YAML beside it."""
    import yaml
    from safetensors import safe_open

    try:
        with safe_open(file, framework="pt") as f:
            text = (f.metadata() or {}).get("config")
    except Exception:
        text = None
    if text is None:
        for beside in (os.path.splitext(file)[0] + ".yaml", os.path.join(os.path.dirname(file), "config.yaml")):
            if os.path.isfile(beside):
                with open(beside) as fh:
                    text = fh.read()
                break
    return yaml.safe_load(text) if text else None


# ------------------------------------------------------------------------------------------------ the loss


def task_losses(
    model: nn.Module, batch: dict[str, torch.Tensor], cfg: FinetuneConfig, class_weight: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
    """The weighted sum of the task losses on one batch, and per-task figures for the metrics.

    Every task of the run gets a `loss_{task}` and `rows_{task}` entry, 0 when the batch has none of its rows:
    the engine averages the figures over ranks key by key, so every rank must report the same keys. The losses
    stay device tensors (the engine sums them where they live and reads them once per logged step), and each
    head's output is cast to fp32 first: a bf16 model's losses are computed in fp32.
    """
    tasks = cfg.active_tasks
    routes = {t: batch[f"{t}_index"] for t in tasks if f"{t}_index" in batch}
    # A head with no row in this batch still runs on row 0, its output times 0: every parameter then gets a
    # (zero) gradient through an ordinary module call, which ZeRO's gradient partitioning (and, at stage 3,
    # its parameter gathering) expects. One extra row through a head costs little next to the backbone.
    absent = [t for t in tasks if t not in routes]
    first_row = torch.zeros(1, dtype=torch.long, device=batch["image"].device)
    outputs = model(batch["image"], {**routes, **{t: first_row for t in absent}})
    weights = {"pose": cfg.pose.loss_weight, "seg": cfg.seg.loss_weight}
    weights |= {"depth": cfg.depth.loss_weight, "normal": cfg.normal.loss_weight}
    total = batch["image"].new_zeros((), dtype=torch.float32)
    logs: dict[str, float | torch.Tensor] = {}
    for task in tasks:
        logs[f"rows_{task}"] = float(len(routes[task])) if task in routes else 0.0  # a shape: no device read
        pred = outputs[task].float()
        if task in absent:
            total = total + pred.sum() * 0.0
            logs[f"loss_{task}"] = 0.0
            continue
        if task == "pose" and cfg.pose.loss == PoseLoss.ohkm:
            loss = heatmap_ohkm_mse(pred, batch["pose_heatmaps"], batch["pose_weights"], cfg.pose.ohkm_topk)
        elif task == "pose":
            loss = heatmap_mse(pred, batch["pose_heatmaps"], batch["pose_weights"])
        elif task == "seg":
            loss = weighted_ce(pred, batch["seg"], class_weight)
        elif task == "depth":
            loss = silog_loss(pred, batch["depth"], batch["depth_mask"])
        else:
            loss = normal_loss(pred, batch["normal"], batch["normal_mask"])
        logs[f"loss_{task}"] = loss.detach()
        total = total + weights[task] * loss
    return total, logs


# ---------------------------------------------------------------------------------------------- the batches


def data_params(cfg: FinetuneConfig):
    """(LabelSpec, TopDownParams, DenseParams) of a config."""
    from train.data_finetune import LabelSpec
    from train.transforms.dense import DenseParams
    from train.transforms.photometric import PhotometricParams
    from train.transforms.pose import TopDownParams

    size = (int(cfg.model.image_size[0]), int(cfg.model.image_size[1]))
    spec = LabelSpec(tasks=cfg.active_tasks, keypoint_set=cfg.pose.keypoint_set, seg_vocabulary=cfg.seg.vocabulary)
    p, hb, ph = cfg.pose, cfg.pose.half_body, cfg.pose.photometric
    photometric = None
    if ph.enabled:
        photometric = PhotometricParams(
            jitter_prob=ph.jitter_prob, brightness_delta=ph.brightness_delta,
            contrast_range=(ph.contrast_range[0], ph.contrast_range[1]),
            saturation_range=(ph.saturation_range[0], ph.saturation_range[1]), hue_delta=ph.hue_delta,
            blur_prob=ph.blur_prob, median_blur_prob=ph.median_blur_prob, blur_max_kernel=ph.blur_max_kernel,
            dropout_prob=ph.dropout_prob, dropout_size_range=(ph.dropout_size_range[0], ph.dropout_size_range[1]),
        )  # fmt: skip
    pose = TopDownParams(
        input_size=size, sigma=p.sigma, bbox_padding=p.bbox_padding, scale_range=(p.scale_range[0], p.scale_range[1]),
        rotation_deg=p.rotation_deg, rotation_prob=p.rotation_prob, shift=p.shift, flip_prob=p.flip_prob,
        half_body_prob=hb.prob, half_body_min_keypoints=hb.min_keypoints, half_body_min_upper=hb.min_upper,
        half_body_min_lower=hb.min_lower, half_body_upper_prob=hb.upper_prob, half_body_padding=hb.padding,
        photometric=photometric,
    )  # fmt: skip
    a = cfg.augment
    dense = DenseParams(
        input_size=size, scale_range=(a.scale_range[0], a.scale_range[1]), rotation_deg=a.rotation_deg,
        rotation_prob=a.rotation_prob, shift=a.shift, flip_prob=a.flip_prob, background_prob=a.background_prob,
    )  # fmt: skip
    return spec, pose, dense


# ------------------------------------------------------------------------------------------------- the run


def run(cfg: FinetuneConfig, out_dir: str):
    """Train and export; returns the engine's FitResult. Every rank calls this (the launcher starts them)."""
    from data_engine import schema
    from train.engine import fit

    if not cfg.data.shard_patterns():
        raise ConfigError("data.shards is empty: name the training shards (data.shards='out/*.tar,more/')")
    os.makedirs(out_dir, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        save_config(cfg, os.path.join(out_dir, "config.yaml"))
    class_weight = None
    if "seg" in cfg.active_tasks and cfg.seg.class_weights:
        class_weight = torch.from_numpy(schema.vocabulary(cfg.seg.vocabulary).weights())

    def build() -> FinetuneModel:
        model = build_model(cfg)
        if cfg.init:
            report = load_init(model, cfg.init)
            if rank == 0:
                print(f"[finetune] {report.summary()}", file=sys.stderr)
        return model

    def loss_fn(engine: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        weight = None if class_weight is None else class_weight.to(batch["image"].device)
        return task_losses(engine, batch, cfg, weight)

    # ZeRO-3 without init: the engine builds the model inside deepspeed.zero.Init (never whole in memory).
    # With init the weights are loaded into a whole model first, which DeepSpeed then partitions.
    model = build if cfg.zero_stage == 3 and not cfg.init else build()
    report_path = os.path.join(out_dir, "data_report.json")
    reports: list = []
    result = fit(model, loss_fn, make_batches_fn(cfg, report_path, reports), cfg, out_dir)
    if rank == 0 and reports:
        _write_report(report_path, reports[-1])
        print(f"[finetune] data: {reports[-1].summary()} (details: {report_path})", file=sys.stderr)
    if result.checkpoint is not None:
        import torch.distributed as dist

        from train.export import export_weights

        if rank == 0:  # the format of `hv train export-weights`: fp32 weights, the resolved config in the header
            tag = os.path.basename(result.checkpoint)
            export_weights(out_dir, os.path.join(out_dir, "model.safetensors"), tag=tag, part="full")
        if dist.is_initialized():
            dist.barrier()
    return result


# ------------------------------------------------------------------------------------ launcher entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Per-rank entry (`python -m train.finetune` / `deepspeed --module train.finetune`)."""
    parser = argparse.ArgumentParser(prog="train.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--task", choices=[m.value for m in TaskMode])
    parser.add_argument("--init")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    cfg = load_finetune_config(args.config, args.overrides, task=args.task, init=args.init)
    result = run(cfg, args.out)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[finetune] done: step {result.step}, loss {result.last_loss}, checkpoint {result.checkpoint}")
    return 0


def load_finetune_config(
    path: str | None, overrides: Sequence[str] = (), task: str | None = None, init: str | None = None
) -> FinetuneConfig:
    """The config file, then --task / --init, then key=value overrides (which win)."""
    extra = []
    if task is not None:
        extra.append(f"task={task}")
    if init is not None:
        extra.append(f"init={init}")
    return load_config(FinetuneConfig, path, [*extra, *overrides])


if __name__ == "__main__":
    sys.exit(main())
