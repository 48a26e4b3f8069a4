"""Pose families: each one measured on posed anny bodies (joint positions, not the label), and their renders."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from data_engine import schema
from data_engine.shards import iter_samples
from humanvision_cli import main
from synth.config import BodyConfig
from synth.poses import FAMILY_WEIGHTS, POSE_FAMILIES, sample_pose

UP = np.array([0.0, 1.0, 0.0])


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def measure(points: dict[str, np.ndarray]) -> dict[str, float]:
    """Joint angles and positions of one posed body, world frame (metres, y up)."""
    mid_hip = (points["left_hip"] + points["right_hip"]) / 2
    mid_shoulder = (points["left_shoulder"] + points["right_shoulder"]) / 2
    thighs = {s: points[f"{s}_knee"] - points[f"{s}_hip"] for s in ("left", "right")}
    knees = {
        s: angle_deg(points[f"{s}_hip"] - points[f"{s}_knee"], points[f"{s}_ankle"] - points[f"{s}_knee"])
        for s in ("left", "right")
    }
    facing = np.cross(points["left_shoulder"] - points["right_shoulder"], UP)  # the chest's normal, horizontal
    facing /= max(np.linalg.norm(facing), 1e-9)
    leg = np.mean(
        [np.linalg.norm(thighs[s]) + np.linalg.norm(points[f"{s}_ankle"] - points[f"{s}_knee"]) for s in thighs]
    )
    every = np.stack(list(points.values()))
    return {
        "torso_tilt": angle_deg(mid_shoulder - mid_hip, UP),
        "thigh_tilt_min": min(angle_deg(t, -UP) for t in thighs.values()),
        "thigh_tilt_max": max(angle_deg(t, -UP) for t in thighs.values()),
        "thigh_split": angle_deg(thighs["left"], thighs["right"]),
        "knee_min": min(knees.values()),
        "knee_max": max(knees.values()),
        "wrist_over_nose": max(points[f"{s}_wrist"][1] for s in ("left", "right")) - points["nose"][1],
        "facing_z": float(facing[2]),
        "hip_height_over_leg": (mid_hip[1] - min(points["left_ankle"][1], points["right_ankle"][1])) / leg,
        "tallness": float(np.ptp(every[:, 1])),
        "trunk_height": float(max(mid_hip[1], mid_shoulder[1]) - every[:, 1].min()),
    }


# What each family must look like, measured. Upright families face +z (azimuth 0 sees the front).
CHECKS = {
    "standing": lambda m: m["torso_tilt"] < 20
    and m["thigh_tilt_max"] < 20
    and m["knee_min"] > 160
    and m["wrist_over_nose"] < 0
    and m["facing_z"] > 0.5,
    "walking": lambda m: m["torso_tilt"] < 25 and m["thigh_split"] > 14 and m["facing_z"] > 0.5,
    "sitting": lambda m: m["torso_tilt"] < 30 and m["thigh_tilt_min"] > 60,
    "crouching": lambda m: m["knee_max"] < 75 and m["hip_height_over_leg"] < 0.5,
    "arms_raised": lambda m: m["wrist_over_nose"] > 0.05 and m["torso_tilt"] < 25,
    "turned_away": lambda m: m["facing_z"] < -0.5 and m["torso_tilt"] < 25,
    # Lying: the trunk flat and low (a raised arm or knee of a body on its side may still reach up).
    "lying": lambda m: m["torso_tilt"] > 60 and m["trunk_height"] < 0.45,
}


def test_sampler_draws_every_family_by_its_weight_and_is_deterministic():
    rng = np.random.default_rng(0)
    drawn = [sample_pose(rng).family for _ in range(1400)]
    for family in POSE_FAMILIES:
        assert abs(drawn.count(family) / len(drawn) - FAMILY_WEIGHTS[family]) < 0.04, family
    a, b = sample_pose(np.random.default_rng(3)), sample_pose(np.random.default_rng(3))
    assert a == b and a.as_json() == b.as_json()
    assert sample_pose(np.random.default_rng(3), families=["lying"]).lying in ("back", "front", "left", "right")
    rest = sample_pose(np.random.default_rng(3), scale=0.0)
    assert rest.joints == {} and np.allclose(rest.rotation(), np.eye(3))
    with pytest.raises(ValueError, match="pose families must be a non-empty subset"):
        sample_pose(rng, families=["dancing"])
    with pytest.raises(ValueError, match="pose families must be a non-empty subset"):
        sample_pose(rng, families=[])


def test_whole_body_rotations_lay_the_body_down_or_turn_it_away():
    for _ in range(20):
        lying = sample_pose(np.random.default_rng(_), families=["lying"])
        assert abs(lying.rotation() @ UP @ UP) < 1e-9  # the head-to-foot axis lies flat
        away = sample_pose(np.random.default_rng(_), families=["turned_away"])
        assert (away.rotation() @ np.array([0.0, 0.0, 1.0]))[2] < -0.7  # the front faces away from azimuth 0
    rotation = sample_pose(np.random.default_rng(1), families=["lying"]).rotation()
    assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1.0)


@pytest.fixture(scope="module")
def body_model():
    from synth.bodies import BodyModel

    return BodyModel(texture_size=64)


@pytest.mark.slow
@pytest.mark.parametrize("family", POSE_FAMILIES)
def test_each_family_is_that_pose_measured_on_the_posed_body(body_model, family):
    failures = []
    for index in range(2):  # two people, three poses each, posed in one batch
        body = body_model.sample(index, seed=7, config=BodyConfig(families=[family]), poses=3)
        assert len(body.poses) == 3 and len({str(p.params) for p in body.poses}) == 3
        for posed in body.poses:
            assert posed.params["family"] == family
            m = measure(dict(zip(posed.landmarks.names, posed.landmarks.points, strict=True)))
            if not CHECKS[family](m):
                failures.append({k: round(v, 2) for k, v in m.items()})
            # Every pose stands on (or lies on) the ground and keeps the body's labels.
            assert posed.geometry.positions[:, 1].min() == pytest.approx(0.0, abs=1e-9)
            assert posed.geometry.face_labels is body.poses[0].geometry.face_labels
    assert not failures, f"{family}: {failures}"


@pytest.mark.slow
def test_body_sizes_vary_from_children_to_tall_adults(body_model):
    heights = []
    for index in range(12):
        body = body_model.sample(index, seed=0, config=BodyConfig(pose_scale=0.0))
        heights.append(body.poses[0].height_m)
    assert min(heights) < 1.45 and max(heights) > 1.75, heights


def hv(*argv: str) -> int:
    try:
        main(["synth", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lying", "turned_away"])
def test_views_of_lying_and_turned_away_bodies_have_valid_labels(tmp_path, family):
    out = tmp_path / "o"
    argv = ["--bodies", "2", "--views", "3", "--size", "128x96", "--out", str(out), "inline=true"]
    # The camera stands where the body's front would be (azimuth 0), so a turned-away body shows its back.
    assert hv(*argv, f"bodies.families=[{family}]", "camera.azimuth_deg=[-10,10]") == 0
    assert all(r["status"] == "done" for r in pq.read_table(out / "manifest.parquet").to_pylist())
    nose = schema.keypoint_index()["nose"]
    got = list(iter_samples(str(out / "shards"), policy="raise"))
    assert len(got) == 6 and len({str(s.meta["synth"]["pose"]) for s in got}) == 6  # a pose per view
    for s in got:
        assert s.meta["synth"]["pose"]["family"] == family
        mask = s.mask
        # Framed whole: a lying body is long, not tall, and the camera must frame its length.
        assert 0.03 < mask.mean() < 0.7
        assert mask[0].sum() + mask[-1].sum() + mask[:, 0].sum() + mask[:, -1].sum() < 20
        assert set(np.unique(s.seg[mask])) - {0} and np.all(s.seg[~mask] == 0)
        kp = s.pose.persons[0].keypoints
        visible = kp[kp[:, 2] == 2]
        assert len(visible) >= 8
        near = ndimage.binary_dilation(mask, iterations=2)
        assert np.all(near[visible[:, 1].astype(int), visible[:, 0].astype(int)])
        if family == "turned_away":
            assert kp[nose, 2] == 1  # in the picture, hidden behind the head


@pytest.mark.slow
def test_default_cameras_see_a_facing_body_from_the_front(tmp_path):
    """The default camera stands in the body's front half, as in most photos of people: a standing body's left
    shoulder is on the image's right whenever the camera is within 60 degrees of straight ahead. With cameras all
    round, front and back views were equally likely and the models put left and right on the same limb."""
    out = tmp_path / "o"
    argv = ["--bodies", "3", "--views", "4", "--size", "128x96", "--out", str(out), "inline=true"]
    assert hv(*argv, "bodies.families=[standing]") == 0
    index = schema.keypoint_index()
    got = list(iter_samples(str(out / "shards"), policy="raise"))
    azimuths = [s.meta["synth"]["view_params"]["camera"]["azimuth_deg"] for s in got]
    assert len(got) == 12 and all(-90.0 <= a <= 90.0 for a in azimuths), azimuths
    ahead = [s for s, a in zip(got, azimuths, strict=True) if abs(a) < 60.0]
    assert len(ahead) >= 4, azimuths
    for s in ahead:
        kp = s.pose.persons[0].keypoints
        assert kp[index["left_shoulder"], 0] > kp[index["right_shoulder"], 0], s.meta["synth"]["view_params"]["camera"]


def test_bad_pose_settings_fail_at_start_up(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert hv("--bodies", "1", "--out", out, "bodies.families=[dancing]") == 2
    assert "bodies.families" in capsys.readouterr().err
    assert hv("--bodies", "1", "--out", out, "bodies.views_per_pose=0") == 2
    assert "bodies.views_per_pose must be >= 1" in capsys.readouterr().err


def test_views_are_spread_evenly_over_the_poses():
    from synth.config import load_config
    from synth.engine import poses_per_body
    from synth.subject import Posed, Subject

    config = load_config(None, ["views=4", "bodies.views_per_pose=2"])
    subject = Subject(id="s", kind="body", uri="u", poses=[Posed(geometry=None)] * poses_per_body(config))  # type: ignore[arg-type]
    assert [subject.pose_of_view(v, config.views) for v in range(4)] == [0, 0, 1, 1]
    config = load_config(None, ["views=5", "bodies.views_per_pose=2"])
    assert poses_per_body(config) == 3
