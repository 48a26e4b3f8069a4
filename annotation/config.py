"""`hv annotate` settings: a typed dataclass (the schema), `configs/annotation/default.yaml` (values),
and `key=value` words on the command line (overrides). An unknown key fails at start-up.

    hv annotate pull --project people-pose --out runs/annotated batch_size=200 seg_overlap=smallest
    hv annotate push shards/*.tar --project people-pose --task pose --config configs/annotation/default.yaml

Command-line flags (--url, --keypoints, --vocab, --media-root) win over the YAML; `key=value` words win over
both, as in every stage. The API key is not a setting: it comes from LABEL_STUDIO_API_KEY only, so a saved
config can never leak it. Loading, saving and `ConfigError` are every stage's (`data_engine.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from annotation.convert import SegOverlap
from data_engine import schema
from data_engine.config import ConfigError as ConfigError
from data_engine.config import load_config as load_typed_config
from data_engine.shards import BadSamplePolicy


class LaunchMode(str, Enum):
    in_process = "in-process"  # one rank in the `hv train finetune` process (CPU or one GPU)
    cpus = "cpus"  # `processes` local CPU ranks (gloo) through the deepspeed launcher
    gpus = "gpus"  # `processes` local GPUs through the deepspeed launcher


@dataclass
class LoopConfig:
    """`hv annotate loop`: pull -> fine-tune -> pre-annotate; the fine-tuning is `hv train finetune`'s own."""

    finetune_config: str = "configs/finetune/pose_tiny.yaml"  # its model settings are replaced by the checkpoint's
    finetune_overrides: list[str] = field(default_factory=list)  # key=value words for it, e.g. [steps=200]
    launch: LaunchMode = LaunchMode.in_process
    processes: int = 1  # ranks for launch=cpus / gpus
    device: str = "cpu"  # where the new model predicts the unlabelled tasks
    keypoint_threshold: float = 0.3  # heatmap peak below: a keypoint left for the annotator
    loop_after: int = 0  # `hv annotate backend`: start a cycle after this many new annotations; 0 = never


@dataclass
class AnnotateConfig:
    url: str = ""  # empty: LABEL_STUDIO_URL
    media_root: str = ""  # empty: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (the folder the server serves)
    keypoint_set: str = "all"  # a data_engine.schema subset: all (308), coco17, body+feet+hands, ...
    vocabulary: schema.VocabularyName = "goliath28"
    batch_size: int = 500  # tasks or predictions per request: 500 x 308 keypoints stays well under 200 MB
    page_size: int = 100  # tasks per page when reading a project back
    timeout_s: float = 120.0  # per request; a big import batch on a busy SQLite server takes seconds
    seg_overlap: SegOverlap = "last"  # last: later brush regions cover earlier ones; smallest: smaller cover larger
    bad_samples: BadSamplePolicy = BadSamplePolicy.skip  # skip: listed in the report with its reason
    shard_max_count: int = 1000  # samples per annotated shard written by pull
    loop: LoopConfig = field(default_factory=LoopConfig)

    def validate(self) -> None:
        try:
            schema.subset(self.keypoint_set)
        except ValueError as e:
            raise ConfigError(f"keypoint_set: {e}") from None
        for name in ("batch_size", "page_size", "shard_max_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.loop.processes < 1 or self.loop.loop_after < 0:
            raise ConfigError("loop.processes must be at least 1 and loop.loop_after at least 0")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s}")


def load_config(path: str | None = None, overrides: list[str] | None = None, **flags: Any) -> AnnotateConfig:
    """Defaults <- YAML file <- flags (None = not given) <- `key=value` overrides; validated."""
    return load_typed_config(AnnotateConfig, path, overrides, flags, what="annotate config")
