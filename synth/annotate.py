"""Pose labels of a render: project landmarks, decide visibility from the rendered depth, box the person.

Visibility (COCO): 2 = inside the image and seen, 1 = inside the image but hidden (by the body or
another part), 0 = outside the image or not given by the subject. A landmark is seen when any of its
support points (surface points near it) projects inside the image and lies no more than `tolerance`
metres behind the depth rendered at that pixel.
"""

from __future__ import annotations

import numpy as np

from data_engine import schema
from data_engine.sample import PersonPose, Pose
from synth.camera import PinholeCamera
from synth.subject import Landmarks

VISIBLE, OCCLUDED, UNLABELLED = 2, 1, 0


def _inside(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    finite = np.all(np.isfinite(uv), axis=-1)
    safe = np.where(finite[..., None], uv, -1.0)
    return finite & (safe[..., 0] >= 0) & (safe[..., 0] < width) & (safe[..., 1] >= 0) & (safe[..., 1] < height)


def seen(points: np.ndarray, camera: PinholeCamera, depth: np.ndarray, tolerance: float) -> np.ndarray:
    """(N,) bool: which world points the camera sees, given the rendered depth (H, W) in metres."""
    uv, z = camera.project(points)
    inside = _inside(uv, camera.width, camera.height)
    out = np.zeros(len(points), dtype=bool)
    if inside.any():
        cols = np.floor(uv[inside, 0]).astype(np.int64)
        rows = np.floor(uv[inside, 1]).astype(np.int64)
        surface = depth[rows, cols]
        out[inside] = (surface > 0) & (z[inside] <= surface + tolerance)
    return out


def keypoints(landmarks: Landmarks, camera: PinholeCamera, depth: np.ndarray) -> np.ndarray:
    """(308, 3) float32 [x, y, v] in the Goliath layout; points the subject does not give have v = 0."""
    out = np.zeros((schema.NUM_KEYPOINTS, 3), dtype=np.float32)
    index = schema.keypoint_index()
    uv, _ = camera.project(landmarks.points)
    inside = _inside(uv, camera.width, camera.height)
    for k, name in enumerate(landmarks.names):
        if not inside[k]:
            continue  # outside the image: v = 0 and no coordinates, as COCO writes it
        visible = bool(seen(landmarks.support[k], camera, depth, landmarks.tolerance).any())
        out[index[name]] = (uv[k, 0], uv[k, 1], VISIBLE if visible else OCCLUDED)
    return out


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight box (x0, y0, x1, y1) around the mask in continuous pixel coordinates, None if empty."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return float(x0), float(y0), float(x1 + 1), float(y1 + 1)


def pose_label(landmarks: Landmarks | None, camera: PinholeCamera, depth: np.ndarray, mask: np.ndarray) -> Pose | None:
    bbox = mask_bbox(mask)
    if landmarks is None or bbox is None:
        return None
    return Pose(keypoint_set="all", persons=[PersonPose(bbox=bbox, keypoints=keypoints(landmarks, camera, depth))])
