"""Prediction pictures: depth and normals inside the predicted person, legends legible at any image size."""

from __future__ import annotations

import numpy as np

from eval.visualize import dense_pictures, legend_row, panel, seg_with_legend


def _maps(h: int, w: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    seg = np.zeros((h, w), np.uint8)
    seg[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = 5  # the person
    seg[h // 4, w // 3] = 255  # ignore
    depth = rng.uniform(1, 100, (h, w)).astype(np.float32)  # the background's guesses span a wide range
    normal = rng.normal(size=(h, w, 3)).astype(np.float32)
    return image, {"seg": seg, "depth": depth, "normal": normal}


def test_depth_and_normals_are_drawn_inside_the_person_mask():
    image, maps = _maps(60, 90)
    pictures, titles = dense_pictures(image, maps)
    assert titles == ["segmentation", "depth (near = bright), person", "normals, person"]
    person = (maps["seg"] != 0) & (maps["seg"] != 255)
    for picture in pictures[1:]:
        assert picture.shape[:2] == person.shape
        assert not picture[~person].any() and picture[person].any()


def test_without_a_seg_head_the_whole_frame_is_drawn_and_the_title_says_so():
    image, maps = _maps(60, 90)
    del maps["seg"]
    pictures, titles = dense_pictures(image, maps)
    assert titles == ["depth (near = bright), whole frame", "normals, whole frame"]
    assert all(p.any(axis=-1).mean() > 0.9 for p in pictures)


def test_the_legend_grows_with_the_image_so_it_reads_the_same_once_shown():
    assert legend_row(256) == 16 and legend_row(1024) == 43
    small_image, small = _maps(128, 96)
    big_image, big = _maps(1024, 768)
    small_legend = seg_with_legend(small_image, small["seg"]).shape[1] - 96
    big_legend = seg_with_legend(big_image, big["seg"]).shape[1] - 768
    assert big_legend > 2.2 * small_legend
    # In the panel, where the 1024 px picture is shown 384 px tall, the legend keeps about its small-image width.
    shown = panel([seg_with_legend(big_image, big["seg"])])
    assert shown.shape[0] == 384 and shown.shape[1] - 288 >= 0.8 * small_legend
