"""Typed configs of the model-driven commands: `hv eval TASK --checkpoint`, `hv predict`, `hv export`.

    hv eval pose --checkpoint runs/pose/export --shards 'val/*.tar' --config configs/eval/eval.yaml flip_test=true

Defaults live in the dataclasses, `configs/eval/*.yaml` set values, `key=value` arguments override; an
unknown key or a wrong type fails before any model is loaded (`data_engine.config.load_config`). The resolved
config is saved beside the outputs as `config.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from data_engine.config import ConfigError
from data_engine.curate_config import DetectorConfig
from data_engine.shards import BadSamplePolicy


class Device(str, Enum):
    auto = "auto"  # cuda when available, else cpu
    cpu = "cpu"
    cuda = "cuda"


@dataclass
class EvalConfig:
    batch_size: int = 8  # images (dense) or person crops (pose) per forward pass
    device: Device = Device.auto
    flip_test: bool = False  # average with the mirrored input (pose: flipped heatmaps, channels swapped)
    max_samples: int = 0  # 0 = every sample of the shards
    pictures: int = 8  # prediction-vs-ground-truth pictures written under OUT/pictures
    bad_samples: BadSamplePolicy = BadSamplePolicy.skip  # skip: count and list each bad sample in the output, go on
    keypoint_threshold: float = 0.2  # keypoints under this score do not count in a person's score (mmpose's rule)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_samples < 0 or self.pictures < 0:
            raise ConfigError("max_samples and pictures must be >= 0")
        if not 0 <= self.keypoint_threshold <= 1:
            raise ConfigError(f"keypoint_threshold must be in [0, 1], got {self.keypoint_threshold}")


class BoxSource(str, Enum):
    auto = "auto"  # the --boxes file's entry, else the shard's json.persons (curation detector), else whole image
    detector = "detector"  # run the curation person detector (`detector.*`, as in hv curate)
    image = "image"  # one box: the whole image


@dataclass
class PredictConfig:
    batch_size: int = 8
    device: Device = Device.auto
    flip_test: bool = False
    keypoint_threshold: float = 0.3  # keypoints drawn above this score
    bad_samples: BadSamplePolicy = BadSamplePolicy.skip
    tasks: list[str] = field(default_factory=list)  # empty: every head of the model
    box_source: BoxSource = BoxSource.auto
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    write_maps: bool = True  # seg/depth/normal PNGs in the sample-contract encodings, beside the pictures

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        from train.models.tasks import TASK_NAMES

        bad = [t for t in self.tasks if t not in TASK_NAMES]
        if bad:
            raise ConfigError(f"tasks {bad}: each must be one of {', '.join(TASK_NAMES)}")


def resolve_device(device: Device) -> str:
    import torch

    if device == Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == Device.cuda and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available")
    return device.value
