"""Joint augmentation of an image and its dense labels (seg, depth, normal, mask) to the fine-tuning size.

One similarity affine per sample moves every map together: the image is fitted into the output (H, W), then
scaled (resize + crop when zoomed in), rotated, shifted and mirrored. Each map is warped with what suits it:
the image bilinearly, labels with nearest neighbour (no invented class ids or depths across edges). Then:
- seg: a mirror swaps left/right classes through the vocabulary's `flip_lut()` (goliath28, lip20);
  pixels warped in from outside the image are 255 (ignore);
- normal: the (x, y) components turn with the image (`vector_rotation`), so a mirror negates x;
- depth: min-max normalised to [0, 1] over the person pixels left after the warp (mask and depth > 0), the
  target of the relative-depth head; pixels outside are invalid;
- background: with probability `background_prob`, pixels outside the person mask are replaced by another
  image (a random crop of a background pool, or a random smooth colour field when no pool is given).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_engine import schema
from data_engine.sample import Sample
from train.transforms import GeometricAugment, is_flipped, similarity, vector_rotation, warp


@dataclass
class DenseAugConfig(GeometricAugment):
    """Augmentation of whole-image views (a fine-tuning config's `augment:` section). Ranges are uniform."""

    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # times the fit scale; > 1 zooms in
    rotation_deg: float = 45.0
    rotation_prob: float = 0.5
    shift: float = 0.1  # centre shift as a fraction of the output size
    flip_prob: float = 0.5
    background_prob: float = 0.5


@dataclass(frozen=True)
class DenseParams:
    """A model's view geometry: its input size (H, W) and the augmentation; `rng` None disables the latter."""

    input_size: tuple[int, int] = (1024, 768)
    augment: DenseAugConfig = field(default_factory=DenseAugConfig)


@dataclass
class DenseItem:
    """One augmented view. image (H, W, 3) uint8; seg (H, W) int64 or None; depth (H, W) float32 in [0, 1]
    or None; depth_mask / normal_mask (H, W) bool; normal (H, W, 3) float32 or None; mask (H, W) bool or None."""

    image: np.ndarray
    seg: np.ndarray | None = None
    depth: np.ndarray | None = None
    depth_mask: np.ndarray | None = None
    normal: np.ndarray | None = None
    normal_mask: np.ndarray | None = None
    mask: np.ndarray | None = None
    matrix: np.ndarray = field(default_factory=lambda: np.eye(2, 3))


def person_mask(sample: Sample) -> np.ndarray | None:
    """The foreground mask: the `mask` member, else labelled non-background seg pixels, else depth > 0."""
    if sample.mask is not None:
        return sample.mask.astype(bool)
    if sample.seg is not None:
        return (sample.seg != 0) & (sample.seg != schema.IGNORE_INDEX)
    if sample.depth is not None:
        return sample.depth > 0
    return None


def dense_matrix(height: int, width: int, params: DenseParams, rng: np.random.Generator | None = None) -> np.ndarray:
    """Image (H, W) -> output affine: fit the whole image in the output, then the random scale/rotation/shift/flip."""
    out_h, out_w = params.input_size
    fit = min(out_h / height, out_w / width)
    center = np.array([width / 2.0, height / 2.0])
    scale, rotation, flip = 1.0, 0.0, False
    if rng is not None:
        scale, rotation, shift, flip = params.augment.draw(rng)
        center = center + shift * np.array([out_w, out_h]) / (fit * scale)  # a fraction of the output size
    return similarity(center, fit * scale, rotation, params.input_size, flip=flip)


def normalize_depth(depth: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image min-max over valid pixels: (d - min) / (max - min) in [0, 1]; invalid pixels are 0.

    Returns (normalised depth float32, valid mask). A person at one constant depth (max == min) has no
    relative depth to learn: every pixel becomes invalid.
    """
    valid = valid & (depth > 0)
    out = np.zeros(depth.shape, dtype=np.float32)
    if not valid.any():
        return out, valid
    d = depth[valid].astype(np.float64)
    lo, hi = d.min(), d.max()
    if hi - lo < 1e-6:
        return out, np.zeros_like(valid)
    out[valid] = ((d - lo) / (hi - lo)).astype(np.float32)
    return out, valid


def random_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour field plus mild noise: (H, W, 3) uint8."""
    import cv2

    cells = rng.integers(2, 6)
    coarse = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.float32)
    field_ = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    field_ += rng.normal(0, 8, size=field_.shape).astype(np.float32)
    return np.clip(field_, 0, 255).astype(np.uint8)


def background_crop(pool: list[np.ndarray], height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random image of the pool, scaled to cover (H, W) and randomly cropped: (H, W, 3) uint8."""
    import cv2

    image = pool[int(rng.integers(len(pool)))]
    scale = max(height / image.shape[0], width / image.shape[1]) * float(rng.uniform(1.0, 1.5))
    resized = cv2.resize(image, (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale))))
    y0 = int(rng.integers(resized.shape[0] - height + 1))
    x0 = int(rng.integers(resized.shape[1] - width + 1))
    return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width])


def dense_item(
    sample: Sample,
    params: DenseParams,
    rng: np.random.Generator | None = None,
    backgrounds: list[np.ndarray] | None = None,
) -> DenseItem:
    """Augment one sample's image and whichever dense labels it has. `rng` None = deterministic fit (eval)."""
    size = params.input_size
    matrix = dense_matrix(sample.height, sample.width, params, rng)
    flipped = is_flipped(matrix)
    image = warp(sample.image, matrix, size, "linear")
    fg = person_mask(sample)
    mask = warp(fg, matrix, size, "nearest") if fg is not None else None
    item = DenseItem(image=image, mask=mask, matrix=matrix)

    if sample.seg is not None:
        seg = warp(sample.seg, matrix, size, "nearest", fill=schema.IGNORE_INDEX)
        if flipped:
            seg = schema.vocabulary(sample.seg_vocabulary).flip_lut()[seg]
        item.seg = seg.astype(np.int64)
    if sample.depth is not None:
        depth = warp(sample.depth.astype(np.float32), matrix, size, "nearest")
        valid = mask if mask is not None else depth > 0
        item.depth, item.depth_mask = normalize_depth(depth, valid)
    if sample.normal is not None:
        normal = warp(sample.normal.astype(np.float32), matrix, size, "nearest")
        turn = vector_rotation(matrix).astype(np.float32)
        normal[..., :2] = normal[..., :2] @ turn.T
        valid = np.abs(normal).sum(-1) > 0
        if mask is not None:
            valid &= mask
        item.normal, item.normal_mask = normal, valid

    if rng is not None and mask is not None and rng.random() < params.augment.background_prob:
        h, w = size
        bg = background_crop(backgrounds, h, w, rng) if backgrounds else random_background(h, w, rng)
        item.image = np.where(mask[..., None], item.image, bg)
    return item
