"""Random views of a subject: camera, lights and background, all drawn from one seeded generator.

A view is fully described by its JSON-able parameters (`ViewParams.as_json()`), which also make the
sample key, so the same seed gives the same views, renders and keys on any machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from synth.camera import PinholeCamera, intrinsics, look_at
from synth.config import BackgroundConfig, CameraConfig, LightConfig
from synth.geometry import LightSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class ViewParams:
    camera: PinholeCamera
    lights: list[LightSpec]
    ambient: float
    background: dict  # {"kind": "image", "file": ..., "crop": [...]} or {"kind": procedural, "seed": ...}
    camera_params: dict  # focal_mm, distance_m, elevation_deg, azimuth_deg, roll_deg, target

    def as_json(self) -> dict:
        return {
            "camera": self.camera_params,
            "ambient": round(self.ambient, 6),
            "lights": [
                {
                    "kind": light.kind,
                    "color": [round(c, 6) for c in light.color],
                    "intensity": round(light.intensity, 6),
                    "position": [round(float(v), 6) for v in light.pose[:3, 3]],
                    "direction": [round(float(v), 6) for v in -light.pose[:3, 2]],
                    **({"cone_deg": round(light.cone_deg, 4)} if light.kind == "spot" else {}),
                }
                for light in self.lights
            ],
            "background": self.background,
        }


def sample_view(
    rng: np.random.Generator,
    width: int,
    height: int,
    centre: np.ndarray,
    person_height: float,
    camera: CameraConfig,
    lights: LightConfig,
    backgrounds: list[str],
    background: BackgroundConfig,
) -> ViewParams:
    """Draw one view that frames a person of `person_height` metres whose bounding-box centre is `centre`."""
    focal_mm = rng.uniform(*camera.focal_mm)
    focal_px = focal_mm / 36.0 * max(width, height)  # 35 mm equivalent: 36 mm across the long side
    fill = rng.uniform(*camera.fill)
    elevation = rng.uniform(*camera.elevation_deg)
    azimuth = rng.uniform(*camera.azimuth_deg)
    roll = rng.uniform(*camera.roll_deg)
    jitter = rng.uniform(-1, 1, 3) * camera.target_jitter * person_height
    target = centre + jitter
    # The distance at which the person spans `fill` of the shorter image side.
    distance = max(focal_px * person_height / (fill * min(width, height)), camera.znear * 4)
    el, az = np.deg2rad(elevation), np.deg2rad(azimuth)
    eye = target + distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    cam = PinholeCamera(width, height, intrinsics(width, height, focal_px), look_at(eye, target, roll_deg=roll))
    params = {
        "focal_mm": round(float(focal_mm), 6),
        "distance_m": round(float(distance), 6),
        "elevation_deg": round(float(elevation), 6),
        "azimuth_deg": round(float(azimuth), 6),
        "roll_deg": round(float(roll), 6),
        "target": [round(float(v), 6) for v in target],
    }
    light_list = [_sample_light(rng, lights, target, eye, person_height) for _ in range(_count(rng, lights.count))]
    ambient = float(rng.uniform(*lights.ambient))
    return ViewParams(
        camera=cam,
        lights=light_list,
        ambient=ambient,
        background=_sample_background(rng, backgrounds, background),
        camera_params=params,
    )


def _count(rng: np.random.Generator, bounds: list[int]) -> int:
    return int(rng.integers(int(bounds[0]), int(bounds[1]) + 1))


def _sample_light(
    rng: np.random.Generator, config: LightConfig, target: np.ndarray, eye: np.ndarray, person_height: float
) -> LightSpec:
    kind = config.kinds[int(rng.integers(len(config.kinds)))]
    colour = kelvin_to_rgb(rng.uniform(*config.temperature_k))
    # Lights come from the camera's half-space mostly (a person lit only from behind is a silhouette).
    view_az = np.arctan2(eye[0] - target[0], eye[2] - target[2])
    az = view_az + rng.uniform(-0.6, 0.6) * np.pi
    el = np.deg2rad(rng.uniform(5, 70))
    direction_to_light = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    distance = rng.uniform(1.5, 4.0) * max(person_height, 0.5)
    position = target + direction_to_light * distance
    intensity = float(rng.uniform(*getattr(config, f"{kind}_intensity")))
    cone = float(rng.uniform(*config.spot_cone_deg))
    return LightSpec(kind=kind, color=colour, intensity=intensity, pose=_aim(position, target), cone_deg=cone)  # type: ignore[arg-type]


def _aim(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) light-to-world pose whose -z axis points from `position` at `target`."""
    back = position - target
    back /= np.linalg.norm(back)
    up = np.array([0.0, 1.0, 0.0]) if abs(back[1]) < 0.99 else np.array([1.0, 0.0, 0.0])
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, position
    return pose


def kelvin_to_rgb(kelvin: float) -> tuple[float, float, float]:
    """Colour of a black body at `kelvin`, normalised so the largest channel is 1 (Tanner Helland's fit)."""
    t = kelvin / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = 99.4708025861 * np.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    if t >= 66:
        b = 255.0
    elif t <= 19:
        b = 0.0
    else:
        b = 138.5177312231 * np.log(t - 10) - 305.0447927307
    rgb = np.clip(np.array([r, g, b]), 0, 255)
    rgb = rgb / rgb.max()
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]))


# ---------------------------------------------------------------------------------------------- backgrounds


def list_backgrounds(folder: str | None) -> list[str]:
    """Image files under `folder`, as sorted paths relative to it (so keys do not depend on where it lives)."""
    if not folder:
        return []
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--backgrounds {folder}: no such folder")
    found = sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not found:
        raise FileNotFoundError(f"--backgrounds {folder}: no {'/'.join(IMAGE_EXTENSIONS)} images inside")
    return found


def _sample_background(rng: np.random.Generator, images: list[str], config: BackgroundConfig) -> dict:
    if images:
        return {
            "kind": "image",
            "file": images[int(rng.integers(len(images)))],
            "crop": [round(float(v), 6) for v in rng.uniform(0, 1, 3)],  # x, y, zoom
            "flip": bool(rng.random() < 0.5),
        }
    kind = config.procedural[int(rng.integers(len(config.procedural)))]
    return {"kind": kind, "seed": int(rng.integers(2**31))}


class BackgroundError(ValueError):
    """A background image that cannot be read; names the file."""


def make_background(spec: dict, width: int, height: int, folder: str | None) -> np.ndarray:
    """(H, W, 3) uint8 background for a view's background spec."""
    if spec["kind"] == "image":
        return _image_background(spec, width, height, folder or "")
    rng = np.random.default_rng(spec["seed"])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if spec["kind"] == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = xs / width * np.cos(angle) + ys / height * np.sin(angle)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        image = c0 * (1 - t[..., None]) + c1 * t[..., None]
    elif spec["kind"] == "checker":
        cell = rng.uniform(0.04, 0.2) * max(width, height)
        parity = ((xs // cell + ys // cell) % 2)[..., None]
        image = c0 * parity + c1 * (1 - parity)
    else:  # smooth noise: a few octaves of upsampled random grids
        import cv2

        image = np.zeros((height, width, 3), np.float32)
        for octave in (4, 16, 64):
            grid = rng.uniform(-1, 1, (octave, octave, 3)).astype(np.float32)
            image += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) * (64.0 / octave**0.5)
        image = c0 + image
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _image_background(spec: dict, width: int, height: int, folder: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    path = os.path.join(folder, spec["file"])
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise BackgroundError(f"background {path}: not a readable image ({e})") from None
    h, w = rgb.shape[:2]
    # Crop a window of the output's aspect ratio (zoom 1 = the largest one that fits), then resize.
    aspect = width / height
    full_w, full_h = (w, w / aspect) if w / h < aspect else (h * aspect, h)
    x, y, zoom = spec["crop"]
    scale = 1.0 - 0.5 * zoom
    cw, ch = max(1, int(full_w * scale)), max(1, int(full_h * scale))
    x0, y0 = int(x * (w - cw)), int(y * (h - ch))
    crop = Image.fromarray(rgb[y0 : y0 + ch, x0 : x0 + cw]).resize((width, height), Image.Resampling.BILINEAR)
    out = np.asarray(crop)
    return out[:, ::-1].copy() if spec["flip"] else out
