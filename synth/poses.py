"""Body poses drawn by family, so that renders cover the poses a person-centric model meets.

    pose = sample_pose(rng)                       # a family drawn by FAMILY_WEIGHTS
    pose = sample_pose(rng, families=["lying"])   # or from some families only (config: bodies.families)
    pose.joints      # anny bone -> [x, y, z] degrees about the bone's reference axes
    pose.rotation()  # (3, 3) whole-body rotation in the world (y up, facing +z), applied after posing

Families: standing, walking, sitting (on a seat or on the floor), crouching, arms raised, turned away
(standing or walking with the back to azimuth 0) and lying (on the back, front or either side, any
heading). Every family adds everyday variation to all the main joints. Angles follow anny's reference
axes, measured on its skeleton: x flexes in the sagittal plane (hip and shoulder forward < 0, knee
bend > 0, elbow bend < 0, spine forward bend > 0), y moves in the frontal plane (the left arm or leg away
from the body < 0), z twists; the right side uses the mirror image (y and z negated).
Not covered: contact with objects or the ground (no chair, floor or other person is rendered, nothing
stops a hand from passing through the body), hand gestures (fingers stay in anny's rest pose), facial
expressions, and poses such as handstands, cartwheels or sports extremes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

PoseFamily = Literal["standing", "walking", "sitting", "crouching", "arms_raised", "turned_away", "lying"]
POSE_FAMILIES: tuple[PoseFamily, ...] = get_args(PoseFamily)
# Upright everyday poses dominate photos of people; the rarer families still get a fair share.
FAMILY_WEIGHTS: dict[PoseFamily, float] = {
    "standing": 0.2,
    "walking": 0.18,
    "sitting": 0.14,
    "crouching": 0.12,
    "arms_raised": 0.12,
    "turned_away": 0.12,
    "lying": 0.12,
}
LyingSide = Literal["back", "front", "left", "right"]

Range = tuple[float, float]
Ranges = tuple[Range, Range, Range]

# Everyday variation every family starts from (person's LEFT side for sided bones).
RELAXED: dict[str, Ranges] = {
    "upperarm01": ((-30, 25), (-20, 25), (-25, 25)),
    "lowerarm01": ((-60, 0), (-5, 5), (-20, 20)),
    "wrist": ((-30, 30), (-20, 20), (-20, 20)),
    "upperleg01": ((-10, 8), (-8, 4), (-10, 10)),
    "lowerleg01": ((0, 12), (-3, 3), (-5, 5)),
    "foot": ((-15, 15), (-5, 5), (-10, 10)),
    "spine04": ((-5, 10), (-6, 6), (-12, 12)),
    "spine02": ((-5, 10), (-6, 6), (-12, 12)),
    "neck01": ((-15, 20), (-12, 12), (-35, 35)),
}
_MIDLINE = ("spine04", "spine02", "neck01")


@dataclass(frozen=True)
class BodyPose:
    family: PoseFamily
    joints: dict[str, list[float]]  # anny bone label -> [x, y, z] Euler degrees ("xyz")
    yaw_deg: float = 0.0  # about the world's vertical; 180 = the back towards azimuth 0
    lying: LyingSide | None = None  # which side the body lies on, None when upright
    extra: dict = field(default_factory=dict)  # JSON-able details (e.g. which leg leads)

    def rotation(self) -> np.ndarray:
        """(3, 3) whole-body rotation in the world frame (y up, the unrotated body facing +z)."""
        lie = {
            None: np.eye(3),
            "back": _rot_x(-90.0),  # facing +z -> facing up, head towards -z
            "front": _rot_x(90.0),  # facing down
            "left": _rot_z(-90.0),  # the left side (+x) down, head towards -x, still facing +z
            "right": _rot_z(90.0),
        }[self.lying]
        return _rot_y(self.yaw_deg) @ lie

    def as_json(self) -> dict:
        return {
            "family": self.family,
            "yaw_deg": round(self.yaw_deg, 4),
            "lying": self.lying,
            "joints_deg": {k: [round(a, 4) for a in v] for k, v in self.joints.items()},
            **self.extra,
        }


def sample_pose(rng: np.random.Generator, scale: float = 1.0, families: Sequence[str] = POSE_FAMILIES) -> BodyPose:
    """One pose of a family drawn from `families` by FAMILY_WEIGHTS. `scale` multiplies every joint angle
    (0 = anny's rest pose, standing, facing +z)."""
    check_families(families)
    if scale == 0.0:
        return BodyPose(family="standing", joints={})
    weights = np.array([FAMILY_WEIGHTS[f] for f in families])  # type: ignore[index]
    family: PoseFamily = families[int(rng.choice(len(families), p=weights / weights.sum()))]  # type: ignore[assignment]
    left = {bone: _draw(rng, r) for bone, r in RELAXED.items()}
    right = {bone: _draw(rng, r) for bone, r in RELAXED.items() if bone not in _MIDLINE}
    yaw, lying, extra = 0.0, None, {}
    if family == "walking" or (family == "turned_away" and rng.random() < 0.5):
        extra["lead"] = _walk(rng, left, right)
    elif family == "sitting":
        extra["seat"] = _sit(rng, left, right)
    elif family == "crouching":
        _crouch(rng, left, right)
    elif family == "arms_raised":
        extra["arms"] = _raise_arms(rng, left, right)
    elif family == "lying":
        lying = ("back", "front", "left", "right")[int(rng.integers(4))]
        _lie(rng, left, right, lying)
        yaw = float(rng.uniform(0.0, 360.0))
    if family == "turned_away":
        yaw = float(rng.uniform(140.0, 220.0))
    joints: dict[str, list[float]] = {}
    for bone, angles in left.items():
        scaled = [a * scale for a in angles]
        if bone in _MIDLINE:
            joints[bone] = scaled
            continue
        joints[f"{bone}.L"] = scaled
        x, y, z = (a * scale for a in right[bone])
        joints[f"{bone}.R"] = [x, -y, -z]  # the mirror image through x = 0
    return BodyPose(family=family, joints=joints, yaw_deg=yaw, lying=lying, extra=extra)


def check_families(families: Sequence[str]) -> None:
    bad = sorted(set(families) - set(POSE_FAMILIES))
    if bad or not families:
        raise ValueError(
            f"pose families must be a non-empty subset of {', '.join(POSE_FAMILIES)}; got {list(families)}"
        )


# ------------------------------------------------------------------------------------------- families
# Each edits the LEFT and RIGHT angle tables in place (both in left-side convention).


def _walk(rng: np.random.Generator, left: dict, right: dict) -> str:
    lead_is_left = bool(rng.random() < 0.5)
    lead, trail = (left, right) if lead_is_left else (right, left)
    stride = rng.uniform(0.6, 1.0)
    lead["upperleg01"][0] = -rng.uniform(20, 35) * stride
    lead["lowerleg01"][0] = rng.uniform(5, 25)
    trail["upperleg01"][0] = rng.uniform(12, 22) * stride
    trail["lowerleg01"][0] = rng.uniform(20, 55)
    # Arms swing against the legs: the lead leg's arm goes back.
    lead["upperarm01"][0] = rng.uniform(10, 30) * stride
    trail["upperarm01"][0] = -rng.uniform(15, 35) * stride
    for side in (lead, trail):
        side["upperarm01"][1] = rng.uniform(5, 20)  # close to the body
        side["lowerarm01"][0] = -rng.uniform(10, 45)
    return "left" if lead_is_left else "right"


def _sit(rng: np.random.Generator, left: dict, right: dict) -> str:
    on_floor = bool(rng.random() < 0.35)
    for side in (left, right):
        side["upperleg01"][0] = -rng.uniform(80, 100)
        side["upperleg01"][1] = -rng.uniform(0, 12)
        side["lowerleg01"][0] = rng.uniform(0, 35) if on_floor else rng.uniform(70, 100)
        side["upperarm01"][0] = -rng.uniform(10, 40)  # hands towards the lap
        side["lowerarm01"][0] = -rng.uniform(30, 80)
    left["spine04"][0] = rng.uniform(-5, 12)
    return "floor" if on_floor else "chair"


def _crouch(rng: np.random.Generator, left: dict, right: dict) -> None:
    for side in (left, right):
        side["upperleg01"][0] = -rng.uniform(105, 130)
        side["upperleg01"][1] = -rng.uniform(5, 20)  # knees apart
        side["lowerleg01"][0] = rng.uniform(120, 140)
        side["foot"][0] = rng.uniform(-25, 0)
        side["upperarm01"][0] = -rng.uniform(20, 60)
        side["lowerarm01"][0] = -rng.uniform(20, 90)
    left["spine04"][0] = rng.uniform(15, 30)
    left["spine02"][0] = rng.uniform(5, 20)


def _raise_arms(rng: np.random.Generator, left: dict, right: dict) -> str:
    which = ("both", "left", "right")[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    for name, side in (("left", left), ("right", right)):
        if which in ("both", name):
            side["upperarm01"][1] = -rng.uniform(110, 135)  # up past the head in the frontal plane
            side["upperarm01"][0] = -rng.uniform(0, 30)
            side["lowerarm01"][0] = -rng.uniform(0, 40)
    return which


def _lie(rng: np.random.Generator, left: dict, right: dict, side: LyingSide) -> None:
    """Limbs move in the floor's plane, so that none reaches through the ground and lifts the body off it."""
    if side in ("back", "front"):  # the frontal plane is the floor
        for limb in (left, right):
            limb["upperarm01"] = [rng.uniform(-10, 10), -rng.uniform(0, 80), rng.uniform(-20, 20)]
            limb["lowerarm01"][0] = -rng.uniform(0, 60)
            limb["upperleg01"] = [rng.uniform(-5, 0), -rng.uniform(0, 20), rng.uniform(-10, 10)]
        bent = left if rng.random() < 0.5 else right
        if side == "back" and rng.random() < 0.5:  # one knee drawn up towards the sky
            bent["upperleg01"][0] = -rng.uniform(30, 70)
            bent["lowerleg01"][0] = rng.uniform(40, 100)
        elif side == "front":  # a lower leg raised off the floor
            bent["lowerleg01"][0] = rng.uniform(0, 80)
        return
    lower, upper = (left, right) if side == "left" else (right, left)  # the sagittal plane is the floor
    # The lower arm lies along the body (anny's rest arms point 40 degrees out, i.e. into the floor).
    lower["upperarm01"] = [rng.uniform(-15, 5), rng.uniform(38, 48), rng.uniform(-20, 20)]
    upper["upperarm01"] = [-rng.uniform(0, 60), rng.uniform(10, 40), rng.uniform(-20, 20)]
    for limb in (lower, upper):
        limb["lowerarm01"][0] = -rng.uniform(0, 90)
        limb["upperleg01"][0] = -rng.uniform(0, 60)  # the recovery position's bent hips and knees
        limb["lowerleg01"][0] = rng.uniform(0, 90)


def _draw(rng: np.random.Generator, ranges: Ranges) -> list[float]:
    return [float(rng.uniform(lo, hi)) for lo, hi in ranges]


def _rot_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
