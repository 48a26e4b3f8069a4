"""The sample contract: encode/decode round trips at the stated precision, and clear validation errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data_engine import schema
from data_engine.sample import (
    MAX_DEPTH_M,
    PersonPose,
    Pose,
    Sample,
    SampleError,
    decode,
    decode_depth,
    decode_normal,
    encode,
    encode_depth,
    encode_normal,
    key_from_bytes,
    key_from_params,
)

H, W = 24, 32


def random_normals(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    n = rng.normal(size=(*shape, 3))
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def full_sample(seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), bool)
    mask[4:20, 8:24] = True
    depth = np.where(mask, rng.uniform(0.5, 8.0, (H, W)), 0).astype(np.float32)
    normal = np.where(mask[..., None], random_normals(rng, (H, W)), 0).astype(np.float32)
    seg = np.where(mask, rng.integers(0, 28, (H, W)), 0).astype(np.uint8)
    seg[0, 0] = schema.IGNORE_INDEX
    kp = np.concatenate([rng.uniform(0, W, (308, 2)), rng.integers(0, 3, (308, 1))], axis=1).astype(np.float32)
    pose = Pose("all", [PersonPose(bbox=(8.0, 4.0, 24.0, 20.0), keypoints=kp)])
    return Sample(
        key=key_from_bytes(image.tobytes()),
        image=image,
        meta={"source": {"uri": "mem://x", "sha256": "0" * 64}, "split": "train"},
        pose=pose,
        seg=seg,
        depth=depth,
        normal=normal,
        mask=mask,
    )


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # atan2 of cross and dot: arccos of a float32 dot product is off by 0.02 degrees near 1.
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))


def test_full_round_trip() -> None:
    s = full_sample()
    members = encode(s)
    assert set(members) == {"__key__", "png", "json", "pose.json", "seg.png", "depth.png", "normal.png", "mask.png"}
    back = decode(members)
    assert back.key == s.key
    np.testing.assert_array_equal(back.image, s.image)
    np.testing.assert_array_equal(back.seg, s.seg)
    np.testing.assert_array_equal(back.mask, s.mask)
    assert np.abs(back.depth - s.depth).max() <= 0.0005 + 1e-6
    valid = s.mask
    assert angle_deg(back.normal[valid], s.normal[valid]).max() < 0.01
    assert not back.normal[~valid].any()
    np.testing.assert_allclose(back.pose.persons[0].keypoints, s.pose.persons[0].keypoints, atol=1e-4)
    assert back.meta["width"] == W and back.meta["height"] == H and back.meta["schema_version"] == 1
    assert back.meta["seg_vocabulary"] == "goliath28"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, MAX_DEPTH_M, allow_nan=False), min_size=1, max_size=64))
def test_depth_round_trip_within_half_mm(values: list[float]) -> None:
    d = np.array(values, dtype=np.float32)[None, :]
    back = decode_depth(encode_depth(d))
    assert np.abs(back.astype(np.float64) - d).max() <= 0.0005 + 1e-6


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_normal_round_trip_within_a_hundredth_degree(seed: int) -> None:
    n = random_normals(np.random.default_rng(seed), (8, 8))
    back = decode_normal(encode_normal(n))
    assert angle_deg(back, n).max() < 0.01


def test_encoded_files_are_what_the_contract_says() -> None:
    members = encode(full_sample())
    with Image.open(io.BytesIO(members["depth.png"])) as img:
        assert img.mode == "I;16"
    with Image.open(io.BytesIO(members["seg.png"])) as img:
        assert img.mode == "P"
        assert tuple(img.getpalette()[21 * 3 : 21 * 3 + 3]) == schema.vocabulary("goliath28").classes[21].color
    import cv2

    q = cv2.imdecode(np.frombuffer(members["normal.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert q.dtype == np.uint16 and q.shape == (H, W, 3)
    with Image.open(io.BytesIO(members["mask.png"])) as img:
        assert img.mode == "L" and set(np.unique(np.asarray(img))) <= {0, 255}


def test_original_image_bytes_kept_unchanged() -> None:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=80)
    raw = buf.getvalue()
    s = Sample(
        key=key_from_bytes(raw), image=np.asarray(Image.open(io.BytesIO(raw))), image_bytes=raw, image_format="jpg"
    )
    members = encode(s)
    assert members["jpg"] == raw
    assert decode(members).image_format == "jpg"


def test_keys() -> None:
    assert key_from_bytes(b"abc") == key_from_bytes(b"abc") != key_from_bytes(b"abd")
    assert len(key_from_bytes(b"abc")) == 16
    assert key_from_params({"b": 1, "a": [1.5]}) == key_from_params({"a": [1.5], "b": 1})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: setattr(s, "key", "ab.cd"), "bad sample key"),
        (lambda s: setattr(s, "key", "ABCD"), "bad sample key"),
        (lambda s: setattr(s, "depth", s.depth[:-1]), "depth has shape"),
        (lambda s: setattr(s, "seg", s.seg[:, :-2]), "seg has shape"),
        (lambda s: setattr(s, "mask", s.mask[:-1]), "mask has shape"),
        (lambda s: setattr(s, "normal", s.normal * 2), "unit length"),
        (lambda s: s.depth.__setitem__((5, 10), -1.0), "negative"),
        (lambda s: s.depth.__setitem__((5, 10), np.nan), "non-finite"),
        (lambda s: s.depth.__setitem__((5, 10), 70.0), "beyond"),
        (lambda s: s.seg.__setitem__((5, 10), 28), "outside goliath28"),
        (lambda s: setattr(s.pose.persons[0], "keypoints", s.pose.persons[0].keypoints[:17]), "needs \\(308, 3\\)"),
        (lambda s: setattr(s.pose, "keypoint_set", "nope"), "unknown keypoint subset"),
        (lambda s: s.pose.persons[0].keypoints.__setitem__((0, 2), 3), "visibility"),
        (lambda s: setattr(s, "image", s.image[..., 0]), "image must be"),
    ],
)
def test_validation_errors_name_the_problem(change, message: str) -> None:
    s = full_sample()
    change(s)
    with pytest.raises(SampleError, match=message):
        encode(s)


def test_lip20_seg_round_trip() -> None:
    s = full_sample()
    s.seg = np.clip(s.seg, 0, 19).astype(np.uint8)
    s.meta["seg_vocabulary"] = "lip20"
    back = decode(encode(s))
    np.testing.assert_array_equal(back.seg, s.seg)
    s.seg[3, 3] = 25
    with pytest.raises(SampleError, match="lip20"):
        encode(s)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.pop("json"), "missing the json member"),
        (lambda m: m.pop("png"), "no image member"),
        (lambda m: m.__setitem__("png", b"not an image"), "cannot decode png"),
        (lambda m: m.__setitem__("depth.png", m["depth.png"][:40]), "depth.png"),
        (lambda m: m.__setitem__("json", b"{broken"), "cannot decode json"),
        (
            lambda m: m.__setitem__("json", b'{"schema_version": 1, "width": 3, "height": 3}'),
            "json says 3x3",
        ),
        (lambda m: m.__setitem__("json", b'{"width": 32, "height": 24}'), "schema_version"),
        (lambda m: m.__setitem__("pose.json", b'{"persons": []}'), "keypoint_set"),
        (lambda m: m.__setitem__("normal.png", m["mask.png"]), "16-bit 3-channel"),
    ],
)
def test_decode_errors_name_key_and_member(mutate, message: str) -> None:
    s = full_sample()
    members = encode(s)
    mutate(members)
    with pytest.raises(SampleError, match=message) as info:
        decode(members)
    assert s.key in str(info.value)


def test_decode_reads_only_the_labels_asked_for() -> None:
    members = encode(full_sample())
    members["normal.png"] = b"corrupt: a reader that skips it must not fail on it"
    back = decode(members, labels=("pose.json", "mask.png"))
    assert back.pose is not None and back.mask is not None
    assert back.seg is None and back.depth is None and back.normal is None
    with pytest.raises(SampleError, match=r"normal\.png"):
        decode(members, labels=("normal.png",))  # asked for, so read and checked
    with pytest.raises(ValueError, match=r"'jpg'.*not label members"):
        decode(members, labels=("jpg",))
