"""Image quality figures and the thresholds that reject an image (pure functions on one image).

Figures are measured on the grey analysis copy (long side <= `decode.analysis_max_side`), so thresholds mean
the same for a 12 MP photo and a 1 MP one:

- blur: variance of the Laplacian (3x3 kernel) of the grey image; low = few edges = defocused or motion-blurred.
- clipped: fraction of grey pixels at 0 or 255 (crushed shadows or blown highlights): bad exposure.
- contrast: standard deviation of the grey levels; low = near-uniform (blank frames, solid fills).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_engine.curate_config import QualityConfig
from data_engine.decode import Reason, Rejection


@dataclass
class QualityFigures:
    blur: float
    clipped: float
    contrast: float


def grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 luma (ITU-R 601, as OpenCV)."""
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def measure(grey_image: np.ndarray) -> QualityFigures:
    import cv2

    lap = cv2.Laplacian(grey_image, cv2.CV_32F, ksize=1)
    hist = np.bincount(grey_image.reshape(-1), minlength=256)
    return QualityFigures(
        blur=float(lap.var()),
        clipped=float((hist[0] + hist[255]) / max(1, grey_image.size)),
        contrast=float(grey_image.std()),
    )


def check_size(width: int, height: int, cfg: QualityConfig) -> None:
    """Raise Rejection(too_small | bad_aspect_ratio). Runs on the header size, before the figures."""
    if min(width, height) < cfg.min_short_side:
        raise Rejection(Reason.too_small, f"{width}x{height}, short side < {cfg.min_short_side}")
    aspect = width / height
    if not cfg.min_aspect <= aspect <= cfg.max_aspect:
        raise Rejection(
            Reason.bad_aspect_ratio, f"width/height {aspect:.3g} outside [{cfg.min_aspect}, {cfg.max_aspect}]"
        )


def check_figures(fig: QualityFigures, cfg: QualityConfig) -> None:
    """Raise Rejection(near_uniform | badly_exposed | blurry). Near-uniform first: a blank frame is also 'blurry'."""
    if fig.contrast < cfg.min_contrast:
        raise Rejection(Reason.near_uniform, f"grey std {fig.contrast:.3g} < {cfg.min_contrast}")
    if fig.clipped > cfg.max_clipped:
        raise Rejection(Reason.badly_exposed, f"{fig.clipped:.1%} of pixels clipped > {cfg.max_clipped:.0%}")
    if fig.blur < cfg.min_blur:
        raise Rejection(Reason.blurry, f"Laplacian variance {fig.blur:.3g} < {cfg.min_blur}")
