"""Label configs, conversions, RLE and settings: no server needed."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle as sdk_decode_rle
from label_studio_sdk.converter.brush import mask2rle

from annotation import convert, labeling, rle
from annotation.config import AnnotateConfig, load_config
from annotation.errors import AnnotationError
from annotation.server import find_binary
from data_engine import schema
from data_engine.config import ConfigError, to_dict
from data_engine.sample import PersonPose, Pose

from .conftest import all_class_seg, random_pose


def _labels(xml: str, tag: str) -> dict[str, list[tuple[str, str]]]:
    root = ET.fromstring(xml)
    return {
        c.get("name"): [(lab.get("value"), lab.get("background")) for lab in c.iter("Label")] for c in root.iter(tag)
    }


def test_pose_config_has_every_keypoint_once_grouped_and_coloured_by_region():
    controls = _labels(labeling.pose_config("all"), "KeyPointLabels")
    # Panels in the Goliath order (each wrist with its hand): the concatenated labels are the schema's order,
    # which Label Studio's COCO export relies on for its category's keypoint names.
    assert list(controls) == ["kp_body", "kp_feet", "kp_right_hand", "kp_left_hand", "kp_extra", "kp_face"]
    names = [name for labels in controls.values() for name, _ in labels]
    assert names == [k.name for k in schema.keypoints()]
    assert controls["kp_right_hand"][-1][0] == "right_wrist" and controls["kp_left_hand"][-1][0] == "left_wrist"
    group_of = {k.name: k.group for k in schema.keypoints()}
    for labels in controls.values():
        assert all(color == labeling.GROUP_COLORS[group_of[name]] for name, color in labels)
    root = ET.fromstring(labeling.pose_config("all"))
    visibility = next(c for c in root.iter("Choices") if c.get("name") == labeling.VISIBILITY)
    assert visibility.get("perRegion") == "true"
    assert [c.get("value") for c in visibility.iter("Choice")] == ["visible", "occluded"]
    assert _labels(labeling.pose_config("all"), "RectangleLabels") == {"person": [("person", labeling.PERSON_COLOR)]}
    coco = _labels(labeling.pose_config("coco17"), "KeyPointLabels")
    assert list(coco) == ["kp_body"] and [n for n, _ in coco["kp_body"]] == list(schema.COCO17_NAMES)


@pytest.mark.parametrize("vocab", ["goliath28", "lip20"])
def test_seg_config_uses_vocabulary_names_and_palette(vocab):
    labels = _labels(labeling.seg_config(vocab), "BrushLabels")["parts"]
    v = schema.vocabulary(vocab)
    assert [n for n, _ in labels] == v.names
    assert [c for _, c in labels] == ["#{:02x}{:02x}{:02x}".format(*c.color) for c in v.classes]


def test_bbox_config_and_bad_names():
    assert _labels(labeling.bbox_config(), "RectangleLabels") == {"person": [("person", labeling.PERSON_COLOR)]}
    with pytest.raises(ValueError, match="unknown keypoint subset"):
        labeling.pose_config("elbows")
    with pytest.raises(ValueError, match="unknown class vocabulary"):
        labeling.seg_config("coco")


def test_percent_convention_matches_design():
    # The centre of pixel (row 0, col 0) is (0.5, 0.5); on a 10x20 image that is 5% across, 2.5% down.
    assert convert.pixels_to_percent(0.5, 0.5, 10, 20) == (5.0, 2.5)
    assert convert.percent_to_pixels(100.0, 100.0, 640, 480) == (640.0, 480.0)
    box = convert.rectangle_to_bbox({"x": 10, "y": 20, "width": 50, "height": 25, "rotation": 90}, 100, 100)
    np.testing.assert_allclose(box, (-15.0, 20.0, 10.0, 70.0), atol=1e-9)  # rotated about its top-left corner


def test_pose_round_trip_through_results_is_exact():
    rng = np.random.default_rng(3)
    pose = random_pose(rng, 97, 61)
    back, problems = convert.results_to_pose(convert.pose_to_results(pose, 97, 61), 97, 61, "all")
    assert problems == []
    np.testing.assert_allclose(back.persons[0].keypoints, pose.persons[0].keypoints, atol=1e-4)
    assert back.persons[0].bbox == pytest.approx(pose.persons[0].bbox)


def test_keypoints_go_to_the_box_that_holds_them_and_problems_are_reported():
    kp = np.zeros((17, 3), np.float32)
    left = Pose("coco17", [PersonPose((0, 0, 40, 40), kp.copy()), PersonPose((50, 0, 90, 40), kp.copy())])
    left.persons[0].keypoints[0] = (10, 10, 2)
    left.persons[1].keypoints[0] = (60, 10, 1)
    results = convert.pose_to_results(left, 100, 50)
    # A duplicate nose in person 0, a point outside the image, and an empty third box.
    dup = {**results[1], "id": "dup", "value": {**results[1]["value"], "x": 20.0}}
    outside = {**results[1], "id": "out", "value": {**results[1]["value"], "x": 130.0, "keypointlabels": ["left_eye"]}}
    empty = {**results[0], "id": "empty", "value": {**results[0]["value"], "x": 0, "y": 90, "width": 5, "height": 5}}
    pose, problems = convert.results_to_pose([*results, dup, outside, empty], 100, 50, "coco17")
    kinds = sorted(p.kind for p in problems)
    assert kinds == ["box_without_keypoints", "duplicate_label", "outside_image"]
    assert pose.persons[0].keypoints[0].tolist() == [20.0, 10.0, 2.0]  # the later placement wins
    assert pose.persons[1].keypoints[0].tolist() == [60.0, 10.0, 1.0]
    assert pose.persons[1].keypoints[1, 2] == 2  # the outside point goes to the nearest box, flagged


def test_seg_round_trip_and_overlap_rules():
    rng = np.random.default_rng(1)
    seg = all_class_seg(rng, 33, 21)
    back, problems = convert.results_to_seg(convert.seg_to_results(seg, "goliath28"), 33, 21, "goliath28")
    assert problems == [] and np.array_equal(back, seg)

    big = np.zeros((10, 10), bool)
    big[:, :] = True
    small = np.zeros((10, 10), bool)
    small[2:4, 2:4] = True
    region = convert.seg_to_results(np.where(small, 5, 255).astype(np.uint8), "goliath28")[0]
    torso = convert.seg_to_results(np.where(big, 21, 255).astype(np.uint8), "goliath28")[0]
    last, _ = convert.results_to_seg([region, torso], 10, 10, "goliath28", "last")
    smallest, _ = convert.results_to_seg([region, torso], 10, 10, "goliath28", "smallest")
    assert (last == 21).all()
    assert (smallest[small] == 5).all() and (smallest[~small] == 21).all()


def test_bad_brush_regions_are_recorded_not_applied():
    torso = convert.seg_to_results(np.full((10, 10), 21, np.uint8), "goliath28")[0]
    wrong_size, problems = convert.results_to_seg([torso], 12, 10, "goliath28")
    assert (wrong_size == 255).all() and [p.kind for p in problems] == ["size_mismatch"]
    truncated = {**torso, "value": {**torso["value"], "rle": torso["value"]["rle"][:6]}}
    unknown = {**torso, "value": {**torso["value"], "brushlabels": ["Tail"]}}
    seg, problems = convert.results_to_seg([truncated, unknown], 10, 10, "goliath28")
    assert (seg == 255).all() and sorted(p.kind for p in problems) == ["malformed_region", "unknown_label"]


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (40, 31), (300, 260)])
def test_rle_is_byte_identical_to_the_sdk(shape):
    rng = np.random.default_rng(shape[0])
    for mask in (rng.random(shape) > 0.5, np.zeros(shape, bool), np.ones(shape, bool), _blob(shape)):
        ours = rle.encode_mask(mask)
        assert ours == mask2rle(mask.astype(np.uint8) * 255)
        assert np.array_equal(rle.decode_rle(ours), sdk_decode_rle(ours))


def test_rle_rejects_truncated_streams():
    data = rle.encode_mask(np.random.default_rng(0).random((20, 20)) > 0.5)
    with pytest.raises(ValueError, match="ends early"):
        rle.decode_rle(data[: len(data) // 2])


def _blob(shape):
    m = np.zeros(shape, bool)
    m[shape[0] // 3 :, : shape[1] // 2] = True
    return m


def test_config_defaults_file_matches_schema_and_unknown_keys_fail(tmp_path):
    assert to_dict(load_config("configs/annotation/default.yaml")) == to_dict(AnnotateConfig())
    assert load_config(None, ["seg_overlap=smallest", "batch_size=7"]).batch_size == 7
    with pytest.raises(ConfigError, match="batch_sise"):
        load_config(None, ["batch_sise=7"])
    with pytest.raises(ConfigError, match="key seg_overlap"):
        load_config(None, ["seg_overlap=biggest"])
    with pytest.raises(ConfigError, match="keypoint subset"):
        load_config(None, ["keypoint_set=elbows"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("vocabulary: goliath28\nsurprise: 1\n")
    with pytest.raises(ConfigError, match="surprise"):
        load_config(str(bad))


def test_missing_server_binary_names_the_make_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HV_LABEL_STUDIO_BIN", str(tmp_path / "nope" / "label-studio"))
    with pytest.raises(AnnotationError, match="make setup"):
        find_binary()
