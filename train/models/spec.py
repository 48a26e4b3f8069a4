"""`ModelSpec`: what a fine-tuned checkpoint stores about its model, and all that a consumer needs to use it.

    spec = ModelSpec(arch="tiny", image_size=(256, 192), tasks=("pose",), keypoint_set="coco17")
    model = build_model(spec)                                  # train.models.multitask
    spec.to_json() -> '{"arch": "tiny", ...}'                   # the `model_spec` entry of a safetensors header

A fine-tuning config (`train.finetune_config.FinetuneConfig`) holds the run's data, optimiser and DeepSpeed
settings too; prediction, eval, export and annotation need none of those, and a checkpoint must stay loadable
when they change shape. Files written before the spec existed carry only the whole resolved config:
`ModelSpec.from_config_dict` reads the model's part of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from train.models.tasks import TASK_NAMES, Task


class SpecError(ValueError):
    """A model spec that cannot describe a model; the message names the field."""


@dataclass(frozen=True)
class ModelSpec:
    arch: str  # a name of train.models.vit.ARCHS
    image_size: tuple[int, int]  # (H, W) of the model's input: pose crops and dense views
    tasks: tuple[Task, ...]  # one head each, in TASKS order
    depth: int | None = None  # the arch's block count overridden (small test models)
    head_channels: int | None = None  # None: the Sapiens widths (TaskDef.head.channels)
    keypoint_set: str = "all"  # pose: a data_engine.schema subset, in the heatmaps' channel order
    vocabulary: str = "goliath28"  # seg: the class vocabulary, in the logits' channel order
    pose_sigma: float = 2.0  # heatmap Gaussian sigma (heatmap pixels) it was trained with: sets the decoding blur
    bbox_padding: float = 1.25  # a person box grows by this factor before its crop (as in training)
    # Arch details a checkpoint implies beyond the arch name (e.g. the ViT's `patch_padding`: 2 in Sapiens' pose
    # models), passed to `train.models.backbones.build_backbone`.
    backbone_options: dict[str, Any] = field(default_factory=dict)
    # Per task, the head's layout when it is not this package's default (`train.models.heads.build_head`
    # options, e.g. {"style": "sapiens_v1", ...} for a converted Sapiens head).
    head_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from data_engine import schema
        from train.models.backbones import arch_names

        if self.arch not in arch_names():
            raise SpecError(f"model.arch {self.arch!r} is not one of {', '.join(arch_names())}")
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or any(v <= 0 or v % 16 for v in size):
            raise SpecError(f"model.image_size {list(self.image_size)} must be [H, W], each a positive multiple of 16")
        object.__setattr__(self, "image_size", size)
        unknown_heads = sorted(set(self.head_options) - set(self.tasks))
        if unknown_heads:
            raise SpecError(f"model head_options name tasks the model does not have: {unknown_heads}")
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown or not self.tasks:
            raise SpecError(f"tasks {list(self.tasks)}: each must be one of {', '.join(TASK_NAMES)}")
        object.__setattr__(self, "tasks", tuple(t for t in TASK_NAMES if t in self.tasks))
        try:
            schema.subset(self.keypoint_set)
            schema.vocabulary(self.vocabulary)
        except ValueError as e:
            raise SpecError(str(e)) from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpecError(f"model spec has unknown fields {unknown}")
        values = dict(raw)
        values["image_size"] = tuple(values.get("image_size") or ())
        values["tasks"] = tuple(values.get("tasks") or ())
        try:
            return cls(**values)
        except TypeError as e:  # a required field missing
            raise SpecError(f"model spec: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"model spec is not JSON ({e})") from None
        if not isinstance(raw, dict):
            raise SpecError(f"model spec must be a JSON object, got {type(raw).__name__}")
        return cls.from_dict(raw)

    @classmethod
    def from_config_dict(cls, cfg: Mapping[str, Any]) -> ModelSpec:
        """The model part of a fine-tuning config as a plain dict (a `config.yaml`, or the `config` entry of a
        checkpoint written before `model_spec` existed). Keys the spec does not need are not read."""
        model = cfg.get("model") or {}
        pose = cfg.get("pose") or {}
        seg = cfg.get("seg") or {}
        task = cfg.get("task", "pose")
        task = getattr(task, "value", task)
        tasks: Sequence[str] = (cfg.get("tasks") or TASK_NAMES) if task == "multi" else (task,)
        return cls(
            arch=str(model.get("arch", "tiny")),
            image_size=tuple(model.get("image_size") or (1024, 768)),  # type: ignore[arg-type]
            tasks=tuple(tasks),  # type: ignore[arg-type]
            depth=model.get("depth"),
            head_channels=model.get("head_channels"),
            keypoint_set=str(pose.get("keypoint_set", "all")),
            vocabulary=str(getattr(seg.get("vocabulary"), "value", seg.get("vocabulary")) or "goliath28"),
            pose_sigma=float(pose.get("sigma", 2.0)),
            bbox_padding=float(pose.get("bbox_padding", 1.25)),
            backbone_options=dict(model.get("backbone_options") or {}),
            head_options={k: dict(v) for k, v in (model.get("head_options") or {}).items()},
        )

    def out_channels(self, task: Task) -> int:
        from train.models.tasks import task_def

        return task_def(task).out_channels(self)
