"""Seg, depth and normal metrics against independent numpy computations, from arrays and from PNG folders."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
from eval_testdata import random_depth_pair, random_normals, random_seg_pair, write_dense_set, write_pngs

from data_engine import schema
from data_engine.sample import decode_depth, decode_normal, decode_seg, encode_depth, encode_normal, encode_seg
from eval.metrics import MetricInputError
from eval.metrics.depth import align_scale_shift, depth_metrics, depth_metrics_from_files
from eval.metrics.normal import angular_errors, normal_metrics, normal_metrics_from_files
from eval.metrics.seg import confusion_matrix, seg_metrics, seg_metrics_from_files

# ------------------------------------------------------------------------------------------------- seg


def _reference_seg(pairs, num_classes: int) -> dict:
    """Per-class masks and a looped confusion matrix: a different route to the same numbers."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for _, gt, pred in pairs:
        for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
            if g != 255:
                cm[g, p] += 1
    ious, accs = [], []
    for c in range(num_classes):
        inter = sum(int(((gt == c) & (pred == c)).sum()) for _, gt, pred in pairs)
        gt_c = sum(int((gt == c).sum()) for _, gt, _ in pairs)
        pred_c = sum(int(((pred == c) & (gt != 255)).sum()) for _, gt, pred in pairs)
        union = gt_c + pred_c - inter
        if union:
            ious.append(inter / union)
        if gt_c:
            accs.append(inter / gt_c)
    return {"cm": cm, "mIoU": np.mean(ious), "mAcc": np.mean(accs), "aAcc": np.trace(cm) / cm.sum()}


def test_seg_matches_independent_confusion_matrix() -> None:
    rng = np.random.default_rng(0)
    pairs = [(f"{i}.png", *random_seg_pair(rng, (20, 30), 28)) for i in range(3)]
    ours = seg_metrics(pairs, "goliath28")
    ref = _reference_seg(pairs, 28)
    total = sum(confusion_matrix(g, p, 28) for _, g, p in pairs)
    np.testing.assert_array_equal(total, ref["cm"])
    assert ours["mIoU"] == pytest.approx(ref["mIoU"])
    assert ours["mAcc"] == pytest.approx(ref["mAcc"])
    assert ours["aAcc"] == pytest.approx(ref["aAcc"])
    assert set(ours["per_class"]) == set(schema.vocabulary("goliath28").names)


def test_seg_absent_class_is_excluded_and_none() -> None:
    gt = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1]], dtype=np.uint8)
    r = seg_metrics([("a.png", gt, pred)], "lip20")
    # class 0: I=1, U=2; class 1: I=2, U=3; the 18 other classes are absent from both: excluded.
    assert r["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["per_class"][schema.vocabulary("lip20").names[5]] is None
    assert r["aAcc"] == pytest.approx(3 / 4)
    json.dumps(r, allow_nan=False)


def test_seg_all_ignore_set_is_an_error_but_one_all_ignore_map_is_fine() -> None:
    ignore = np.full((4, 4), 255, dtype=np.uint8)
    zeros = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(MetricInputError, match=r"no labelled pixel"):
        seg_metrics([("a.png", ignore, zeros)])
    r = seg_metrics([("a.png", ignore, zeros), ("b.png", zeros, zeros)])
    assert r["mIoU"] == 1.0 and r["pixels"] == 16


def test_seg_rejects_out_of_range_ids_and_sizes() -> None:
    gt = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(MetricInputError, match=r"x.png: prediction has class ids \[40\]"):
        seg_metrics([("x.png", gt, np.full((4, 4), 40, np.uint8))])
    with pytest.raises(MetricInputError, match=r"y.png: ground truth has class ids \[30\]"):
        seg_metrics([("y.png", np.full((4, 4), 30, np.uint8), gt)])
    with pytest.raises(MetricInputError, match=r"z.png: prediction has shape"):
        seg_metrics([("z.png", gt, np.zeros((4, 5), np.uint8))])
    with pytest.raises(MetricInputError, match=r"unknown class vocabulary"):
        seg_metrics([("z.png", gt, gt)], "coco")


# ----------------------------------------------------------------------------------------------- depth


def _reference_depth_image(pred: np.ndarray, gt: np.ndarray) -> dict:
    valid = gt > 0
    g, p = gt[valid].astype(np.float64), pred[valid].astype(np.float64)
    s, t = np.polyfit(p, g, 1)  # least squares line: a different solver from ours
    a = s * p + t
    out = {"rmse": np.sqrt(np.mean((a - g) ** 2)), "absrel": np.mean(np.abs(a - g) / g)}
    for k in (1, 2, 3):
        hit = [(ai > 0 and max(ai / gi, gi / ai) < 1.25**k) for ai, gi in zip(a, g, strict=True)]
        out[f"delta{k}"] = np.mean(hit)
    return out


def test_depth_matches_polyfit_alignment_per_image_mean() -> None:
    rng = np.random.default_rng(1)
    pairs = [(f"{i}.png", *random_depth_pair(rng, (16, 20))) for i in range(3)]
    ours = depth_metrics(pairs)
    refs = [_reference_depth_image(pred, gt) for _, gt, pred in pairs]
    for key in ("rmse", "absrel", "delta1", "delta2", "delta3"):
        assert ours[key] == pytest.approx(np.mean([r[key] for r in refs]), rel=1e-9), key
    assert ours["images"] == 3 and ours["skipped"] == []


def test_depth_alignment_recovers_exact_affine_and_handles_degenerate() -> None:
    rng = np.random.default_rng(2)
    g = rng.uniform(1, 3, 50)
    s, t = align_scale_shift((g - 0.7) / 2.5, g)
    assert (s, t) == pytest.approx((2.5, 0.7))
    # A constant prediction: the best it can do is the mean depth, never NaN.
    s, t = align_scale_shift(np.full(50, 3.0), g)
    assert s == 0.0 and t == pytest.approx(g.mean())
    gt = np.zeros((4, 4), np.float32)
    gt[0, 0] = 2.0  # one valid pixel: aligned exactly
    r = depth_metrics([("one.png", gt, np.full((4, 4), 5.0, np.float32))])
    assert r["rmse"] == pytest.approx(0.0) and r["delta1"] == 1.0


def test_depth_negative_aligned_values_are_misses() -> None:
    gt = np.array([[0.2, 0.2, 0.2, 3.0]], np.float32)
    pred = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
    # Aligned: s = 0.84, t = -0.36 -> [-0.36, 0.48, 1.32, 2.16]. Only the last is within 1.25^2 and 1.25^3;
    # taking |a| for the negative one would wrongly count it within 1.25^3 (1.8 < 1.95).
    r = depth_metrics([("a.png", gt, pred)])
    assert (r["delta1"], r["delta2"], r["delta3"]) == pytest.approx((0.0, 0.25, 0.25))
    assert r["delta3"] == pytest.approx(_reference_depth_image(pred, gt)["delta3"])


def test_depth_no_valid_pixel() -> None:
    empty = np.zeros((4, 4), np.float32)
    ok_gt, ok_pred = random_depth_pair(np.random.default_rng(0), (4, 4))
    r = depth_metrics([("empty.png", empty, empty), ("ok.png", ok_gt, ok_pred)])
    assert r["skipped"] == ["empty.png"] and r["images"] == 1
    with pytest.raises(MetricInputError, match=r"no valid ground-truth depth pixel"):
        depth_metrics([("empty.png", empty, empty)])


# --------------------------------------------------------------------------------------------- normals


def test_normal_errors_match_atan2_formula() -> None:
    rng = np.random.default_rng(3)
    gt = random_normals(rng, (12, 10))
    pred = random_normals(rng, (12, 10), background=0.0) * rng.uniform(0.5, 2.0, (12, 10, 1))  # not unit
    ours = angular_errors(pred, gt)
    valid = np.any(gt != 0, axis=-1)
    g, p = gt[valid].astype(np.float64), pred[valid].astype(np.float64)
    ref = np.degrees(np.arctan2(np.linalg.norm(np.cross(g, p), axis=-1), np.sum(g * p, axis=-1)))
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    r = normal_metrics([("a.png", gt, pred)])
    assert r["mean"] == pytest.approx(ref.mean())
    assert r["median"] == pytest.approx(np.median(ref))
    assert r["within_30"] == pytest.approx(np.mean(ref < 30))
    assert r["pixels"] == int(valid.sum())


def test_normal_zero_prediction_is_a_full_miss_and_empty_set_errors() -> None:
    gt = np.zeros((2, 2, 3), np.float32)
    gt[0, 0] = (0, 0, -1)
    gt[0, 1] = (1, 0, 0)
    pred = np.zeros((2, 2, 3), np.float32)
    pred[0, 1] = (1, 0, 0)
    assert angular_errors(pred, gt).tolist() == pytest.approx([180.0, 0.0])
    with pytest.raises(MetricInputError, match=r"no valid ground-truth normal pixel"):
        normal_metrics([("a.png", np.zeros((2, 2, 3)), np.ones((2, 2, 3)))])
    with pytest.raises(MetricInputError, match=r"b.png"):
        normal_metrics([("b.png", gt, np.zeros((2, 3, 3)))])


# ------------------------------------------------------------------------------------------ from files


def test_file_metrics_equal_array_metrics_after_png_round_trip(tmp_path) -> None:
    dirs = write_dense_set(str(tmp_path), np.random.default_rng(4), count=3)

    def load(task, decoder):
        gt_dir, pred_dir = dirs[task]
        names = sorted(os.listdir(gt_dir))
        return [
            (
                n,
                decoder(open(os.path.join(gt_dir, n), "rb").read()),
                decoder(open(os.path.join(pred_dir, n), "rb").read()),
            )
            for n in names
        ]

    assert seg_metrics_from_files(*dirs["seg"])["mIoU"] == pytest.approx(seg_metrics(load("seg", decode_seg))["mIoU"])
    assert depth_metrics_from_files(*dirs["depth"])["rmse"] == pytest.approx(
        depth_metrics(load("depth", decode_depth))["rmse"]
    )
    assert normal_metrics_from_files(*dirs["normal"])["mean"] == pytest.approx(
        normal_metrics(load("normal", decode_normal))["mean"]
    )


def test_file_metrics_reject_mismatched_names_corrupt_and_empty(tmp_path) -> None:
    dirs = write_dense_set(str(tmp_path), np.random.default_rng(5), count=2)
    gt_dir, pred_dir = dirs["seg"]
    os.rename(os.path.join(pred_dir, "001.png"), os.path.join(pred_dir, "xyz.png"))
    with pytest.raises(MetricInputError, match=r"have no prediction \(001.png\).*no ground truth \(xyz.png\)"):
        seg_metrics_from_files(gt_dir, pred_dir)

    gt_dir, pred_dir = dirs["depth"]
    broken = pathlib.Path(pred_dir, "000.png")
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    with pytest.raises(MetricInputError, match=r"depth/pred/000.png"):
        depth_metrics_from_files(gt_dir, pred_dir)
    # An 8-bit seg map where a 16-bit depth PNG belongs: named, with the reason.
    write_pngs(pred_dir, {"000.png": encode_seg(np.zeros((24, 32), np.uint8))})
    with pytest.raises(MetricInputError, match=r"000.png: depth.png must be a 16-bit grey PNG"):
        depth_metrics_from_files(gt_dir, pred_dir)
    broken.write_bytes(b"")
    with pytest.raises(MetricInputError, match=r"000.png is empty"):
        depth_metrics_from_files(gt_dir, pred_dir)

    gt_dir, pred_dir = dirs["normal"]
    write_pngs(pred_dir, {"000.png": encode_normal(random_normals(np.random.default_rng(0), (10, 10)))})
    with pytest.raises(MetricInputError, match=r"000.png: prediction has shape"):
        normal_metrics_from_files(gt_dir, pred_dir)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MetricInputError, match=r"holds no .png files"):
        seg_metrics_from_files(str(empty), dirs["seg"][1])
    with pytest.raises(MetricInputError, match=r"does not exist"):
        seg_metrics_from_files(str(tmp_path / "nope"), dirs["seg"][1])


def test_depth_png_all_background_set_errors(tmp_path) -> None:
    zeros = np.zeros((8, 8), np.float32)
    gt = write_pngs(str(tmp_path / "gt"), {"a.png": encode_depth(zeros)})
    pred = write_pngs(str(tmp_path / "pred"), {"a.png": encode_depth(zeros + 1)})
    with pytest.raises(MetricInputError, match=r"no valid ground-truth depth pixel"):
        depth_metrics_from_files(gt, pred)
