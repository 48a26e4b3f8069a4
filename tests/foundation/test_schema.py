"""The human schema: counts, flips, sigmas, subsets, vocabularies and the `hv schema` command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from data_engine import schema


def test_keypoint_counts_per_group() -> None:
    kps = schema.keypoints()
    assert len(kps) == schema.NUM_KEYPOINTS == 308
    assert [k.index for k in kps] == list(range(308))
    counts = Counter(k.group for k in kps)
    assert counts == {"body": 17, "feet": 6, "left_hand": 20, "right_hand": 20, "extra": 7, "face": 238}
    assert len({k.name for k in kps}) == 308


def test_subsets() -> None:
    assert len(schema.subset("face")) == 243
    assert len(schema.subset("all")) == 308
    assert len(schema.subset("hands")) == 40
    assert schema.subset_names("coco17") == list(schema.COCO17_NAMES)
    # The Goliath wrists are not at COCO positions 9 and 10: the subset must map by name.
    assert schema.subset("coco17")[9] == schema.keypoint_index()["left_wrist"] == 62
    face = set(schema.subset("face").tolist())
    assert {schema.keypoint_index()[n] for n in schema.COCO_FACE_NAMES} <= face
    with pytest.raises(ValueError, match="coco17"):
        schema.subset("cocoo17")


def test_flip_is_an_involution_and_swaps_left_right() -> None:
    flip = schema.flip_indices()
    np.testing.assert_array_equal(flip[flip], np.arange(308))
    kps = schema.keypoints()
    for k in kps:
        partner = kps[k.flip]
        if k.name.startswith("left_"):
            assert partner.name == "right_" + k.name[len("left_") :]
        assert partner.sigma == pytest.approx(k.sigma) or k.group in ("feet",)
    for name in ("all", "coco17", "body", "face", "hands", "body+feet+hands"):
        perm = schema.subset_flip_indices(name)
        np.testing.assert_array_equal(perm[perm], np.arange(len(perm)))
    with pytest.raises(ValueError, match="not closed"):
        schema.subset_flip_indices("left_hand")


def test_sigmas_positive_and_skeleton_valid() -> None:
    assert (schema.sigmas() > 0).all()
    links = schema.skeleton()
    assert len(links) == 65
    assert all(0 <= a < 308 and 0 <= b < 308 and a != b for a, b in links)
    # A skeleton mirrored by the flip map is still the skeleton (left and right limbs are drawn alike).
    flip = schema.flip_indices()
    as_sets = {frozenset(link) for link in links}
    assert {frozenset((int(flip[a]), int(flip[b]))) for a, b in links} == as_sets
    coco_links = schema.subset_skeleton("coco17")
    assert coco_links and all(a < 17 and b < 17 for a, b in coco_links)


@pytest.mark.parametrize(("name", "count"), [("goliath28", 28), ("lip20", 20), ("sapiens2_29", 29)])
def test_vocabularies(name: str, count: int) -> None:
    vocab = schema.vocabulary(name)
    assert len(vocab) == count
    assert [c.id for c in vocab.classes] == list(range(count))
    assert (vocab.weights() > 0).all()
    lut = vocab.flip_lut()
    np.testing.assert_array_equal(lut[lut], np.arange(256))
    assert lut[schema.IGNORE_INDEX] == schema.IGNORE_INDEX
    for c in vocab.classes:
        mirror = vocab.classes[c.flip]
        assert mirror.flip == c.id
        if c.flip != c.id:
            assert "Left" in c.name or "Right" in c.name
    assert len({tuple(c) for c in vocab.palette()}) == count  # distinct colours


def test_goliath28_known_values() -> None:
    vocab = schema.vocabulary("goliath28")
    assert vocab.classes[4].name == "Left_Foot" and vocab.classes[4].flip == 13
    assert vocab.classes[0].weight == pytest.approx(0.1)
    assert vocab.classes[21].color == (14, 204, 0)
    lip = schema.vocabulary("lip20")
    assert lip.classes[14].name == "Left-arm" and lip.classes[14].flip == 15
    with pytest.raises(ValueError, match="goliath28"):
        schema.vocabulary("ade20k")


def _hv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import humanvision_cli; humanvision_cli.main()", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_hv_schema_json_is_consumable() -> None:
    out = _hv("schema", "--format", "json")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert len(obj["keypoints"]) == 308
    first = obj["keypoints"][1]
    assert set(first) == {"index", "name", "group", "flip", "sigma"}
    assert first["name"] == "left_eye" and first["flip"] == "right_eye"
    assert obj["keypoints"][0]["flip"] is None  # the nose is its own mirror
    assert len(obj["skeleton"]) == 65 and all(len(link) == 2 for link in obj["skeleton"])
    assert len(obj["subsets"]["face"]) == 243
    g28 = obj["vocabularies"]["goliath28"]
    assert len(g28) == 28 and set(g28[0]) == {"id", "name", "color", "weight", "flip"}
    assert g28[4]["flip"] == 13 and g28[0]["flip"] is None
    assert len(obj["vocabularies"]["lip20"]) == 20


def test_hv_schema_text() -> None:
    out = _hv("schema")
    assert out.returncode == 0, out.stderr
    assert "face" in out.stdout and "238" in out.stdout and "Left_Foot" in out.stdout
