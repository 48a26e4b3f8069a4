"""Typed configuration of `hv curate`: defaults here, YAML in configs/curate/, `key=value` on the command line.

    hv curate photos/ --out runs/curated --config configs/curate/default.yaml quality.min_short_side=512

`load_config` merges, in order: these dataclass defaults, the YAML file, the command-line flags (inputs, `--out`,
`--detector`, `--ray-address`) and the `key=value` overrides. An unknown key or a value of the wrong type is an
error at start-up (`data_engine.config.load_config`), never a silently ignored setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from data_engine.config import ConfigError as ConfigError
from data_engine.config import load_config as load_typed_config
from data_engine.config import to_dict
from data_engine.config import to_yaml as to_yaml


class DetectorName(str, Enum):
    none = "none"  # no detection: every image that passes quality is a candidate
    hog = "hog"  # OpenCV's built-in HOG + linear SVM people detector (offline, weak)
    onnx = "onnx"  # an ONNX person detector (YOLO-style output) loaded from `detector.weights`


class OnnxLayout(str, Enum):
    """How the ONNX model's single output is laid out (the two common YOLO export formats).

    yolov5: (N, A, 5 + C) rows of [cx, cy, w, h, objectness, class_0 .. class_{C-1}]; score = obj * class
    yolov8: (N, 4 + C, A) columns of [cx, cy, w, h, class_0 .. class_{C-1}];          score = class
    Coordinates are in pixels of the letterboxed `S x S` network input.
    """

    yolov5 = "yolov5"
    yolov8 = "yolov8"


# (score_threshold, record_threshold) when the config leaves them unset.
DEFAULT_THRESHOLDS = {DetectorName.none: (0.0, 0.0), DetectorName.hog: (0.5, 0.0), DetectorName.onnx: (0.9, 0.25)}

IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".jfif", ".pgm", ".ppm"]


@dataclass
class DecodeConfig:
    # Pillow's own default limit (89.5 MP, ~0.25 GB of RGB); larger images are rejected as `too_many_pixels`
    # from the header alone, before any pixel is decoded. Pillow itself refuses anything over twice its limit.
    max_pixels: int = 89_478_485
    # Quality figures, the perceptual hash and detection run on a copy whose long side is at most this; JPEGs
    # are decoded straight at a reduced scale (libjpeg DCT scaling) when that is enough, which is ~2x faster.
    analysis_max_side: int = 640
    # Folders contribute files with these extensions (case-insensitive); globs and list files contribute
    # exactly what they name.
    extensions: list[str] = field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    # Only images whose bytes cannot be kept (EXIF rotation, a non-RGB mode, a format other than JPEG/PNG)
    # are re-encoded: JPEG sources as JPEG at this quality, everything else as PNG.
    reencode_jpeg_quality: int = 95


@dataclass
class QualityConfig:
    min_short_side: int = 256  # pixels, after EXIF orientation
    min_aspect: float = 0.25  # width / height
    max_aspect: float = 4.0
    # Variance of the Laplacian of the grey analysis copy: sharp photos score hundreds, defocused ones < 20.
    min_blur: float = 20.0
    max_clipped: float = 0.6  # fraction of grey pixels at 0 or 255 (blown out or crushed)
    min_contrast: float = 8.0  # grey-level standard deviation; below it the image is near-uniform


@dataclass
class DetectorConfig:
    """The person filter. Batches go to a pool of Ray actors, each holding one detector."""

    # hog is the default because it needs no weights file; it is weak (see README): use onnx where you can.
    name: DetectorName = DetectorName.hog
    weights: str = ""  # local path of the ONNX model (detector `onnx`)
    onnx_layout: OnnxLayout = OnnxLayout.yolov5
    onnx_input_size: int = 640  # the network's square input side, when the model does not fix it
    person_class: int = 0  # COCO's person
    # An image is kept when at least one box has score >= score_threshold and height >= min_height (pixels of
    # the original image). Sapiens used 0.9 and 300 px. None: the backend's default (DEFAULT_SCORE_THRESHOLD):
    # HOG's scores are raw SVM margins (about -1 to 3), not probabilities.
    score_threshold: Optional[float] = None  # noqa: UP045 (OmegaConf reads typing.Optional, not `X | None`)
    min_height: float = 300.0
    # Boxes at or above this score are recorded in json.persons (None: the backend's default).
    record_threshold: Optional[float] = None  # noqa: UP045
    nms_iou: float = 0.45
    # Ray actor pool: `concurrency` actors, each holding one detector, fed batches of `batch_size` images.
    batch_size: int = 8
    concurrency: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    hog_win_stride: int = 8
    hog_scale: float = 1.05

    def thresholds(self) -> tuple[float, float]:
        """(score_threshold, record_threshold) with the backend defaults filled in."""
        score, record = DEFAULT_THRESHOLDS[self.name]
        score = score if self.score_threshold is None else self.score_threshold
        record = record if self.record_threshold is None else self.record_threshold
        return score, min(record, score)


@dataclass
class DedupConfig:
    near: bool = True  # also drop near-duplicates (perceptual hash), not only byte-identical files
    # Hamming distance between 64-bit DCT perceptual hashes at or below which two images are one photo.
    # Measured: resized / re-encoded copies 0-2, 2% crops 2-8, 4% crops up to 14; different photos 28+, but
    # aligned face crops of different people down to 10 (LFW). Distances are even (the median splits 32/32).
    max_hamming: int = 8


@dataclass
class CurateConfig:
    inputs: list[str] = MISSING
    out: str = MISSING
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    # Execution (may change between runs on the same DIR; the sections above may not).
    ray_address: str = ""  # empty: start a local Ray; else join that cluster ("auto", "ray://host:10001")
    num_cpus: int = 0  # local Ray only; 0 = all cores
    object_store_mb: int = 256  # local Ray only
    # Local Ray only: the nice value of Ray's worker processes. Ray's default 15 makes the job yield the CPU to
    # every other process on the machine (the driver and Ray's own daemons stay at 0); on a machine shared with
    # other work that can cut the job's throughput several-fold. 0 competes on equal terms.
    worker_niceness: int = 15
    uri_column: str = "uri"  # the URI column of .csv and .parquet list files
    chunk_size: int = 20_000  # inputs per Ray Dataset; the driver holds at most one chunk of URIs
    images_per_task: int = 32  # images per Ray task (block); bigger amortises scheduling, smaller balances load
    checkpoint_rows: int = 1_000  # analysis rows per checkpoint file: the work a kill -9 can cost
    shard_max_count: int = 1_000
    shard_max_bytes: int = 500_000_000
    progress: bool = True

    def validate(self) -> None:
        check_config(self)


# What defines the curation result: a re-run on the same DIR must use the same values, or its decisions would
# mix two policies.
POLICY_SECTIONS = ("decode", "quality", "detector", "dedup")
_EXECUTION_ONLY_DETECTOR_KEYS = ("batch_size", "concurrency", "num_cpus", "num_gpus")


def load_config(config_file: str | None = None, overrides: list[str] | None = None, **flags: Any) -> CurateConfig:
    """Defaults <- YAML file <- flags (only those not None) <- `key=value` overrides; validated."""
    return load_typed_config(CurateConfig, config_file, overrides, flags, what="curate config")


def check_config(cfg: CurateConfig) -> None:
    """The checks a type cannot express; `load_config` runs them (`CurateConfig.validate`)."""
    if not cfg.inputs:
        raise ConfigError("no inputs given")
    if not cfg.out:
        raise ConfigError("--out DIR is required")
    q = cfg.quality
    if q.min_aspect <= 0 or q.max_aspect < q.min_aspect:
        raise ConfigError(
            f"quality.min_aspect/max_aspect must satisfy 0 < min <= max, got {q.min_aspect}, {q.max_aspect}"
        )
    if not 0 <= cfg.dedup.max_hamming < 32:
        raise ConfigError(f"dedup.max_hamming must be in [0, 32), got {cfg.dedup.max_hamming}")
    d = cfg.detector
    if d.name == DetectorName.onnx and not d.weights:
        raise ConfigError("detector onnx needs detector.weights=PATH (a local .onnx file)")
    for name in ("batch_size", "concurrency"):
        if getattr(d, name) < 1:
            raise ConfigError(f"detector.{name} must be >= 1")
    for name in (
        "chunk_size",
        "images_per_task",
        "checkpoint_rows",
        "shard_max_count",
        "shard_max_bytes",
    ):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not 0 <= cfg.worker_niceness <= 19:
        raise ConfigError(f"worker_niceness must be in [0, 19], got {cfg.worker_niceness}")
    if cfg.decode.analysis_max_side < 32:
        raise ConfigError("decode.analysis_max_side must be >= 32")


def policy(cfg: CurateConfig | dict) -> dict[str, Any]:
    """The settings that decide statuses (see POLICY_SECTIONS), as plain data for comparison."""
    data = cfg if isinstance(cfg, dict) else to_dict(cfg)
    out = {k: dict(data[k]) for k in POLICY_SECTIONS}  # type: ignore[index]
    for key in _EXECUTION_ONLY_DETECTOR_KEYS:
        out["detector"].pop(key, None)
    return out


def check_same_policy(saved_yaml: str, cfg: CurateConfig) -> None:
    """Refuse to continue a DIR curated under other thresholds: name each setting that differs."""
    saved = OmegaConf.to_container(OmegaConf.create(saved_yaml), enum_to_str=True)
    old, new = policy(saved), policy(cfg)  # type: ignore[arg-type]
    diffs = [
        f"{section}.{k}: {old[section].get(k)!r} -> {new[section].get(k)!r}"
        for section in POLICY_SECTIONS
        for k in sorted(set(old[section]) | set(new[section]))
        if old[section].get(k) != new[section].get(k)
    ]
    if diffs:
        raise ConfigError(
            "this output folder was curated with other settings (" + "; ".join(diffs) + "); "
            "use a new --out, or the saved config.yaml's values"
        )
