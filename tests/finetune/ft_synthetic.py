"""Synthetic people for fine-tuning tests: a stick figure facing the camera, drawn with OpenCV, with every label
the sample contract has (coco17 pose, goliath28 seg, depth, normals, mask), all consistent with the picture.

The figure's left side is on the image's right (it faces us), so a mirror must swap left/right classes and
keypoints: what the flip tests check.
"""

from __future__ import annotations

import numpy as np

from data_engine.sample import PersonPose, Pose, Sample, key_from_params
from data_engine.shards import ShardWriter

# coco17 template in units of the figure's height (x right from centre, y down from the top).
_TEMPLATE = {
    "nose": (0.0, 0.08),
    "left_eye": (0.03, 0.06),
    "right_eye": (-0.03, 0.06),
    "left_ear": (0.06, 0.07),
    "right_ear": (-0.06, 0.07),
    "left_shoulder": (0.12, 0.2),
    "right_shoulder": (-0.12, 0.2),
    "left_elbow": (0.2, 0.35),
    "right_elbow": (-0.2, 0.35),
    "left_wrist": (0.24, 0.5),
    "right_wrist": (-0.24, 0.5),
    "left_hip": (0.08, 0.52),
    "right_hip": (-0.08, 0.52),
    "left_knee": (0.1, 0.74),
    "right_knee": (-0.1, 0.74),
    "left_ankle": (0.11, 0.96),
    "right_ankle": (-0.11, 0.96),
}
_NAMES = list(_TEMPLATE)
# (from, to, goliath28 class, colour): each limb its own class and colour, so the picture carries the labels.
_LIMBS = [
    ("left_shoulder", "left_elbow", 10, (230, 60, 60)),
    ("left_elbow", "left_wrist", 6, (240, 140, 40)),
    ("right_shoulder", "right_elbow", 19, (60, 60, 230)),
    ("right_elbow", "right_wrist", 15, (40, 160, 240)),
    ("left_hip", "left_knee", 11, (200, 200, 40)),
    ("left_knee", "left_ankle", 7, (140, 220, 60)),
    ("right_hip", "right_knee", 20, (160, 40, 200)),
    ("right_knee", "right_ankle", 16, (230, 80, 200)),
]
TORSO_CLASS, FACE_CLASS = 21, 2


def person_sample(seed: int, height: int = 96, width: int = 72, vocabulary: str = "goliath28") -> Sample:
    """One synthetic person with pose (coco17), seg, depth (m), normal and mask; varies with `seed`."""
    import cv2

    rng = np.random.default_rng(seed)
    fig_h = height * rng.uniform(0.7, 0.85)
    cx = width / 2 + rng.uniform(-0.08, 0.08) * width
    top = rng.uniform(0.04, height - fig_h - 0.04 * height)
    pts = {}
    for name, (tx, ty) in _TEMPLATE.items():
        jitter = rng.normal(0, 0.015, 2)
        pts[name] = np.array([cx + (tx + jitter[0]) * fig_h, top + (ty + jitter[1]) * fig_h])
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = rng.integers(20, 90, 3)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    seg = np.zeros((height, width), np.uint8)
    thick = max(2, round(fig_h * 0.06))

    torso = np.array([pts["left_shoulder"], pts["right_shoulder"], pts["right_hip"], pts["left_hip"]], np.float32)
    head_c = pts["nose"] + np.array([0, -0.01 * fig_h])
    head_r = 0.075 * fig_h
    # The image and the seg are drawn with the same primitives in the same order.
    for target, colour_of in ((image, lambda c, k: c), (seg, lambda c, k: k)):
        cv2.fillConvexPoly(
            target,
            np.round(torso * 16).astype(np.int32),
            colour_of((120, 120, 120), TORSO_CLASS),
            lineType=cv2.LINE_8,
            shift=4,
        )
        cv2.circle(
            target,
            tuple(np.round(head_c * 16).astype(int)),
            round(head_r * 16),
            colour_of((220, 180, 150), FACE_CLASS),
            -1,
            lineType=cv2.LINE_8,
            shift=4,
        )
        for a, b, cls, colour in _LIMBS:
            cv2.line(
                target,
                tuple(np.round(pts[a] * 16).astype(int)),
                tuple(np.round(pts[b] * 16).astype(int)),
                colour_of(colour, cls),
                thick,
                lineType=cv2.LINE_8,
                shift=4,
            )
    # Eyes as small dark dots, so left/right eye are visible in the picture.
    for name in ("left_eye", "right_eye"):
        cv2.circle(image, tuple(np.round(pts[name] * 16).astype(int)), 16, (20, 20, 20), -1, shift=4)
    mask = seg > 0
    # Depth: a body 2-3 m away bulging towards the camera at its centre line; normals of the same bulge.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    u = np.clip((xs - cx) / (0.3 * fig_h), -0.95, 0.95)
    base = rng.uniform(2.0, 3.0)
    depth = np.where(mask, base - 0.2 * np.sqrt(1 - u**2) + 0.1 * (ys - top) / fig_h, 0).astype(np.float32)
    normal = np.stack([u, 0.1 * np.ones_like(u), -np.sqrt(1 - u**2)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal = np.where(mask[..., None], normal, 0).astype(np.float32)
    kp = np.array([[*pts[n], 2.0] for n in _NAMES], np.float32)
    x0, y0 = kp[:, 0].min() - head_r, top
    x1, y1 = kp[:, 0].max() + thick, kp[:, 1].max() + thick
    pose = Pose("coco17", [PersonPose(bbox=(float(x0), float(y0), float(x1), float(y1)), keypoints=kp)])
    if vocabulary == "lip20":
        seg = _to_lip(seg)
    key = key_from_params({"synthetic_person": seed, "h": height, "w": width, "vocab": vocabulary})
    return Sample(
        key=key,
        image=image,
        meta={"seg_vocabulary": vocabulary},
        pose=pose,
        seg=seg,
        depth=depth,
        normal=normal,
        mask=mask,
    )


def _to_lip(seg: np.ndarray) -> np.ndarray:
    # goliath28 -> lip20 for the classes drawn: arms 14/15, legs 16/17, face 13, torso -> upper clothes 5.
    lut = np.zeros(256, np.uint8)
    lut[255] = 255
    for g, lip in {10: 14, 6: 14, 19: 15, 15: 15, 11: 16, 7: 16, 20: 17, 16: 17, 2: 13, 21: 5}.items():
        lut[g] = lip
    return lut[seg]


def write_shards(prefix: str, samples: list[Sample], max_count: int = 1000) -> list[str]:
    with ShardWriter(prefix, max_count=max_count) as writer:
        for sample in samples:
            writer.write(sample)
    return [s.path for s in writer.shards]
