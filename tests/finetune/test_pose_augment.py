"""Pose augmentation: half-body crops (the chosen half's keypoints, heatmaps consistent) and pixel-only changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ft_synthetic import person_sample

from data_engine import schema
from train.transforms import apply_affine
from train.transforms.photometric import PhotometricConfig, coarse_dropout, color_jitter, photometric_augment
from train.transforms.pose import (
    HalfBodyConfig,
    TopDownAugment,
    TopDownParams,
    crop_matrix,
    decode_heatmaps,
    half_body_ids,
    heatmap_to_image,
    lower_body_mask,
    topdown_item,
)

COCO_FLIP = schema.subset_flip_indices("coco17")
COCO_LOWER = lower_body_mask("coco17")
# No geometric randomness: the crop is exactly the (half-body) box, so its contents can be predicted.


def topdown(half_body: float = 0.0, photometric: PhotometricConfig | None = None, **augment) -> TopDownParams:
    """128x96 crops; half-body with probability `half_body`; no pixel changes unless `photometric` is given."""
    pixels = photometric or PhotometricConfig(enabled=False)
    aug = TopDownAugment(half_body=HalfBodyConfig(prob=half_body), photometric=pixels, **augment)
    return TopDownParams((128, 96), aug)


def with_half_body(params: TopDownParams, **changes) -> TopDownParams:
    half_body = dataclasses.replace(params.augment.half_body, **changes)
    return dataclasses.replace(params, augment=dataclasses.replace(params.augment, half_body=half_body))


def with_pixels(params: TopDownParams, photometric: PhotometricConfig) -> TopDownParams:
    return dataclasses.replace(params, augment=dataclasses.replace(params.augment, photometric=photometric))


FIXED = topdown(sigma=2.0, scale_range=[1.0, 1.0], rotation_prob=0.0, shift=0.0, flip_prob=0.0)
PIXELS_OFF = PhotometricConfig(jitter_prob=0.0, blur_prob=0.0, median_blur_prob=0.0, dropout_prob=0.0)


def _figure() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """A 400x300 image and a standing coco17 figure (all keypoints labelled) with its box."""
    s = person_sample(3, height=400, width=300)
    kp = s.pose.persons[0].keypoints.astype(np.float64)
    kp[:, 2] = 2.0
    return s.image, kp, s.pose.persons[0].bbox


def _inside_crop(points: np.ndarray, matrix: np.ndarray, params: TopDownParams) -> np.ndarray:
    q = apply_affine(points, matrix)
    h, w = params.input_size
    stride = params.heatmap_stride
    # udp_heatmaps' rule: the heatmap-index coordinate q/stride - 0.5 lies in [-0.5, size - 0.5).
    return (q[:, 0] >= 0) & (q[:, 0] < w // stride * stride) & (q[:, 1] >= 0) & (q[:, 1] < h // stride * stride)


def _interior(points: np.ndarray, matrix: np.ndarray, params: TopDownParams) -> np.ndarray:
    """Points at least one heatmap pixel from the heatmap's edge: a Gaussian cut by the edge has no clean peak to
    refine, so sub-pixel decoding is only exact inside (the training target itself is still right there)."""
    h, w = params.heatmap_size
    u = apply_affine(points, matrix) / params.heatmap_stride - 0.5
    return (u[:, 0] >= 1) & (u[:, 0] <= w - 2) & (u[:, 1] >= 1) & (u[:, 1] <= h - 2)


def test_lower_body_is_hips_knees_ankles_and_feet() -> None:
    names = schema.subset_names("coco17")
    assert [n for n, low in zip(names, COCO_LOWER, strict=True) if low] == [
        "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    ]  # fmt: skip
    lower_all = lower_body_mask("all")
    assert lower_all.shape == (308,) and lower_all.sum() == 12  # 6 leg joints + 6 foot points
    assert not lower_body_mask("face").any()


@pytest.mark.parametrize(("upper_prob", "half"), [(1.0, "upper"), (0.0, "lower")])
def test_half_body_crop_holds_the_chosen_half_and_its_targets(upper_prob, half) -> None:
    image, kp, bbox = _figure()
    params = with_half_body(FIXED, prob=1.0, upper_prob=upper_prob)
    item = topdown_item(image, kp, bbox, COCO_FLIP, params, np.random.default_rng(0), COCO_LOWER)
    chosen = ~COCO_LOWER if half == "upper" else COCO_LOWER
    # The crop is centred on the chosen keypoints' mean and every one of them is inside with weight 1.
    centre = apply_affine(kp[chosen, :2].mean(0), item.matrix)
    np.testing.assert_allclose(centre, [48.0, 64.0], atol=1e-6)
    assert np.all(item.weights[chosen] == 1.0)
    # The other half counts only where it still falls inside the crop (the far end never does).
    np.testing.assert_array_equal(item.weights > 0, _inside_crop(kp[:, :2], item.matrix, params))
    far = [15, 16] if half == "upper" else [0, 1, 2]  # ankles / nose and eyes
    assert np.all(item.weights[far] == 0) and not item.heatmaps[far].any()
    # The box is the chosen half's (aspect 3:4, padding 1.5), much tighter than the whole person's.
    whole, _ = crop_matrix(bbox, FIXED)
    assert abs(np.linalg.det(item.matrix[:, :2])) > 1.5 * abs(np.linalg.det(whole[:, :2]))
    points, _ = decode_heatmaps(item.heatmaps[None])
    back = heatmap_to_image(points[0], item.matrix, params)
    assert _interior(kp[chosen, :2], item.matrix, params).all()
    assert np.abs(back[chosen] - kp[chosen, :2]).max() < 0.5


def test_half_body_crop_contains_exactly_the_chosen_half_when_the_halves_are_apart() -> None:
    # Upper keypoints around y 50-110, lower ones around y 300-380: the padded upper box cannot reach them.
    rng = np.random.default_rng(1)
    kp = np.zeros((17, 3))
    kp[~COCO_LOWER, :2] = np.column_stack([rng.uniform(100, 200, 11), rng.uniform(50, 110, 11)])
    kp[COCO_LOWER, :2] = np.column_stack([rng.uniform(120, 180, 6), rng.uniform(300, 380, 6)])
    kp[:, 2] = 1.0
    kp[3, 2] = 0.0  # an unlabelled upper keypoint stays unlabelled
    image = np.full((420, 300, 3), 100, np.uint8)
    for upper_prob, chosen in ((1.0, ~COCO_LOWER), (0.0, COCO_LOWER)):
        params = with_half_body(FIXED, prob=1.0, upper_prob=upper_prob)
        item = topdown_item(image, kp, (90, 40, 210, 390), COCO_FLIP, params, np.random.default_rng(0), COCO_LOWER)
        np.testing.assert_array_equal(item.weights > 0, chosen & (kp[:, 2] > 0))


def test_half_body_falls_back_to_the_other_half_or_to_the_whole_box() -> None:
    image, kp, bbox = _figure()
    params = with_half_body(FIXED, prob=1.0, upper_prob=1.0)
    rng = np.random.default_rng(0)
    one_upper = kp.copy()
    one_upper[1:11, 2] = 0  # only the nose left of the upper body: below min_upper = 2, so the legs are taken
    relaxed = with_half_body(params, min_keypoints=5)
    np.testing.assert_array_equal(half_body_ids(one_upper, COCO_LOWER, relaxed, rng), np.flatnonzero(COCO_LOWER))
    two_lower = kp.copy()
    two_lower[13:, 2] = 0  # hips only: below min_lower = 3, so the upper body is taken even when legs are preferred
    legs_first = with_half_body(params, upper_prob=0.0)
    np.testing.assert_array_equal(half_body_ids(two_lower, COCO_LOWER, legs_first, rng), np.flatnonzero(~COCO_LOWER))
    few = kp.copy()
    few[9:, 2] = 0  # 9 labelled keypoints are enough (min 9), 8 are not
    assert half_body_ids(few, COCO_LOWER, params, rng) is not None
    few[8, 2] = 0
    assert half_body_ids(few, COCO_LOWER, params, rng) is None
    item = topdown_item(image, few, bbox, COCO_FLIP, params, rng, COCO_LOWER)
    np.testing.assert_allclose(item.matrix, crop_matrix(bbox, FIXED)[0])  # the whole-person crop
    never = with_half_body(params, prob=0.0)
    assert all(half_body_ids(kp, COCO_LOWER, never, rng) is None for _ in range(50))


def test_half_body_probability_and_upper_preference() -> None:
    _, kp, _ = _figure()
    params = with_half_body(FIXED, prob=0.3, upper_prob=0.7)
    rng = np.random.default_rng(0)
    picks = [half_body_ids(kp, COCO_LOWER, params, rng) for _ in range(2000)]
    taken = [p for p in picks if p is not None]
    assert 0.26 < len(taken) / len(picks) < 0.34
    upper = sum(bool(np.array_equal(p, np.flatnonzero(~COCO_LOWER))) for p in taken)
    assert 0.62 < upper / len(taken) < 0.78


def test_half_body_needs_a_lower_body_mask_of_the_right_length() -> None:
    image, kp, bbox = _figure()
    params = with_half_body(FIXED, prob=0.5)
    with pytest.raises(ValueError, match="lower_body"):
        topdown_item(image, kp, bbox, COCO_FLIP, params, np.random.default_rng(0))
    with pytest.raises(ValueError, match="lower_body"):
        topdown_item(image, kp, bbox, COCO_FLIP, params, np.random.default_rng(0), np.zeros(5, bool))


@pytest.mark.parametrize("seed", range(8))
def test_full_augmentation_keeps_keypoints_and_heatmaps_consistent(seed) -> None:
    """Half-body + scale/rotation/shift/flip + photometric: decoded targets land on the labelled keypoints."""
    image, kp, bbox = _figure()
    params = topdown(half_body=0.6, photometric=PhotometricConfig(), sigma=2.0)
    rng = np.random.default_rng(seed)
    item = topdown_item(image, kp, bbox, COCO_FLIP, params, rng, COCO_LOWER)
    points, _ = decode_heatmaps(item.heatmaps[None])
    back = heatmap_to_image(points[0], item.matrix, params)
    weights = item.weights
    if np.linalg.det(item.matrix[:, :2]) < 0:  # slots were swapped for the mirror: swap back
        back, weights = back[COCO_FLIP], weights[COCO_FLIP]
    labelled = weights > 0
    np.testing.assert_array_equal(labelled, _inside_crop(kp[:, :2], item.matrix, params))
    check = labelled & _interior(kp[:, :2], item.matrix, params)
    assert check.sum() >= 4
    assert np.abs(back[check] - kp[check, :2]).max() < 0.5


def test_photometric_changes_pixels_and_leaves_labels_untouched() -> None:
    image, kp, bbox = _figure()
    base = topdown(half_body=0.5)
    jitter = with_pixels(base, PhotometricConfig(jitter_prob=1.0))
    changed = 0
    for seed in range(6):
        plain = topdown_item(image, kp, bbox, COCO_FLIP, base, np.random.default_rng(seed), COCO_LOWER)
        jittered = topdown_item(image, kp, bbox, COCO_FLIP, jitter, np.random.default_rng(seed), COCO_LOWER)
        np.testing.assert_array_equal(plain.matrix, jittered.matrix)
        np.testing.assert_array_equal(plain.heatmaps, jittered.heatmaps)
        np.testing.assert_array_equal(plain.weights, jittered.weights)
        assert jittered.image.shape == plain.image.shape and jittered.image.dtype == np.uint8
        changed += int(not np.array_equal(plain.image, jittered.image))
    assert changed == 6
    off = with_pixels(base, PIXELS_OFF)
    same = topdown_item(image, kp, bbox, COCO_FLIP, off, np.random.default_rng(0), COCO_LOWER)
    np.testing.assert_array_equal(
        same.image, topdown_item(image, kp, bbox, COCO_FLIP, base, np.random.default_rng(0), COCO_LOWER).image
    )


def test_evaluation_crops_are_never_augmented() -> None:
    image, kp, bbox = _figure()
    params = topdown(half_body=1.0, photometric=PhotometricConfig())
    plain = topdown_item(image, kp, bbox, COCO_FLIP, topdown())
    evaluated = topdown_item(image, kp, bbox, COCO_FLIP, params)  # rng None, no lower_body needed
    np.testing.assert_array_equal(evaluated.image, plain.image)
    np.testing.assert_array_equal(evaluated.matrix, plain.matrix)


def _colour_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, (40, 30, 3), dtype=np.uint8)


def test_hue_and_saturation_keep_greys_grey_and_hue_keeps_value() -> None:
    grey = np.repeat(np.arange(40, 200, 4, dtype=np.uint8)[:, None, None], 3, axis=2) * np.ones((1, 5, 1), np.uint8)
    only_colour = PhotometricConfig(jitter_prob=1.0, brightness_delta=0.0, contrast_range=[1.0, 1.0])
    for seed in range(5):
        out = color_jitter(grey, only_colour, np.random.default_rng(seed))
        np.testing.assert_allclose(out.astype(int), grey.astype(int), atol=1)
    image = _colour_image()
    only_hue = dataclasses.replace(only_colour, saturation_range=[1.0, 1.0], hue_delta=60.0)
    out = color_jitter(image, only_hue, np.random.default_rng(1))
    assert not np.array_equal(out, image)
    np.testing.assert_allclose(out.max(axis=2).astype(int), image.max(axis=2).astype(int), atol=1)  # V = max(R,G,B)


def test_brightness_and_contrast_follow_their_formulas() -> None:
    image = _colour_image()
    bright = PhotometricConfig(jitter_prob=1.0, contrast_range=[1.0, 1.0], saturation_range=[1.0, 1.0], hue_delta=0.0)
    rng = np.random.default_rng(2)
    out = color_jitter(image, bright, rng).astype(int)
    delta = out - image.astype(int)
    assert np.ptp(delta) <= 2 and abs(delta.mean()) > 1  # one shift for every pixel (HSV round trip: +-1)
    contrast = PhotometricConfig(jitter_prob=1.0, brightness_delta=0.0, contrast_range=[1.3, 1.3],
                                 saturation_range=[1.0, 1.0], hue_delta=0.0)  # fmt: skip
    out = color_jitter(image, contrast, np.random.default_rng(3)).astype(int)
    np.testing.assert_allclose(out, np.clip(np.rint(image * 1.3), 0, 255), atol=1)


def test_coarse_dropout_blanks_one_rectangle_of_the_configured_size() -> None:
    image = np.full((100, 80, 3), 255, np.uint8)
    params = PhotometricConfig(dropout_prob=1.0, dropout_size_range=[0.2, 0.4])
    for seed in range(10):
        out = coarse_dropout(image, params, np.random.default_rng(seed))
        ys, xs = np.nonzero((out == 0).all(axis=2))
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert len(ys) == h * w  # one solid rectangle, nothing else touched
        assert 20 <= h <= 40 and 16 <= w <= 32
        assert (out[out != 0] == 255).all()
    assert (image == 255).all()  # the input is not modified


def test_blur_smooths_and_all_off_is_identity() -> None:
    image = _colour_image()
    blur = dataclasses.replace(PIXELS_OFF, blur_prob=1.0)
    out = photometric_augment(image, blur, np.random.default_rng(0))
    assert np.abs(np.diff(out.astype(int), axis=1)).mean() < np.abs(np.diff(image.astype(int), axis=1)).mean()
    same = photometric_augment(image, PIXELS_OFF, np.random.default_rng(0))
    np.testing.assert_array_equal(same, image)
    assert same is not image


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32)]
)
def test_photometric_rejects_wrong_images(bad) -> None:
    with pytest.raises(ValueError, match="uint8"):
        photometric_augment(bad, PhotometricConfig(), np.random.default_rng(0))
