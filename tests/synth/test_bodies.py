"""Parametric bodies from anny: determinism, left/right, part labels and the Goliath keypoint layout."""

from __future__ import annotations

import numpy as np
import pytest

from data_engine import schema
from synth.config import BodyConfig

pytestmark = pytest.mark.slow  # loads anny (~4 s from its cache, ~35 s the first time on a machine)


@pytest.fixture(scope="module")
def body_model():
    from synth.bodies import BodyModel

    return BodyModel(texture_size=128)


def class_id(name: str) -> int:
    return schema.vocabulary("goliath28").names.index(name)


def test_same_seed_same_body_and_different_index_differs(body_model):
    a = body_model.sample(3, seed=5, config=BodyConfig())
    b = body_model.sample(3, seed=5, config=BodyConfig())
    c = body_model.sample(4, seed=5, config=BodyConfig())
    assert a.id == "body-5-000003" and a.params == b.params
    assert np.array_equal(a.geometry.positions, b.geometry.positions)
    assert not np.allclose(a.geometry.positions, c.geometry.positions)
    assert a.params != c.params


def test_left_is_the_persons_left_and_parts_are_labelled(body_model):
    body = body_model.sample(0, seed=1, config=BodyConfig(pose_scale=0.0, clothing_prob=0.0))
    geo = body.geometry
    centroid = geo.positions[geo.faces].mean(1)
    # The body faces +z, so the person's left hand is at +x.
    left, right = geo.face_labels == class_id("Left_Hand"), geo.face_labels == class_id("Right_Hand")
    assert left.sum() > 100 and right.sum() > 100
    assert centroid[left, 0].mean() > 0.3 and centroid[right, 0].mean() < -0.3
    feet = geo.face_labels == class_id("Left_Foot")
    face = geo.face_labels == class_id("Face_Neck")
    assert centroid[feet, 1].mean() < 0.15 < 1.3 < centroid[face, 1].mean()
    present = set(np.unique(geo.face_labels).tolist())
    for name in ("Torso", "Left_Upper_Arm", "Right_Lower_Leg", "Tongue"):
        assert class_id(name) in present
    assert class_id("Upper_Clothing") not in present  # clothing_prob 0
    # Nose in front (+z) of the body's centre, eyes and ears at the head.
    idx = schema.keypoint_index()
    names = body.landmarks.names
    nose = body.landmarks.points[names.index("nose")]
    assert nose[2] > geo.positions[:, 2].mean() and nose[1] > 1.3
    assert body.landmarks.points[names.index("left_wrist")][0] > 0.2
    assert idx["left_wrist"] == 62 and idx["right_wrist"] == 41


def test_clothing_is_labelled_as_clothing(body_model):
    body = body_model.sample(2, seed=0, config=BodyConfig(clothing_prob=1.0))
    present = set(np.unique(body.geometry.face_labels).tolist())
    assert {class_id("Upper_Clothing"), class_id("Lower_Clothing")} <= present
    assert body.params["clothing"]["top"] is not None


def test_hair_covers_the_crown_and_the_back_of_the_head_not_the_face(body_model):
    bald = body_model.sample(0, seed=1, config=BodyConfig(pose_scale=0.0, hair_prob=0.0))
    assert class_id("Hair") not in set(np.unique(bald.geometry.face_labels).tolist()) and bald.params["hair"] is None
    body = body_model.sample(0, seed=1, config=BodyConfig(pose_scale=0.0, hair_prob=1.0))
    geo, names = body.geometry, body.landmarks.names
    centroid = geo.positions[geo.faces].mean(1)
    hair, face = geo.face_labels == class_id("Hair"), geo.face_labels == class_id("Face_Neck")
    assert hair.sum() > 200 and face.sum() > 200
    assert body.params["hair"]["length_m"] > 0 and len(body.params["hair"]["rgb"]) == 3
    # The body faces +z: hair lies behind the nose, and the top of the head is hair, the front below the eyes skin.
    nose, eye = (body.landmarks.points[names.index(n)] for n in ("nose", "left_eye"))
    assert centroid[hair, 2].mean() < nose[2] - 0.05
    assert centroid[hair, 1].max() > centroid[face, 1].max()
    front_below_eyes = (centroid[:, 2] > nose[2] - 0.03) & (centroid[:, 1] < eye[1]) & (centroid[:, 1] > eye[1] - 0.08)
    assert front_below_eyes.sum() > 20 and not hair[front_below_eyes].any()
    # Everything else about the body is as without hair: hair is paint on the same surface.
    assert np.array_equal(bald.geometry.positions, body.geometry.positions)


def test_keypoints_cover_body_feet_and_hands_in_goliath_names(body_model):
    body = body_model.sample(1, seed=0, config=BodyConfig())
    names = body.landmarks.names
    index = schema.keypoint_index()
    # COCO-17 + 6 foot points: the body and feet groups of Goliath, mapped by name (wrists sit at 41 and 62).
    assert set(names[:23]) == set(schema.subset_names("body+feet")) and len(set(names[:23])) == 23
    hands = [n for n in names if n not in names[:23]]
    assert len(hands) == 40 and set(hands) == set(schema.subset_names("hands"))
    assert all(n in index for n in names)
    pts = dict(zip(names, body.landmarks.points, strict=True))
    wrist = pts["left_wrist"]
    # Along a finger, joints get farther from the wrist towards the tip.
    chain = [pts[f"left_forefinger{p}"] for p in ("_third_joint", "2", "3", "4")]
    dists = [np.linalg.norm(p - wrist) for p in chain]
    assert dists == sorted(dists) and dists[-1] < 0.25
    assert len(body.landmarks.support) == len(names) and body.landmarks.support[0].shape[1] == 3
