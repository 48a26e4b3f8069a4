"""`hv annotate` settings: a typed dataclass (the schema), `configs/annotation/default.yaml` (values),
and `key=value` words on the command line (overrides). An unknown key fails at start-up.

    hv annotate pull --project people-pose --out runs/annotated batch_size=200 seg_overlap=smallest
    hv annotate push shards/*.tar --project people-pose --task pose --config configs/annotation/default.yaml

Command-line flags (--url, --keypoints, --vocab, --media-root) win over both. The API key is not a
setting: it comes from LABEL_STUDIO_API_KEY only, so a saved config can never leak it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from annotation.errors import AnnotationError
from data_engine import schema


class SegOverlapMode(str, Enum):
    last = "last"  # later brush regions cover earlier ones, as drawn on screen
    smallest = "smallest"  # smaller regions cover larger ones


class BadSampleMode(str, Enum):
    skip = "skip"  # record the sample and its reason in the report, go on
    raise_ = "raise"  # stop at the first bad sample


@dataclass
class AnnotateConfig:
    url: str = ""  # empty: LABEL_STUDIO_URL
    media_root: str = ""  # empty: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (the folder the server serves)
    keypoint_set: str = "all"  # a data_engine.schema subset: all (308), coco17, body+feet+hands, ...
    vocabulary: str = "goliath28"  # goliath28 | lip20
    batch_size: int = 500  # tasks or predictions per request: 500 x 308 keypoints stays well under 200 MB
    page_size: int = 100  # tasks per page when reading a project back
    timeout_s: float = 120.0  # per request; a big import batch on a busy SQLite server takes seconds
    seg_overlap: SegOverlapMode = SegOverlapMode.last
    bad_samples: BadSampleMode = BadSampleMode.skip
    shard_max_count: int = 1000  # samples per annotated shard written by pull


def load_config(path: str | None = None, overrides: list[str] | None = None) -> AnnotateConfig:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(AnnotateConfig)
    try:
        if path:
            if not Path(path).is_file():
                raise AnnotationError(f"config file {path} does not exist")
            base = OmegaConf.merge(base, OmegaConf.load(path))
        bad = [o for o in overrides or [] if "=" not in o]
        if bad:
            raise AnnotationError(f"overrides must be key=value, got {bad}")
        base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides or [])))
    except OmegaConfBaseException as e:
        where = f" in {path}" if path else ""
        key = getattr(e, "full_key", None)
        named = f" (key {key})" if key else ""
        raise AnnotationError(f"bad annotate config{where}{named}: {str(e).splitlines()[0]}") from None
    config: AnnotateConfig = OmegaConf.to_object(base)  # type: ignore[assignment]
    check_config(config)
    return config


def check_config(config: AnnotateConfig) -> None:
    try:
        schema.subset(config.keypoint_set)
        schema.vocabulary(config.vocabulary)
    except ValueError as e:
        raise AnnotationError(str(e)) from None
    for name in ("batch_size", "page_size", "shard_max_count"):
        if getattr(config, name) < 1:
            raise AnnotationError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.timeout_s <= 0:
        raise AnnotationError(f"timeout_s must be positive, got {config.timeout_s}")


def config_dict(config: AnnotateConfig) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(config).items()}


def save_config(config: AnnotateConfig, path: Path) -> None:
    from omegaconf import OmegaConf

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(config_dict(config))))
    tmp.replace(path)
