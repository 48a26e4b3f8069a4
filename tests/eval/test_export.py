"""`hv export`: ONNX (run by onnxruntime) and TorchScript outputs equal eager within 1e-4; bad input refused."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from eval_testdata import write_finetuned_checkpoint

from eval.export import parse_size
from humanvision_cli import main
from train.models.weights import CheckpointError, load_finetuned


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return write_finetuned_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.safetensors"), "multi", (32, 32))


def _hv(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def _eager(checkpoint: str, images: np.ndarray) -> dict[str, np.ndarray]:
    model = load_finetuned(checkpoint).model
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(torch.from_numpy(images)).items()}


@pytest.mark.slow
def test_onnx_export_matches_eager_in_onnxruntime(checkpoint, tmp_path, capsys) -> None:
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    code, _, stderr = _hv(["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", str(out)], capsys)
    assert code == 0, stderr
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["tasks"] == ["pose", "seg", "depth", "normal"]
    assert meta["keypoint_set"] == "coco17" and meta["seg_vocabulary"] == "goliath28"
    # An independent check with a batch size the export never saw (3): the batch axis is dynamic.
    images = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images}), strict=True))
    expected = _eager(checkpoint, images)
    assert set(got) == set(expected)
    for task, value in expected.items():
        assert got[task].shape == value.shape
        np.testing.assert_allclose(got[task], value, atol=1e-4, rtol=0)
    assert got["pose"].shape == (3, 17, 8, 8) and got["depth"].shape == (3, 1, 32, 32)


@pytest.mark.slow
def test_torchscript_export_at_another_size(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "model.pt"
    argv = ["export", "--checkpoint", checkpoint, "--format", "torchscript", "--out", str(out), "--size", "48x32"]
    code, stdout, stderr = _hv(argv, capsys)
    assert code == 0, stderr
    assert "48x32" in stdout
    images = np.random.default_rng(2).standard_normal((2, 3, 48, 32)).astype(np.float32)
    loaded = torch.jit.load(str(out))
    with torch.no_grad():
        got = [t.numpy() for t in loaded(torch.from_numpy(images))]
    expected = _eager(checkpoint, images)  # the eager model resamples its position embeddings to 3x2 tokens too
    for value, task in zip(got, ["pose", "seg", "depth", "normal"], strict=True):
        np.testing.assert_allclose(value, expected[task], atol=1e-4, rtol=0)


def test_export_refuses_a_result_outside_tolerance(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", checkpoint, "--format", "onnx", "--out", str(out), "--tolerance", "0"]
    code, _, stderr = _hv(argv, capsys)
    assert code == 1
    assert "differs from eager" in stderr and "nothing written" in stderr
    assert list(tmp_path.iterdir()) == []  # no model, no temporary, no sidecar


def test_export_bad_inputs(checkpoint, tmp_path, capsys) -> None:
    def run(*extra: str, ckpt: str = checkpoint) -> tuple[int, str]:
        code, _, stderr = _hv(
            ["export", "--checkpoint", ckpt, "--format", "onnx", "--out", str(tmp_path / "m.onnx"), *extra], capsys
        )
        return code, stderr

    code, err = run(ckpt=str(tmp_path / "nope.safetensors"))
    assert code == 2 and "nope.safetensors" in err
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(pathlib.Path(checkpoint).read_bytes()[:1000])
    code, err = run(ckpt=str(truncated))
    assert code == 2 and "truncated.safetensors: not a readable safetensors file" in err
    code, err = run("--size", "100x7")
    assert code == 2 and "multiples of 16" in err
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_without_config_or_with_foreign_weights(tmp_path) -> None:
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"pos_embed": torch.zeros(1, 4, 8)}, str(bare))  # e.g. a pretraining export: no heads, no config
    with pytest.raises(CheckpointError, match=r"no fine-tuning config"):
        load_finetuned(str(bare))
    pose_only = write_finetuned_checkpoint(str(tmp_path / "pose.safetensors"), "pose", (32, 32))
    from safetensors import safe_open

    with safe_open(pose_only, framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    del state[next(k for k in state if k.startswith("heads.pose"))]
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata=meta)
    with pytest.raises(CheckpointError, match=r"broken.safetensors: weights do not fit.*1 missing \(heads.pose"):
        load_finetuned(str(broken))
    with pytest.raises(CheckpointError, match=r"does not exist|no such file"):
        load_finetuned(str(tmp_path / "absent"))


def test_parse_size() -> None:
    assert parse_size("1024x768") == (1024, 768)
    with pytest.raises(ValueError, match="HxW"):
        parse_size("1024")


def test_checkpoint_ignores_training_only_config_sections(tmp_path) -> None:
    """A run's data/optim sections change shape between versions; only model/pose/seg/task decide the model."""
    import yaml
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = write_finetuned_checkpoint(str(tmp_path / "m.safetensors"), "pose", (32, 32))
    with safe_open(src, framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        config = yaml.safe_load(f.metadata()["config"])
    config["data"] = {"shards": ["a.tar", "b.tar"], "a_key_from_another_version": 1}
    config["optim"]["not_a_field"] = True
    save_file(state, str(tmp_path / "drift.safetensors"), metadata={"config": yaml.safe_dump(config)})
    loaded = load_finetuned(str(tmp_path / "drift.safetensors"))
    assert loaded.tasks == ("pose",) and loaded.image_size == (32, 32)
    config["model"]["arch"] = "huge"  # but the model's own sections are checked
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"config": yaml.safe_dump(config)})
    with pytest.raises(CheckpointError, match=r"bad.safetensors: embedded config.*huge"):
        load_finetuned(str(tmp_path / "bad.safetensors"))
