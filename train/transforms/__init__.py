"""Fine-tuning transforms: top-down pose crops and heatmaps (`pose`), joint dense-map augmentation (`dense`),
and the shared geometry below.

Coordinates are continuous, as in DESIGN.md: x right, y down, the centre of pixel (row 0, col 0) at
(0.5, 0.5). An affine `M` (2, 3) maps such coordinates from a source image to a target image; OpenCV works in
pixel-index coordinates (centre of pixel 0 at 0), so `warp` shifts by half a pixel on both sides. Keeping the
whole chain continuous is what makes the pose encoding unbiased (UDP: a point survives crop, heatmap, flip
and back with no half-pixel drift).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# ImageNet statistics (the Sapiens configs normalise with the same values, in 0-255 units).
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

Interpolation = Literal["linear", "nearest"]


@dataclass
class GeometricAugment:
    """The random similarity both pose crops and dense views draw: a scale factor (uniform in `scale_range`), a
    rotation (uniform in +-`rotation_deg`, with probability `rotation_prob`), a centre shift (uniform in
    +-`shift` of a unit the caller chooses) and a horizontal flip (with probability `flip_prob`)."""

    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    rotation_deg: float = 0.0
    rotation_prob: float = 0.0
    shift: float = 0.0
    flip_prob: float = 0.0

    def draw(self, rng: np.random.Generator) -> tuple[float, float, np.ndarray, bool]:
        """(scale factor, rotation in degrees, shift (2,) in units of `shift`'s reference, flip), always drawing
        the same numbers from `rng` in the same order (the data streams stay reproducible)."""
        scale = float(rng.uniform(*self.scale_range))
        rotation = 0.0
        if rng.random() < self.rotation_prob:
            rotation = float(rng.uniform(-self.rotation_deg, self.rotation_deg))
        shift = rng.uniform(-self.shift, self.shift, size=2)
        return scale, rotation, shift, bool(rng.random() < self.flip_prob)


def normalize_image(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet mean/std normalised."""
    x = image.astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - IMAGE_MEAN) / IMAGE_STD).transpose(2, 0, 1))


def similarity(
    center: tuple[float, float] | np.ndarray,
    scale: float,
    rotation_deg: float,
    output_size: tuple[int, int],
    flip: bool = False,
) -> np.ndarray:
    """(2, 3) affine: image point p -> output point R(rotation) (p - center) * scale + output centre, then
    mirrored x -> W_out - x when `flip`. output_size is (H, W). A positive rotation turns the content
    counter-clockwise as seen on screen (y points down)."""
    out_h, out_w = output_size
    theta = np.deg2rad(rotation_deg)
    cos, sin = np.cos(theta) * scale, np.sin(theta) * scale
    # y down: a counter-clockwise screen rotation is [[cos, sin], [-sin, cos]] in (x, y).
    linear = np.array([[cos, sin], [-sin, cos]], dtype=np.float64)
    offset = np.array([out_w / 2.0, out_h / 2.0]) - linear @ np.asarray(center, dtype=np.float64)
    matrix = np.concatenate([linear, offset[:, None]], axis=1)
    if flip:
        matrix = np.array([[-1.0, 0.0, out_w], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0.0, 0.0, 1.0]])
    return matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(..., 2) points -> (..., 2) points under the (2, 3) affine."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def warp(
    array: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int], interp: Interpolation, fill: float = 0
) -> np.ndarray:
    """Warp an (H, W) or (H, W, C) array by a continuous-coordinate affine to output_size (H, W)."""
    import cv2

    # Index coordinates are continuous minus 0.5: M_idx(q) = M(q + 0.5) - 0.5.
    index_matrix = matrix.astype(np.float64).copy()
    index_matrix[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
    flags = cv2.INTER_LINEAR if interp == "linear" else cv2.INTER_NEAREST
    out_h, out_w = output_size
    src = array
    if array.dtype == bool:
        src = array.astype(np.uint8)
    channels = 1 if src.ndim == 2 else src.shape[2]
    border = fill if channels == 1 else (fill,) * min(channels, 4)
    warped = cv2.warpAffine(
        src, index_matrix, (out_w, out_h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=border
    )
    if src.ndim == 3 and warped.ndim == 2:  # OpenCV drops a trailing channel axis of size 1
        warped = warped[..., None]
    return warped.astype(bool) if array.dtype == bool else warped


def vector_rotation(matrix: np.ndarray) -> np.ndarray:
    """The (2, 2) orthogonal part of a similarity affine (rotation, with the reflection if it flips): how an
    in-plane direction such as a normal's (x, y) turns when the image is warped."""
    linear = np.asarray(matrix, dtype=np.float64)[:, :2]
    return linear / np.sqrt(abs(np.linalg.det(linear)))


def is_flipped(matrix: np.ndarray) -> bool:
    return bool(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:, :2]) < 0)
