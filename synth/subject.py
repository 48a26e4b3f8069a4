"""A subject to render (a scan or a parametric body), normalised to the package's world frame.

World frame: metres, y up, the person standing on y = 0 with the centre of its footprint at x = z = 0,
facing +z where the source says which way is front (parametric bodies do; scans keep their own yaw).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from synth.geometry import SubjectGeometry

SubjectKind = Literal["scan", "body"]


@dataclass
class Landmarks:
    """Named 3D keypoints (Goliath names) and what decides whether each is visible.

    points:   (K, 3) world positions
    support:  per landmark, (S, 3) surface points: the landmark counts as visible when any of them is
              seen by the camera (joints inside the body have no surface point of their own)
    tolerance: metres a support point may lie behind the rendered surface and still count as seen
    """

    names: list[str]
    points: np.ndarray
    support: list[np.ndarray]
    tolerance: float


@dataclass
class Posed:
    """One pose of a subject: what the renderer draws and where its landmarks are.

    params: JSON-able description of the pose (written into each of its views' json), {} for a scan
    """

    geometry: SubjectGeometry
    landmarks: Landmarks | None = None
    params: dict = field(default_factory=dict)

    @property
    def height_m(self) -> float:
        y = self.geometry.positions[:, 1]
        return float(y.max() - y.min())

    @property
    def extent_m(self) -> float:
        """The largest side of the bounding box: what a camera must frame (a lying body is long, not tall)."""
        return float(np.ptp(self.geometry.positions, axis=0).max())

    @property
    def centre(self) -> np.ndarray:
        lo, hi = self.geometry.positions.min(0), self.geometry.positions.max(0)
        return (lo + hi) / 2.0


@dataclass
class Subject:
    """A person to render in one or more poses (a scan has one; a parametric body may have several).

    All poses share topology, UVs, materials and part labels, so the renderer keeps its textures between them.
    """

    id: str  # unique and stable: shard prefix and manifest row
    kind: SubjectKind
    uri: str
    poses: list[Posed]
    params: dict = field(default_factory=dict)  # JSON-able: what made this subject (goes into each sample's json)
    warnings: list[str] = field(default_factory=list)
    # Scans only: (4, 4) from the scan file's own axes, in metres (after units), to the render world, so that a
    # user can project their own scan-frame points with K @ world_to_camera @ scan_to_world.
    scan_to_world: np.ndarray | None = None

    @property
    def geometry(self) -> SubjectGeometry:
        """The first pose's geometry (a scan's only one)."""
        return self.poses[0].geometry

    @property
    def landmarks(self) -> Landmarks | None:
        return self.poses[0].landmarks

    @property
    def height_m(self) -> float:
        return self.poses[0].height_m

    @property
    def centre(self) -> np.ndarray:
        return self.poses[0].centre

    def pose_of_view(self, view: int, views: int) -> int:
        """Views are spread evenly over the poses: with 4 views and 2 poses, views 0-1 show pose 0."""
        return min(view * len(self.poses) // views, len(self.poses) - 1)


def normalising_transform(positions: np.ndarray) -> np.ndarray:
    """(4, 4) translation putting the lowest point on y = 0 and the footprint centre at x = z = 0."""
    lo, hi = positions.min(0), positions.max(0)
    t = np.eye(4)
    t[:3, 3] = [-(lo[0] + hi[0]) / 2.0, -lo[1], -(lo[2] + hi[2]) / 2.0]
    return t


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by its inputs (for splits): the same on every machine and every run."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def subject_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")
