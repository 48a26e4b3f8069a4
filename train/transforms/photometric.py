"""Pixel-only augmentation of a training crop: colour jitter, blur, coarse dropout. Labels are never touched.

    params = PhotometricConfig()                       # Sapiens pose defaults (the `pose.photometric` section)
    crop = photometric_augment(crop, params, rng)      # (H, W, 3) uint8 -> (H, W, 3) uint8

The Sapiens pose pipeline runs mmpose's PhotometricDistortion, then albumentations' Blur (p 0.1), MedianBlur
(p 0.1) and CoarseDropout (one hole of 20-40% of each side) after the top-down affine. Colour jitter follows
mmcv: brightness (+-32), then contrast either first or last (random), saturation and hue in HSV; each part
applied with probability `jitter_prob`. Dropout fills with 0 and the keypoints under the hole keep their
targets: the model learns to place occluded joints, which is the point of the augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PhotometricConfig:
    """Probabilities and ranges; a probability of 0 turns its part off (all 0 = identity), `enabled` all of it.
    A fine-tuning config's `pose.photometric` section is this type."""

    enabled: bool = True
    jitter_prob: float = 0.5  # each of brightness, contrast, saturation, hue
    brightness_delta: float = 32.0  # added to every channel, uniform in +-delta (0-255 units)
    contrast_range: list[float] = field(default_factory=lambda: [0.5, 1.5])  # every channel multiplied by alpha
    saturation_range: list[float] = field(default_factory=lambda: [0.5, 1.5])  # HSV saturation multiplied by alpha
    hue_delta: float = 18.0  # HSV hue shifted by +-delta degrees
    blur_prob: float = 0.1  # box blur, odd kernel in 3..blur_max_kernel
    median_blur_prob: float = 0.1  # median blur, odd kernel in 3..blur_max_kernel
    blur_max_kernel: int = 7
    dropout_prob: float = 1.0  # one rectangle filled with 0 (albumentations CoarseDropout, one hole)
    dropout_size_range: list[float] = field(default_factory=lambda: [0.2, 0.4])  # of the crop's height and width


def photometric_augment(image: np.ndarray, params: PhotometricConfig, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> a new (H, W, 3) uint8 array; the input is left unchanged."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"photometric_augment needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    out = color_jitter(image, params, rng)
    out = random_blur(out, params, rng)
    return coarse_dropout(out, params, rng)


def color_jitter(image: np.ndarray, params: PhotometricConfig, rng: np.random.Generator) -> np.ndarray:
    """mmcv's PhotoMetricDistortion order; every random draw happens whether or not its part is applied, so the
    rng advances the same way for any image (the data stream stays reproducible across label changes)."""
    import cv2

    p = params
    apply = rng.random(4) < p.jitter_prob  # brightness, contrast, saturation, hue
    contrast_first = bool(rng.random() < 0.5)
    delta = rng.uniform(-p.brightness_delta, p.brightness_delta)
    contrast = rng.uniform(*p.contrast_range)
    saturation = rng.uniform(*p.saturation_range)
    hue = rng.uniform(-p.hue_delta, p.hue_delta)
    if not apply.any():
        return image.copy()
    x = image.astype(np.float32)
    if apply[0]:
        x = np.clip(x + delta, 0, 255)
    if apply[1] and contrast_first:
        x = np.clip(x * contrast, 0, 255)
    if apply[2] or apply[3]:
        # float32 HSV: hue in degrees [0, 360), saturation in [0, 1] (cv2 expects RGB in [0, 1] here).
        hsv = cv2.cvtColor(x / 255.0, cv2.COLOR_RGB2HSV)
        if apply[2]:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
        if apply[3]:
            hsv[..., 0] = np.mod(hsv[..., 0] + hue, 360.0)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    if apply[1] and not contrast_first:
        x = np.clip(x * contrast, 0, 255)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def random_blur(image: np.ndarray, params: PhotometricConfig, rng: np.random.Generator) -> np.ndarray:
    """Box blur with probability blur_prob, then median blur with probability median_blur_prob."""
    import cv2

    sizes = np.arange(3, max(params.blur_max_kernel, 3) + 1, 2)
    box, median = rng.random(2) < (params.blur_prob, params.median_blur_prob)
    box_k, median_k = (int(k) for k in rng.choice(sizes, 2))
    out = image
    if box:
        out = cv2.blur(out, (box_k, box_k))
    if median:
        out = cv2.medianBlur(np.ascontiguousarray(out), median_k)
    return out


def coarse_dropout(image: np.ndarray, params: PhotometricConfig, rng: np.random.Generator) -> np.ndarray:
    """With probability dropout_prob, one rectangle of (fractions of) the crop's height and width set to 0."""
    h, w = image.shape[:2]
    hit = rng.random() < params.dropout_prob
    fh, fw = rng.uniform(*params.dropout_size_range, size=2)
    hole_h, hole_w = max(1, round(fh * h)), max(1, round(fw * w))
    y0, x0 = int(rng.integers(0, h - hole_h + 1)), int(rng.integers(0, w - hole_w + 1))
    if not hit:
        return image
    out = image.copy()
    out[y0 : y0 + hole_h, x0 : x0 + hole_w] = 0
    return out
