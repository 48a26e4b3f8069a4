"""Typed configuration of `hv synth`: dataclass defaults < YAML (`--config`) < flags < `key=value` overrides.

    hv synth scans/ --out runs/synth --config configs/synth/default.yaml views=8 camera.focal_mm=[50,85]

An unknown key or a value outside a mode's set fails at start-up (`data_engine.config.load_config`). The
resolved config is saved as `{out}/config.yaml`; a re-run into the same folder must resolve to the same render
settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import OmegaConf

from data_engine.config import ConfigError as ConfigError
from data_engine.config import load_config as load_typed_config
from data_engine.config import to_yaml as to_yaml
from data_engine.sample import ImageFormat
from synth.poses import POSE_FAMILIES, PoseFamily, check_families

Units = Literal["m", "dm", "cm", "mm"]
UNIT_TO_METRES: dict[str, float] = {"m": 1.0, "dm": 0.1, "cm": 0.01, "mm": 0.001}
UpAxis = Literal["x", "y", "z", "-x", "-y", "-z"]
LightKind = Literal["directional", "point", "spot"]
BackgroundKind = Literal["gradient", "noise", "checker"]  # procedural backgrounds (synth/views.py)


@dataclass
class CameraConfig:
    focal_mm: list[float] = field(default_factory=lambda: [28.0, 85.0])  # 35 mm-equivalent focal length range
    fill: list[float] = field(default_factory=lambda: [0.55, 0.9])  # fraction of the image the person spans
    elevation_deg: list[float] = field(default_factory=lambda: [-10.0, 35.0])
    # 0 = in front of the person. The front half only, as in most photos of people: with cameras all round, front
    # and back views are equally likely and a model hedges left against right (benchmarks/RESULTS.md). Back views
    # come from the turned_away and lying pose families; [0, 360] gives cameras all round.
    azimuth_deg: list[float] = field(default_factory=lambda: [-90.0, 90.0])
    roll_deg: list[float] = field(default_factory=lambda: [-5.0, 5.0])
    target_jitter: float = 0.08  # look-at offset, as a fraction of the person's height
    znear: float = 0.05
    zfar: float = 100.0


@dataclass
class LightConfig:
    count: list[int] = field(default_factory=lambda: [1, 4])
    kinds: list[LightKind] = field(default_factory=lambda: ["directional", "point", "spot"])
    temperature_k: list[float] = field(default_factory=lambda: [2700.0, 7500.0])
    directional_intensity: list[float] = field(default_factory=lambda: [1.5, 5.0])
    point_intensity: list[float] = field(default_factory=lambda: [5.0, 40.0])  # candela, at 1.5-4 m
    spot_intensity: list[float] = field(default_factory=lambda: [10.0, 60.0])
    spot_cone_deg: list[float] = field(default_factory=lambda: [15.0, 45.0])
    ambient: list[float] = field(default_factory=lambda: [0.05, 0.35])


@dataclass
class BackgroundConfig:
    dir: str | None = None  # folder of images (searched recursively); None = procedural backgrounds
    procedural: list[BackgroundKind] = field(default_factory=lambda: ["gradient", "noise", "checker"])


@dataclass
class ScanConfig:
    units: Units = "m"
    up_axis: UpAxis = "y"  # glTF's convention; many OBJ/PLY scanners write z up
    min_height_m: float = 0.3  # a person (or a bust) shorter than this is a units mistake
    max_height_m: float = 2.6
    max_faces: int = 5_000_000  # larger meshes are refused (decimate them first)
    max_file_mb: float = 2048.0  # checked before loading, so a huge file is refused instead of exhausting memory
    flat_color: list[float] = field(default_factory=lambda: [0.7, 0.6, 0.55])  # when the texture is missing
    landmark_tolerance_m: float = 0.01  # a landmark within this of the visible surface counts as visible


@dataclass
class BodyConfig:
    count: int = 0  # parametric bodies to render (also used when no scans are given: see `hv synth --bodies`)
    age: list[float] = field(default_factory=lambda: [0.25, 1.0])  # anny's age parameter (0.25 ~ teen)
    gender: list[float] = field(default_factory=lambda: [0.0, 1.0])
    muscle: list[float] = field(default_factory=lambda: [0.1, 0.9])
    weight: list[float] = field(default_factory=lambda: [0.1, 0.9])
    height: list[float] = field(default_factory=lambda: [0.1, 0.9])
    proportions: list[float] = field(default_factory=lambda: [0.2, 0.8])
    pose_scale: float = 1.0  # multiplies every joint angle of the pose families (synth/poses.py); 0 = rest pose
    # Each body is one person (shape, skin, clothes) in ceil(views / views_per_pose) poses, its views spread evenly
    # over them. Posing is batched and the texture stays on the GPU, so more poses cost little; `views` = one pose.
    views_per_pose: int = 1
    families: list[PoseFamily] = field(default_factory=lambda: list(POSE_FAMILIES))  # pose families to draw from
    clothing_prob: float = 0.7  # chance of a coloured top and of coloured bottoms (labelled as clothing)
    hair_prob: float = 0.85  # chance of hair painted on the scalp (labelled Hair); the rest are bald
    texture_size: int = 512


@dataclass
class SynthConfig:
    out: str = ""
    scans: list[str] = field(default_factory=list)
    views: int = 4  # views per scan or body
    width: int = 1024
    height: int = 768
    seed: int = 0
    heldout_fraction: float = 0.1  # subjects (not views) held out, so no person is in both splits
    image_format: ImageFormat = "png"
    shard_max_count: int = 1000
    seg: bool = True  # write seg.png where part labels exist
    workers: int = 0  # Ray render actors; 0 = one per CPU of the cluster
    ray_address: str | None = None  # None = start a local Ray; "auto" or host:port joins a cluster
    inline: bool = False  # render in this process without Ray (debugging)
    camera: CameraConfig = field(default_factory=CameraConfig)
    lights: LightConfig = field(default_factory=LightConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    bodies: BodyConfig = field(default_factory=BodyConfig)

    def validate(self) -> None:
        check_config(self)


# Settings that change no pixel and no key: a resumed run may change them.
# Adding scans or bodies to an output folder is allowed: each subject's renders depend only on itself.
EXECUTION_KEYS = ("workers", "ray_address", "inline", "out", "scans")


def load_config(yaml_path: str | None = None, overrides: list[str] | None = None, **flags: Any) -> SynthConfig:
    """Merge defaults, an optional YAML file, flags (None = not given; dotted keys) and `key=value` overrides."""
    return load_typed_config(SynthConfig, yaml_path, overrides, flags, what="synth config")


def check_config(config: SynthConfig) -> None:
    def check_range(name: str, values: list[float], low: float | None = None, high: float | None = None) -> None:
        if len(values) != 2 or values[0] > values[1]:
            raise ConfigError(f"{name} must be a [min, max] pair with min <= max, got {values}")
        if (low is not None and values[0] < low) or (high is not None and values[1] > high):
            raise ConfigError(f"{name} must lie within [{low}, {high}], got {values}")

    if config.views < 1:
        raise ConfigError(f"views must be >= 1, got {config.views}")
    if config.width < 8 or config.height < 8 or config.width > 16384 or config.height > 16384:
        raise ConfigError(f"render size {config.width}x{config.height} must be within 8..16384 pixels a side")
    if not 0.0 <= config.heldout_fraction <= 1.0:
        raise ConfigError(f"heldout_fraction must be within [0, 1], got {config.heldout_fraction}")
    if config.bodies.count < 0:
        raise ConfigError(f"bodies.count must be >= 0, got {config.bodies.count}")
    if config.shard_max_count < 1:
        raise ConfigError(f"shard_max_count must be >= 1, got {config.shard_max_count}")
    cam = config.camera
    check_range("camera.focal_mm", cam.focal_mm, 1.0, 2000.0)
    check_range("camera.fill", cam.fill, 0.05, 2.0)
    check_range("camera.elevation_deg", cam.elevation_deg, -89.0, 89.0)
    check_range("camera.azimuth_deg", cam.azimuth_deg)
    check_range("camera.roll_deg", cam.roll_deg, -180.0, 180.0)
    if not 0 < cam.znear < cam.zfar:
        raise ConfigError(f"camera needs 0 < znear < zfar, got {cam.znear}, {cam.zfar}")
    lights = config.lights
    check_range("lights.count", [float(v) for v in lights.count], 0, 16)
    bad = sorted(set(lights.kinds) - {"directional", "point", "spot"})
    if bad or not lights.kinds:
        raise ConfigError(f"lights.kinds must be a non-empty subset of directional, point, spot; got {lights.kinds}")
    check_range("lights.temperature_k", lights.temperature_k, 1000.0, 40000.0)
    for name in ("directional_intensity", "point_intensity", "spot_intensity", "ambient"):
        check_range(f"lights.{name}", getattr(lights, name), 0.0)
    check_range("lights.spot_cone_deg", lights.spot_cone_deg, 1.0, 89.0)
    bad = sorted(set(config.background.procedural) - {"gradient", "noise", "checker"})
    if bad or not config.background.procedural:
        kinds = config.background.procedural
        raise ConfigError(f"background.procedural must be a non-empty subset of gradient, noise, checker; got {kinds}")
    body = config.bodies
    for name in ("age", "gender", "muscle", "weight", "height", "proportions"):
        check_range(f"bodies.{name}", getattr(body, name), 0.0, 1.0)
    try:
        check_families(body.families)
    except ValueError as e:
        raise ConfigError(f"bodies.families: {e}") from None
    if body.views_per_pose < 1:
        raise ConfigError(f"bodies.views_per_pose must be >= 1, got {body.views_per_pose}")
    for name in ("clothing_prob", "hair_prob"):
        value = getattr(body, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"bodies.{name} must be within [0, 1], got {value}")
    if config.scan.min_height_m >= config.scan.max_height_m:
        raise ConfigError("scan.min_height_m must be below scan.max_height_m")


def render_settings(config: SynthConfig) -> dict:
    """The config without execution-only keys: what must match for a resumed run to give the same keys."""
    settings = OmegaConf.to_container(OmegaConf.structured(config))
    assert isinstance(settings, dict)
    for key in EXECUTION_KEYS:
        settings.pop(key, None)
    settings["bodies"].pop("count", None)
    return settings
