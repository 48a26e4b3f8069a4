"""Pictures: the right pixels get the right colours, bad shapes are refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data_engine import schema
from eval.visualize import (
    GROUP_COLORS,
    colorize_depth,
    colormap,
    draw_pose,
    keypoint_colors,
    normal_to_rgb,
    overlay_seg,
    panel,
    png_bytes,
    seg_legend,
    seg_with_legend,
)


def test_keypoint_colors_follow_goliath_groups() -> None:
    colors = keypoint_colors("all")
    kps = schema.keypoints()
    assert colors.shape == (308, 3)
    for i in (0, 41, 62, 100, 300):
        assert tuple(colors[i]) == GROUP_COLORS[kps[i].group]


def test_draw_pose_paints_visible_points_and_links_only() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    k = len(schema.subset("coco17"))
    kp = np.zeros((k, 3))
    names = schema.subset_names("coco17")
    left_shoulder, left_elbow = names.index("left_shoulder"), names.index("left_elbow")
    kp[left_shoulder] = (20.5, 50.5, 2)
    kp[left_elbow] = (80.5, 50.5, 2)
    kp[0] = (50.5, 10.5, 0)  # nose, unlabelled: not drawn
    out = draw_pose(image, [kp], "coco17", radius=3)
    body = GROUP_COLORS["body"]
    assert tuple(out[50, 20]) == body and tuple(out[50, 80]) == body
    assert tuple(out[50, 50]) == body  # the shoulder-elbow link passes through the middle
    assert out[10, 50].sum() == 0
    assert image.sum() == 0  # the input is not modified
    with pytest.raises(ValueError, match=r"\(16, 3\).*needs \(17, 3\)"):
        draw_pose(image, [kp[:16]], "coco17")
    with pytest.raises(ValueError, match=r"uint8"):
        draw_pose(image.astype(np.float32), [kp], "coco17")


def test_draw_pose_all_308_points_colours_hands_and_face() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((256, 256, 3), np.uint8)
    kp = np.concatenate([rng.uniform(10, 246, (308, 2)), np.full((308, 1), 0.9)], axis=1)
    out = draw_pose(image, [kp], "all")
    colors = {tuple(c) for c in out.reshape(-1, 3)}
    for group in ("body", "left_hand", "right_hand", "face", "feet"):
        assert GROUP_COLORS[group] in colors, group


def test_seg_overlay_and_legend() -> None:
    image = np.full((10, 10, 3), 100, np.uint8)
    seg = np.zeros((10, 10), np.uint8)
    seg[:5] = 3
    seg[9, 9] = 255
    out = overlay_seg(image, seg, "goliath28", alpha=1.0)
    assert tuple(out[0, 0]) == schema.vocabulary("goliath28").classes[3].color
    assert tuple(out[9, 0]) == (100, 100, 100) and tuple(out[9, 9]) == (100, 100, 100)
    legend = seg_legend("goliath28", [3, 5])
    assert tuple(schema.vocabulary("goliath28").classes[5].color) in {tuple(c) for c in legend.reshape(-1, 3)}
    both = seg_with_legend(image, seg)
    assert both.shape[0] >= 10 and both.shape[1] > 10
    with pytest.raises(ValueError, match=r"seg has shape"):
        overlay_seg(image, seg[:5], "goliath28")


def test_depth_colours_are_ordered_and_background_black() -> None:
    depth = np.array([[0.0, 1.0, 2.0, 3.0]])
    out = colorize_depth(depth)
    assert out[0, 0].tolist() == [0, 0, 0]
    # Near is bright: the nearest valid pixel is viridis' yellow end, the farthest its purple end.
    assert out[0, 1].tolist() == colormap(np.array(1.0)).tolist()
    assert out[0, 3].tolist() == colormap(np.array(0.0)).tolist()
    assert colorize_depth(np.zeros((3, 3))).sum() == 0  # nothing valid: black, not NaN


def test_normal_rgb_mapping() -> None:
    n = np.zeros((1, 3, 3))
    n[0, 0] = (0, 0, -1)
    n[0, 1] = (2, 0, 0)  # not unit: normalised first
    out = normal_to_rgb(n)
    assert out[0, 0].tolist() == [128, 128, 0]
    assert out[0, 1].tolist() == [255, 128, 128]
    assert out[0, 2].tolist() == [0, 0, 0]


def test_panel_and_png_round_trip() -> None:
    a = np.full((20, 30, 3), 10, np.uint8)
    b = np.full((40, 40, 3), 200, np.uint8)
    out = panel([a, b], ["a", "b"], max_height=40, min_height=0)
    assert out.shape[0] == 40 + 18  # common height plus the title bar
    enlarged = panel([a], max_height=384, min_height=100)  # small pictures are enlarged, pixels kept crisp
    assert enlarged.shape[:2] == (100, 150) and set(np.unique(enlarged)) == {10}
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(out))))
    np.testing.assert_array_equal(decoded, out)
    with pytest.raises(ValueError, match=r"2 titles for 1"):
        panel([a], ["a", "b"])
    with pytest.raises(ValueError, match=r"at least one"):
        panel([])
