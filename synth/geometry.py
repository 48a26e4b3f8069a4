"""What the renderer draws, as plain data: a subject's geometry and the lights of a view.

Scans, bodies and views build these; `synth.render` draws them. This module imports only numpy and the synth config
(trimesh for type checking), so scan and view code can run without loading OpenGL or pyrender.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from synth.config import LightKind

if TYPE_CHECKING:
    import trimesh


@dataclass(frozen=True)
class LightSpec:
    kind: LightKind
    color: tuple[float, float, float]  # linear RGB in [0, 1]
    intensity: float  # W/m^2 for directional (pyrender's lux-like unit), candela for point and spot
    pose: np.ndarray  # (4, 4) light-to-world; lights shine down their local -z
    cone_deg: float = 30.0  # spot: outer cone half-angle; the inner cone is 70% of it


@dataclass
class SubjectGeometry:
    """What the renderer draws for one subject, in world coordinates (metres, y up).

    display:     textured or coloured meshes for the RGB pass (trimesh, vertices in world coordinates)
    positions:   (V, 3) float vertex positions for the geometry pass
    normals:     (V, 3) float unit vertex normals (smooth shading)
    faces:       (F, 3) int triangle indices into positions
    face_labels: (F,) uint8 goliath28 class per triangle, or None when the subject has no part labels
    """

    display: list[trimesh.Trimesh]
    positions: np.ndarray
    normals: np.ndarray
    faces: np.ndarray
    face_labels: np.ndarray | None = None
