"""Pose crops, UDP heatmaps and decoding; dense augmentation of seg, depth and normals; label flips."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from ft_synthetic import person_sample

from data_engine import schema
from train.transforms import apply_affine, similarity, vector_rotation, warp
from train.transforms.dense import DenseAugConfig, DenseParams, dense_item, normalize_depth
from train.transforms.photometric import PhotometricConfig
from train.transforms.pose import (
    HalfBodyConfig,
    TopDownAugment,
    TopDownParams,
    box_center_size,
    decode_heatmaps,
    flip_heatmaps,
    heatmap_to_image,
    topdown_item,
    udp_heatmaps,
)

COCO_FLIP = schema.subset_flip_indices("coco17")
# Geometry only: no half-body crops, no pixel changes (tests/finetune/test_pose_augment.py covers those).
GEOMETRY_ONLY = {"half_body": HalfBodyConfig(prob=0.0), "photometric": PhotometricConfig(enabled=False)}


def test_warp_keeps_continuous_coordinates() -> None:
    # A single bright pixel must land where apply_affine says its centre goes (no half-pixel drift).
    image = np.zeros((40, 30), np.float32)
    image[10, 7] = 1.0  # centre at (7.5, 10.5)
    matrix = similarity((15.0, 20.0), 2.0, 0.0, (80, 60))
    out = warp(image, matrix, (80, 60), "linear")
    ys, xs = np.nonzero(out > 0.5 * out.max())
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    np.testing.assert_allclose(centre, apply_affine(np.array([7.5, 10.5]), matrix), atol=1e-6)


def test_box_is_padded_to_crop_aspect() -> None:
    center, size = box_center_size((10, 20, 30, 100), aspect_wh=0.75, padding=1.25)
    np.testing.assert_allclose(center, [20, 60])
    np.testing.assert_allclose(size, [60 * 1.25, 80 * 1.25])  # tall box: width grows to 3:4


@pytest.mark.parametrize("seed", range(6))
def test_decode_recovers_keypoints_within_half_pixel(seed) -> None:
    """Encode -> clean UDP heatmaps -> decode -> back through the crop, with random scale/rotation/flip."""
    rng = np.random.default_rng(seed)
    params = TopDownParams((128, 96), TopDownAugment(sigma=2.0, **GEOMETRY_ONLY))
    image = rng.integers(0, 255, (220, 170, 3), dtype=np.uint8)
    keypoints = np.column_stack([rng.uniform(50, 120, 17), rng.uniform(40, 180, 17), np.full(17, 2.0)])
    item = topdown_item(image, keypoints, (40, 30, 130, 190), COCO_FLIP, params, rng)
    points, scores = decode_heatmaps(item.heatmaps[None])
    back = heatmap_to_image(points[0], item.matrix, params)
    flipped = np.linalg.det(item.matrix[:, :2]) < 0
    if flipped:  # slots were swapped for the mirror: swap back to compare with the original order
        back, weights = back[COCO_FLIP], item.weights[COCO_FLIP]
    else:
        weights = item.weights
    inside = weights > 0
    assert inside.sum() >= 10
    assert np.abs(back[inside] - keypoints[inside, :2]).max() < 0.5
    assert np.all(scores[0][item.weights > 0] > 0.9)


def test_heatmap_peak_is_at_udp_position() -> None:
    heatmaps, weights = udp_heatmaps(
        np.array([[10.0, 6.0], [-5.0, 3.0]]), np.array([True, True]), (32, 24), (8, 6), 1.0
    )
    # (10, 6) in a 24x32 crop is (2.5, 1.5) in an 6x8 heatmap: index (2, 1), the Gaussian's mean exactly.
    assert np.unravel_index(heatmaps[0].argmax(), heatmaps[0].shape) == (1, 2)
    assert heatmaps[0, 1, 2] == pytest.approx(1.0)
    assert weights.tolist() == [1.0, 0.0] and not heatmaps[1].any()  # outside the crop: no target, no weight


def test_unlabelled_keypoints_get_zero_weight() -> None:
    params = TopDownParams(input_size=(64, 48))
    keypoints = np.array([[30.0, 40.0, 2.0], [32.0, 50.0, 0.0], [31.0, 45.0, 1.0]])
    item = topdown_item(np.zeros((80, 60, 3), np.uint8), keypoints, (10, 10, 50, 70), np.arange(3), params)
    assert item.weights.tolist() == [1.0, 0.0, 1.0]


def test_flip_heatmaps_is_the_mirror_of_a_flipped_crop() -> None:
    rng = np.random.default_rng(3)
    params = TopDownParams((64, 48), TopDownAugment(sigma=1.5, flip_prob=1.0, rotation_prob=0.0, shift=0.0))
    keypoints = np.column_stack([rng.uniform(25, 45, 17), rng.uniform(20, 60, 17), np.full(17, 2.0)])
    image = rng.integers(0, 255, (80, 70, 3), dtype=np.uint8)
    plain = topdown_item(image, keypoints, (15, 10, 55, 75), COCO_FLIP, params)
    # Same box, mirrored: the affine with flip, built through an rng that always flips and never scales.
    mirror_aug = TopDownAugment(sigma=1.5, scale_range=[1, 1], flip_prob=1.0, rotation_prob=0.0, shift=0.0)
    mirror_params = TopDownParams((64, 48), replace(mirror_aug, **GEOMETRY_ONLY))
    mirrored = topdown_item(image, keypoints, (15, 10, 55, 75), COCO_FLIP, mirror_params, np.random.default_rng(0))
    np.testing.assert_allclose(mirrored.image, plain.image[:, ::-1], atol=1)
    np.testing.assert_allclose(flip_heatmaps(mirrored.heatmaps, COCO_FLIP), plain.heatmaps, atol=1e-5)


def test_dense_flip_swaps_classes_and_negates_normal_x() -> None:
    sample = person_sample(1, 64, 48)
    params = DenseParams(
        (64, 48), DenseAugConfig(scale_range=[1, 1], rotation_prob=0, shift=0, flip_prob=1.0, background_prob=0)
    )
    plain = dense_item(sample, params)
    flipped = dense_item(sample, params, np.random.default_rng(0))
    lut = schema.vocabulary("goliath28").flip_lut()
    np.testing.assert_array_equal(flipped.seg, lut[plain.seg[:, ::-1]])
    assert (flipped.seg == 10).any() and (flipped.seg == 19).any()  # left and right upper arm both present
    expected_normal = plain.normal[:, ::-1] * np.array([-1, 1, 1], np.float32)
    np.testing.assert_allclose(flipped.normal, expected_normal, atol=1e-6)
    np.testing.assert_allclose(flipped.depth, plain.depth[:, ::-1], atol=1e-6)
    np.testing.assert_array_equal(flipped.image, plain.image[:, ::-1])


def test_dense_flip_swaps_lip20_classes() -> None:
    sample = person_sample(2, 64, 48, vocabulary="lip20")
    params = DenseParams(
        (64, 48), DenseAugConfig(scale_range=[1, 1], rotation_prob=0, shift=0, flip_prob=1.0, background_prob=0)
    )
    plain, flipped = dense_item(sample, params), dense_item(sample, params, np.random.default_rng(0))
    assert (plain.seg == 14).any()
    np.testing.assert_array_equal(flipped.seg, schema.vocabulary("lip20").flip_lut()[plain.seg[:, ::-1]])


def test_dense_rotation_rotates_normals_with_the_image() -> None:
    # A normal pointing right (+x) on an image turned 90 deg counter-clockwise (screen) points up (-y).
    matrix = similarity((24, 32), 1.0, 90.0, (64, 48))
    turned = np.array([1.0, 0.0]) @ vector_rotation(matrix).T
    np.testing.assert_allclose(turned, [0.0, -1.0], atol=1e-12)
    # And the same direction as a displacement of image points under the affine.
    delta = apply_affine(np.array([[25.0, 32.0]]), matrix) - apply_affine(np.array([[24.0, 32.0]]), matrix)
    np.testing.assert_allclose(delta[0], turned, atol=1e-9)


def test_dense_augmentation_keeps_labels_consistent() -> None:
    sample = person_sample(4, 96, 72)
    params = DenseParams((64, 48), DenseAugConfig(background_prob=1.0))
    for seed in range(5):
        item = dense_item(sample, params, np.random.default_rng(seed))
        assert item.image.shape == (64, 48, 3) and item.seg.shape == (64, 48)
        assert set(np.unique(item.seg)) <= set(range(28)) | {255}
        norms = np.linalg.norm(item.normal[item.normal_mask], axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        if item.depth_mask.any():
            d = item.depth[item.depth_mask]
            assert d.min() >= 0 and d.max() == pytest.approx(1.0)
        assert not item.depth_mask[~item.mask].any()  # depth is learnt on person pixels only


def test_background_replacement_touches_only_background() -> None:
    sample = person_sample(5, 64, 48)
    still = DenseAugConfig(scale_range=[1, 1], rotation_prob=0, shift=0, flip_prob=0)
    base = dense_item(sample, DenseParams((64, 48), replace(still, background_prob=0.0)), np.random.default_rng(0))
    pool = [np.full((30, 30, 3), 250, np.uint8)]
    replaced = dense_item(
        sample, DenseParams((64, 48), replace(still, background_prob=1.0)), np.random.default_rng(0), pool
    )
    np.testing.assert_array_equal(replaced.image[base.mask], base.image[base.mask])
    assert (replaced.image[~base.mask] == 250).all()


def test_normalize_depth_min_max_over_valid_pixels() -> None:
    depth = np.array([[0.0, 2.0], [3.0, 4.0]], np.float32)
    valid = np.array([[True, True], [True, False]])
    out, mask = normalize_depth(depth, valid)
    np.testing.assert_allclose(out, [[0.0, 0.0], [1.0, 0.0]])
    assert mask.tolist() == [[False, True], [True, False]]
    _, flat_mask = normalize_depth(np.full((2, 2), 2.0, np.float32), np.ones((2, 2), bool))
    assert not flat_mask.any()  # a constant depth has no relative depth to learn
