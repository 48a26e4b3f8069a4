"""Dense eval reads `.npy` depth and normal predictions (Sapiens' own output format) beside our PNGs."""

from __future__ import annotations

import numpy as np
import pytest

from data_engine.sample import encode_depth, encode_normal
from eval.metrics import MetricInputError
from eval.metrics.depth import depth_metrics_from_files
from eval.metrics.normal import normal_metrics_from_files


def _normals(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    n = rng.normal(size=(*shape, 3))
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    depth = rng.uniform(1.0, 3.0, (12, 10)).astype(np.float32)
    normal = _normals(rng, (12, 10))
    (gt / "depth").mkdir()
    (gt / "normal").mkdir()
    (gt / "depth" / "a.png").write_bytes(encode_depth(depth))
    (gt / "normal" / "a.png").write_bytes(encode_normal(normal))
    (pred / "depth").mkdir()
    (pred / "normal").mkdir()
    # Relative depth (scale and shift are aligned by the metric) and normals not yet unit length.
    np.save(pred / "depth" / "a.npy", (np.rint(depth * 1000) / 1000 * 0.5 + 0.2).astype(np.float32))
    np.save(pred / "normal" / "a.npy", normal * 3.0)
    return gt, pred


def test_npy_predictions_score_like_the_same_maps_as_png(folders):
    gt, pred = folders
    depth = depth_metrics_from_files(str(gt / "depth"), str(pred / "depth"))
    assert depth["images"] == 1 and depth["absrel"] < 1e-5 and depth["delta1"] == 1.0
    normal = normal_metrics_from_files(str(gt / "normal"), str(pred / "normal"))
    assert normal["images"] == 1 and normal["mean"] < 0.01  # degrees: 16-bit quantisation of the GT only


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros((12, 10, 2)), r"must be a \(H, W, 3\) number array"),
        (np.full((12, 10, 3), np.nan), "NaN or infinite"),
        (np.zeros((5, 10, 3)), r"prediction has shape \(5, 10, 3\), ground truth \(12, 10, 3\)"),
        (np.array(["a", "b"]), "number array"),
    ],
)
def test_bad_npy_predictions_name_the_file(folders, content, message):
    gt, pred = folders
    np.save(pred / "normal" / "a.npy", content)
    with pytest.raises(MetricInputError, match=message) as info:
        normal_metrics_from_files(str(gt / "normal"), str(pred / "normal"))
    assert "a.npy" in str(info.value)


def test_truncated_npy_and_two_predictions_for_one_name_are_errors(folders):
    gt, pred = folders
    (pred / "depth" / "a.npy").write_bytes((pred / "depth" / "a.npy").read_bytes()[:60])
    with pytest.raises(MetricInputError, match=r"a\.npy: not a readable \.npy file"):
        depth_metrics_from_files(str(gt / "depth"), str(pred / "depth"))
    (pred / "depth" / "a.png").write_bytes((gt / "depth" / "a.png").read_bytes())
    with pytest.raises(MetricInputError, match="two predictions for 'a'"):
        depth_metrics_from_files(str(gt / "depth"), str(pred / "depth"))
