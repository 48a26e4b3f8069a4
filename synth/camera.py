"""Pinhole cameras in the two conventions the package meets, and projection of 3D points.

OpenCV axes (what the shards store): x right, y down, z forward; pixel coordinates are continuous with
the centre of pixel (row 0, col 0) at (0.5, 0.5), so a point projects to (fx X / Z + cx, fy Y / Z + cy).
GL axes (what pyrender draws with): x right, y up, the camera looks down -z.
Both share the camera centre, so converting is a flip of the y and z axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Multiplying a GL camera-space vector by this gives the OpenCV one (and back: it is its own inverse).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics plus the world-to-camera transform in OpenCV axes.

    K:               (3, 3) intrinsics in pixels
    world_to_camera: (4, 4) rigid transform, OpenCV camera axes
    """

    width: int
    height: int
    K: np.ndarray
    world_to_camera: np.ndarray

    @property
    def camera_to_world_gl(self) -> np.ndarray:
        """(4, 4) pose of the camera in the world as pyrender wants it (GL axes)."""
        return np.linalg.inv(GL_TO_CV @ self.world_to_camera)

    def gl_projection(self, znear: float, zfar: float) -> np.ndarray:
        """(4, 4) GL projection matrix equal to pyrender's IntrinsicsCamera, so both passes line up."""
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        w, h = float(self.width), float(self.height)
        p = np.zeros((4, 4))
        p[0, 0] = 2.0 * fx / w
        p[1, 1] = 2.0 * fy / h
        p[0, 2] = 1.0 - 2.0 * cx / w
        p[1, 2] = 2.0 * cy / h - 1.0
        p[3, 2] = -1.0
        p[2, 2] = (zfar + znear) / (znear - zfar)
        p[2, 3] = 2.0 * zfar * znear / (znear - zfar)
        return p

    def to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) OpenCV camera-space points."""
        pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
        r, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return pts @ r.T + t

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points -> ((N, 2) pixel xy, (N,) camera z). Points behind the camera get NaN xy."""
        cam = self.to_camera(points_world)
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam @ self.K.T)[:, :2] / z[:, None]
        uv[z <= 0] = np.nan
        return uv, z

    def as_json(self) -> dict:
        return {"K": self.K.tolist(), "world_to_camera": self.world_to_camera.tolist()}


def intrinsics(width: int, height: int, focal_px: float) -> np.ndarray:
    """Square pixels, principal point at the image centre (continuous coordinates)."""
    return np.array([[focal_px, 0.0, width / 2.0], [0.0, focal_px, height / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 1.0, 0.0]), roll_deg: float = 0.0):
    """(4, 4) world-to-camera in OpenCV axes for a camera at `eye` looking at `target` (world y is up)."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:  # looking straight up or down: any right vector will do
        right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    roll = np.deg2rad(roll_deg)
    right, down = np.cos(roll) * right + np.sin(roll) * down, -np.sin(roll) * right + np.cos(roll) * down
    rotation = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    w2c = np.eye(4)
    w2c[:3, :3] = rotation
    w2c[:3, 3] = -rotation @ eye
    return w2c
