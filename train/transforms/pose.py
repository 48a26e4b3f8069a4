"""Top-down pose: crop each person to the input size, encode keypoints as UDP Gaussian heatmaps, decode back.

The chain, all in continuous coordinates (see `train.transforms`):
    image point p --affine M (box -> input crop, scale/rotation/flip)--> crop point q
    q * (heatmap / input)                                             --> heatmap point u
    u - 0.5                                                           --> heatmap index coordinate (Gaussian mean)
Decoding runs it backwards: argmax, sub-pixel refinement of the log-heatmap's quadratic (DARK), + 0.5,
* (input / heatmap), M^-1. On a clean Gaussian the log-heatmap is exactly quadratic, so a keypoint comes
back to within floating-point error (tests ask for 0.5 px). Flipping the crop maps q_x -> W - q_x and the
heatmap index i -> w - 1 - i: the same mirror, so flip testing needs no shift (UDP's point).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from train.transforms import GeometricAugment, apply_affine, invert_affine, similarity, warp
from train.transforms.photometric import PhotometricConfig, photometric_augment


@dataclass
class HalfBodyConfig:
    """mmpose RandomHalfBody (Sapiens pose): with probability `prob`, when the person has at least `min_keypoints`
    labelled keypoints, the crop box becomes the box of the labelled upper-body (preferred with `upper_prob`) or
    lower-body keypoints, centred on their mean and grown by `padding`; a half with too few labelled keypoints
    (upper < min_upper, lower < min_lower) falls back to the other."""

    prob: float = 0.3
    min_keypoints: int = 9
    min_upper: int = 2
    min_lower: int = 3
    upper_prob: float = 0.7
    padding: float = 1.5


@dataclass
class TopDownAugment(GeometricAugment):
    """Crop, target and augmentation settings of top-down pose: a fine-tuning config's `pose:` section extends
    this type. Augmentation (training only): scale factor range, rotation (uniform in +-deg, applied with
    probability), box-centre shift as a fraction of the box size, horizontal flip probability, half-body crops
    and pixel-only photometric changes."""

    sigma: float = 2.0  # Gaussian sigma in heatmap pixels (Sapiens: 6 at 256x192 heatmaps)
    bbox_padding: float = 1.25  # the box grows by this factor before the crop
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    rotation_deg: float = 40.0
    rotation_prob: float = 0.6
    shift: float = 0.1
    flip_prob: float = 0.5
    half_body: HalfBodyConfig = field(default_factory=HalfBodyConfig)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)


@dataclass(frozen=True)
class TopDownParams:
    """A model's crop geometry: its input size (H, W), the heatmap stride, and the settings above."""

    input_size: tuple[int, int] = (256, 192)
    augment: TopDownAugment = field(default_factory=TopDownAugment)
    heatmap_stride: int = 4

    @property
    def heatmap_size(self) -> tuple[int, int]:
        h, w = self.input_size
        if h % self.heatmap_stride or w % self.heatmap_stride:
            raise ValueError(f"input size {self.input_size} must be divisible by heatmap stride {self.heatmap_stride}")
        return h // self.heatmap_stride, w // self.heatmap_stride


@dataclass
class TopDownItem:
    """One person crop. image (H, W, 3) uint8; heatmaps (K, h, w) float32; weights (K,) float32;
    matrix (2, 3): original image -> crop."""

    image: np.ndarray
    heatmaps: np.ndarray
    weights: np.ndarray
    matrix: np.ndarray


def box_center_size(
    bbox: tuple[float, float, float, float], aspect_wh: float, padding: float
) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box -> (centre (2,), size (2,) as (w, h)) grown by `padding` and widened or heightened to the
    crop's aspect ratio (w / h), so the person is never squashed."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    w, h = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
    if w > h * aspect_wh:
        h = w / aspect_wh
    else:
        w = h * aspect_wh
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), np.array([w, h]) * padding


def lower_body_mask(keypoint_set: str) -> np.ndarray:
    """(K,) bool over a schema keypoint subset: True for hips, knees, ankles and the feet (Sapiens' "lower"
    keypoints of Goliath); everything else (head, face, arms, hands, torso extras) is upper body."""
    from data_engine import schema

    kps = schema.keypoints()
    lower = [kps[int(g)].group == "feet" or kps[int(g)].name.endswith(("_hip", "_knee", "_ankle"))
             for g in schema.subset(keypoint_set)]  # fmt: skip
    return np.array(lower, dtype=bool)


def half_body_ids(
    keypoints: np.ndarray, lower_body: np.ndarray, params: TopDownParams, rng: np.random.Generator
) -> np.ndarray | None:
    """Indices of the half whose box becomes the crop, or None (no half-body crop this time).

    keypoints: (K, 3) [x, y, v]; lower_body: (K,) bool. Draws the same two numbers from `rng` every call."""
    visible = np.asarray(keypoints)[:, 2] > 0
    hb = params.augment.half_body
    take, prefer_upper = rng.random(2) < (hb.prob, hb.upper_prob)
    if visible.sum() < hb.min_keypoints or not take:
        return None
    upper, lower = np.flatnonzero(visible & ~lower_body), np.flatnonzero(visible & lower_body)
    upper_ok, lower_ok = len(upper) >= hb.min_upper, len(lower) >= hb.min_lower
    if not (upper_ok or lower_ok):
        return None
    return upper if upper_ok and (prefer_upper or not lower_ok) else lower


def points_center_size(points: np.ndarray, aspect_wh: float, padding: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(N, 2) points -> (their mean (2,), the size (w, h) of their box at the crop aspect, grown by `padding`);
    None when they span less than a pixel (a crop around them would zoom without bound)."""
    lo, hi = points.min(0), points.max(0)
    w, h = hi - lo
    if max(w, h) < 1.0:
        return None
    if w > h * aspect_wh:
        h = w / aspect_wh
    else:
        w = h * aspect_wh
    return points.mean(0), np.array([w, h]) * padding


def crop_matrix(
    bbox: tuple[float, float, float, float],
    params: TopDownParams,
    rng: np.random.Generator | None = None,
    box: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, bool]:
    """The (2, 3) image -> crop affine for one box, with random scale/rotation/shift/flip when `rng` is given.
    `box` = (centre, size (w, h)) replaces the padded `bbox` (a half-body crop). Returns (matrix, flipped)."""
    out_h, out_w = params.input_size
    center, size = box if box is not None else box_center_size(bbox, out_w / out_h, params.augment.bbox_padding)
    scale_factor, rotation, flip = 1.0, 0.0, False
    if rng is not None:
        scale_factor, rotation, shift, flip = params.augment.draw(rng)
        center = center + shift * size  # a fraction of the box
    scale = out_w / (size[0] * scale_factor)
    return similarity(center, scale, rotation, params.input_size, flip=flip), flip


def udp_heatmaps(
    points: np.ndarray, valid: np.ndarray, input_size: tuple[int, int], heatmap_size: tuple[int, int], sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian heatmaps for crop-space points.

    points: (K, 2) continuous crop coordinates; valid: (K,) bool (labelled). Returns heatmaps (K, h, w) float32
    with peak 1 at u - 0.5 (u = point in heatmap units) and weights (K,) float32: 1 where the point is valid
    and inside the heatmap, else 0 (its heatmap stays zero).
    """
    h, w = heatmap_size
    in_h, in_w = input_size
    mu = np.asarray(points, dtype=np.float64) * np.array([w / in_w, h / in_h]) - 0.5  # (K, 2) index coords
    inside = (mu[:, 0] >= -0.5) & (mu[:, 0] < w - 0.5) & (mu[:, 1] >= -0.5) & (mu[:, 1] < h - 0.5)
    weights = (np.asarray(valid, dtype=bool) & inside & np.isfinite(mu).all(1)).astype(np.float32)
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    mu = np.where(weights[:, None] > 0, mu, 0.0)
    gx = np.exp(-((xs[None, :] - mu[:, 0:1]) ** 2) / (2 * sigma**2))  # (K, w)
    gy = np.exp(-((ys[None, :] - mu[:, 1:2]) ** 2) / (2 * sigma**2))  # (K, h)
    heatmaps = (gy[:, :, None] * gx[:, None, :]).astype(np.float32) * weights[:, None, None]
    return heatmaps, weights


def topdown_item(
    image: np.ndarray,
    keypoints: np.ndarray,
    bbox: tuple[float, float, float, float],
    flip_indices: np.ndarray,
    params: TopDownParams,
    rng: np.random.Generator | None = None,
    lower_body: np.ndarray | None = None,
) -> TopDownItem:
    """Crop one person and make its targets. keypoints: (K, 3) [x, y, v] in the model's keypoint order;
    flip_indices: (K,) mirror permutation of that order; lower_body: (K,) bool (`lower_body_mask`), needed when
    params.augment.half_body.prob > 0. `rng` None = no augmentation (evaluation)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    box = None
    if rng is not None and params.augment.half_body.prob > 0:
        if lower_body is None or len(lower_body) != len(kp):
            raise ValueError(f"half-body crops need a ({len(kp)},) lower_body mask (lower_body_mask(keypoint_set))")
        ids = half_body_ids(kp, lower_body, params, rng)
        if ids is not None:
            out_h, out_w = params.input_size
            box = points_center_size(kp[ids, :2], out_w / out_h, params.augment.half_body.padding)
    matrix, flipped = crop_matrix(bbox, params, rng, box)
    crop = warp(image, matrix, params.input_size, "linear")
    if rng is not None and params.augment.photometric.enabled:
        # pixels only: the targets below are geometric
        crop = photometric_augment(crop, params.augment.photometric, rng)
    points = apply_affine(kp[:, :2], matrix)
    valid = kp[:, 2] > 0
    if flipped:  # after a mirror the left wrist sits where the right one was: swap the slots
        points, valid = points[flip_indices], valid[flip_indices]
    heatmaps, weights = udp_heatmaps(points, valid, params.input_size, params.heatmap_size, params.augment.sigma)
    return TopDownItem(image=crop, heatmaps=heatmaps, weights=weights, matrix=matrix)


# ------------------------------------------------------------------------------------------------ decoding


def decode_heatmaps(heatmaps: np.ndarray, blur_kernel: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (B, K, h, w) -> (points (B, K, 2) in continuous heatmap coordinates, scores (B, K)).

    Argmax, then one Newton step on the log-heatmap around it (DARK, Zhang et al. 2020): offset = -H^-1 g,
    exact for a Gaussian peak. `blur_kernel` > 0 first smooths predicted heatmaps with a Gaussian of that
    odd size (rescaled to keep each map's maximum), which makes a network's ragged peak Gaussian-like; clean
    targets need none. The score is the map's maximum before smoothing.
    """
    import cv2

    hm = np.asarray(heatmaps, dtype=np.float32)
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must be (B, K, h, w), got {hm.shape}")
    b, k, h, w = hm.shape
    flat = hm.reshape(b, k, -1)
    index = flat.argmax(-1)
    scores = flat.max(-1)
    ix, iy = (index % w).astype(np.int64), (index // w).astype(np.int64)
    if blur_kernel > 0:
        maps = hm.reshape(b * k, h, w)
        blurred = np.stack([cv2.GaussianBlur(m, (blur_kernel, blur_kernel), 0) for m in maps])
        peak = maps.reshape(b * k, -1).max(-1)
        blurred *= (peak / np.maximum(blurred.reshape(b * k, -1).max(-1), 1e-12))[:, None, None]
        hm = blurred.reshape(b, k, h, w)
    log = np.log(np.maximum(hm, 1e-10)).astype(np.float64)
    padded = np.pad(log, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    bi, ki = np.meshgrid(np.arange(b), np.arange(k), indexing="ij")
    cy, cx = iy + 1, ix + 1

    def at(dy: int, dx: int) -> np.ndarray:
        return padded[bi, ki, cy + dy, cx + dx]

    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = at(0, 1) - 2 * at(0, 0) + at(0, -1)
    dyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    # Only a proper maximum (negative-definite Hessian) is refined; a flat or saddle map keeps the argmax.
    ok = (det > 1e-12) & (dxx < 0)
    safe = np.where(ok, det, 1.0)
    off_x = np.where(ok, -(dyy * dx - dxy * dy) / safe, 0.0)
    off_y = np.where(ok, -(dxx * dy - dxy * dx) / safe, 0.0)
    points = np.stack([ix + np.clip(off_x, -1, 1), iy + np.clip(off_y, -1, 1)], axis=-1) + 0.5
    return points.astype(np.float32), scores


def heatmap_to_image(points: np.ndarray, matrix: np.ndarray, params: TopDownParams) -> np.ndarray:
    """(K, 2) continuous heatmap coordinates -> (K, 2) original image coordinates through the crop's affine."""
    in_h, in_w = params.input_size
    h, w = params.heatmap_size
    crop_points = np.asarray(points, dtype=np.float64) * np.array([in_w / w, in_h / h])
    return apply_affine(crop_points, invert_affine(matrix))


def flip_heatmaps(heatmaps: np.ndarray, flip_indices: np.ndarray) -> np.ndarray:
    """Mirror (..., K, h, w) heatmaps of a flipped crop back: reverse x and swap left/right channels."""
    return np.asarray(heatmaps)[..., flip_indices, :, ::-1]
