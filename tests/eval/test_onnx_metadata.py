"""An exported ONNX file describes itself: with onnxruntime and NumPy alone (no sidecar, no humanvision code) a
reader finds the tasks, input size, normalisation, output strides, keypoint names and classes, and reproduces
what `train.predictor.Predictor` gives for the same image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_testdata import write_finetuned_checkpoint

from humanvision_cli import main


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("onnx")
    ckpt = write_finetuned_checkpoint(str(root / "model.safetensors"), "multi", (32, 48), "coco17")
    out = root / "model.onnx"
    with pytest.raises(SystemExit) as done:
        main(["export", "--checkpoint", ckpt, "--format", "onnx", "--out", str(out)])
    assert done.value.code in (0, None)
    (root / "model.onnx.json").unlink()  # the file alone
    return ckpt, str(out)


def _sample_at_pixel_centres(maps: np.ndarray, stride: int) -> np.ndarray:
    """(C, h, w) map at `stride` input pixels per map pixel -> (C, h * stride, w * stride), bilinear at the input
    pixel centres, zero outside the map (what torch's grid_sample with align_corners=False does)."""
    c, h, w = maps.shape
    padded = np.zeros((c, h + 2, w + 2), np.float64)
    padded[:, 1:-1, 1:-1] = maps
    ys = (np.arange(h * stride) + 0.5) / stride - 0.5 + 1
    xs = (np.arange(w * stride) + 0.5) / stride - 0.5 + 1
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = padded[:, y0][:, :, x0] * (1 - fx) + padded[:, y0][:, :, x0 + 1] * fx
    bottom = padded[:, y0 + 1][:, :, x0] * (1 - fx) + padded[:, y0 + 1][:, :, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def test_onnxruntime_alone_reproduces_predictor_from_the_metadata(exported):
    import onnxruntime as ort

    from train.predictor import Predictor  # the reference only

    ckpt, path = exported
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    tasks = meta["humanvision.tasks"]
    assert tasks == ["pose", "seg", "depth", "normal"]
    _, _, h, w = meta["humanvision.input"]["shape"]
    assert (h, w) == (32, 48)
    outputs = {o["name"]: o for o in meta["humanvision.outputs"]}
    assert {t: outputs[t]["stride"] for t in tasks} == {"pose": 4, "seg": 2, "depth": 1, "normal": 2}
    assert meta["humanvision.keypoint_names"][:3] == ["nose", "left_eye", "right_eye"]
    assert len(meta["humanvision.keypoint_names"]) == 17 and len(meta["humanvision.seg_classes"]) == 28
    assert meta["humanvision.contract"]["keypoint_set"] == "coco17"
    # Each output declares its own dims.
    declared = {o.name: o.shape for o in session.get_outputs()}
    assert declared == {
        "pose": ["batch", 17, 8, 12],
        "seg": ["batch", 28, 16, 24],
        "depth": ["batch", 1, 32, 48],
        "normal": ["batch", 3, 16, 24],
    }

    image = np.random.default_rng(2).integers(0, 256, (h, w, 3), dtype=np.uint8)
    norm = meta["humanvision.normalize"]
    x = (image.astype(np.float32) * norm["scale"][0] - np.float32(norm["mean"])) / np.float32(norm["std"])
    got = dict(zip(tasks, session.run(None, {"images": x.transpose(2, 0, 1)[None].astype(np.float32)}), strict=True))

    want = Predictor(ckpt).dense([image])[0]
    np.testing.assert_allclose(got["depth"][0, 0], want.depth, atol=1e-4)
    logits = got["seg"][0].astype(np.float64)
    probs = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    seg = _sample_at_pixel_centres(probs, outputs["seg"]["stride"]).argmax(0)
    assert (seg == want.seg).mean() > 0.99
    normal = got["normal"][0] / np.linalg.norm(got["normal"][0], axis=0, keepdims=True)
    normal = _sample_at_pixel_centres(normal, outputs["normal"]["stride"])
    normal = (normal / np.linalg.norm(normal, axis=0, keepdims=True)).transpose(1, 2, 0)
    np.testing.assert_allclose(normal, want.normal, atol=1e-4)


def test_with_decode_adds_keypoints_in_input_pixels(exported, tmp_path):
    import onnxruntime as ort

    ckpt, _ = exported
    out = tmp_path / "decoded.onnx"
    with pytest.raises(SystemExit) as done:
        main(["export", "--checkpoint", ckpt, "--format", "onnx", "--out", str(out), "--with-decode"])
    assert done.value.code in (0, None)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert [o["name"] for o in meta["humanvision.outputs"]][-1] == "pose_keypoints"
    assert session.get_outputs()[-1].shape == ["batch", 17, 3]
    images = np.random.default_rng(3).standard_normal((2, 3, 32, 48)).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"images": images}), strict=True))
    heatmaps = got["pose"]  # (2, 17, 8, 12): stride 4
    flat = heatmaps.reshape(2, 17, -1)
    index = flat.argmax(-1)
    want = np.stack([(index % 12 + 0.5) * 4, (index // 12 + 0.5) * 4, flat.max(-1)], -1)
    np.testing.assert_allclose(got["pose_keypoints"], want, atol=1e-5)
