"""The sample contract's types: `Sample`, `Pose`, `PersonPose`, `SampleError` and the contract's constants.

Import them from `data_engine.sample`, which re-exports them with the codecs and `encode` / `decode`. Imports only
numpy and the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

SCHEMA_VERSION = 1
MAX_DEPTH_M = 65.535  # uint16 millimetres
ImageFormat = Literal["jpg", "png"]
IMAGE_MEMBERS: tuple[ImageFormat, ...] = ("jpg", "png")
LABEL_MEMBERS = ("pose.json", "seg.png", "depth.png", "normal.png", "mask.png")
# A `Sample` attribute -> the label member it is decoded from ("seg" -> "seg.png").
LABEL_MEMBER_OF: dict[str, str] = {name.split(".")[0]: name for name in LABEL_MEMBERS}
KEY_PATTERN = re.compile(r"^[0-9a-f]{1,64}$")


class SampleError(ValueError):
    """A sample that breaks the contract. The message names the sample key and the member."""


@dataclass
class PersonPose:
    """One person's keypoints. `keypoints` is (K, 3) float32 of [x, y, v], v in {0, 1, 2} (COCO)."""

    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    keypoints: np.ndarray


@dataclass
class Pose:
    keypoint_set: str  # a subset name from data_engine.schema, e.g. "all" (308) or "coco17"
    persons: list[PersonPose] = field(default_factory=list)


@dataclass
class Sample:
    """One sample. Dense maps have the image's (H, W); absent labels are None.

    image:   (H, W, 3) uint8 RGB
    meta:    the `json` member (schema_version, width and height are filled in by `encode`)
    depth:   (H, W) float32 metres, 0 = no surface
    normal:  (H, W, 3) float32 camera-space unit normals (OpenCV axes), (0, 0, 0) = no surface
    seg:     (H, W) uint8 class ids of `meta["seg_vocabulary"]` (default goliath28), 255 = ignore
    mask:    (H, W) bool person foreground
    image_bytes: the encoded image as received, written unchanged when given (format `image_format`)
    """

    key: str
    image: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    pose: Pose | None = None
    seg: np.ndarray | None = None
    depth: np.ndarray | None = None
    normal: np.ndarray | None = None
    mask: np.ndarray | None = None
    image_bytes: bytes | None = None
    image_format: ImageFormat = "png"

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def seg_vocabulary(self) -> str:
        return str(self.meta.get("seg_vocabulary", "goliath28"))
