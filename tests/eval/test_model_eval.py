"""`hv eval TASK --checkpoint --shards`: the inference geometry (pure functions) and the whole run on real shards."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from eval_testdata import labelled_sample, write_finetuned_checkpoint

from data_engine import schema
from data_engine.shards import ShardWriter
from eval.inference import ModelRunner, keypoints_from_heatmaps, map_keypoints, output_to_image
from humanvision_cli import main
from train.transforms import warp
from train.transforms.dense import DenseParams, dense_matrix
from train.transforms.pose import TopDownParams, topdown_item


def test_heatmap_decoding_returns_to_image_coordinates() -> None:
    """Targets made by the training pipeline for known points decode back to those points through our path."""
    rng = np.random.default_rng(0)
    image = np.zeros((120, 90, 3), np.uint8)
    params = TopDownParams(input_size=(64, 48), sigma=2.0)
    inside = rng.uniform([32, 42], [58, 88], (17, 2))  # well inside the crop, off the heatmap border
    kps = np.concatenate([inside, np.full((17, 1), 2.0)], axis=1)
    item = topdown_item(image, kps, (20, 25, 70, 105), schema.subset_flip_indices("coco17"), params)
    got = keypoints_from_heatmaps(item.heatmaps[None], [item.matrix], params)
    np.testing.assert_allclose(got[0, :, :2], kps[:, :2], atol=0.5)
    assert np.all(got[0, :, 2] > 0.9)


@pytest.mark.parametrize("stride", [1, 2])
def test_dense_output_returns_to_the_image_grid(stride: int) -> None:
    """A map pushed into the model's view (as the training pipeline does) comes back onto the image grid."""
    h, w = 60, 44
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1)  # (H, W, 3) ramps
    input_size = (32, 32)
    matrix = dense_matrix(h, w, DenseParams(input_size=input_size))
    out_size = (input_size[0] // stride, input_size[1] // stride)
    view = warp(smooth, matrix / stride, out_size, "linear")  # what a perfect head would output
    back = output_to_image(view.transpose(2, 0, 1), matrix, input_size, (h, w))
    assert back.shape == (h, w, 3)
    inner = (slice(2, -2), slice(2, -2))  # the outermost pixels interpolate against the letterbox border
    assert np.abs(back[inner] - smooth[inner]).max() < 0.05 * stride


def test_flip_test_undoes_the_mirror_for_seg_normal_and_pose(tmp_path) -> None:
    runner = ModelRunner(_load(write_finetuned_checkpoint(str(tmp_path / "m.safetensors"), "multi", (32, 32))))
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((1, 28, 6, 5)).astype(np.float32)
    lut = schema.vocabulary("goliath28").flip_lut()[:28]
    mirrored = logits[:, lut][..., ::-1]  # what a flip-equivariant model says about the mirrored image
    np.testing.assert_array_equal(runner._unflip("seg", mirrored), logits)
    normals = rng.standard_normal((1, 3, 6, 5)).astype(np.float32)
    mirrored = normals[..., ::-1].copy()
    mirrored[:, 0] *= -1
    np.testing.assert_array_equal(runner._unflip("normal", mirrored), normals)


def test_map_keypoints_by_name() -> None:
    full = np.zeros((308, 3))
    idx = schema.keypoint_index()
    full[idx["left_wrist"]] = (5, 6, 2)
    coco = map_keypoints(full, "all", "coco17")
    assert coco[schema.subset_names("coco17").index("left_wrist")].tolist() == [5, 6, 2]
    back = map_keypoints(coco, "coco17", "all")
    assert back[idx["left_wrist"]].tolist() == [5, 6, 2]
    assert np.count_nonzero(back[:, 2]) == 1  # the 291 points coco17 lacks come back unlabelled


def _load(path: str):
    from eval.checkpoint import load_finetuned

    return load_finetuned(path)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("modeleval")
    ckpt = write_finetuned_checkpoint(str(root / "run" / "model.safetensors"), "multi", (32, 32), "coco17")
    rng = np.random.default_rng(3)
    with ShardWriter(str(root / "val" / "val"), max_count=3) as writer:
        for i in range(5):
            writer.write(labelled_sample(rng, f"{i:04x}", keypoint_set="all"))
        bare = labelled_sample(rng, "beef")
        bare.pose = bare.seg = bare.depth = bare.normal = None
        writer.write(bare)  # no labels: counted under skipped
    # A corrupt member in the last shard: the sample is listed under bad_samples, the rest still scored.
    shard = sorted((root / "val").glob("*.tar"))[-1]
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("dead.json")
        data = b'{"schema_version": 1, "width": 4, "height": 4}'
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
        png = tarfile.TarInfo("dead.png")
        png.size = 10
        tar.addfile(png, io.BytesIO(b"\x89PNG-trunc"))
    return root, ckpt


def _hv(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.mark.slow
def test_eval_pose_from_checkpoint_reproducible_from_files(eval_data, capsys) -> None:
    root, ckpt = eval_data
    out = root / "eval-pose"
    argv = ["eval", "pose", "--checkpoint", ckpt, "--shards", str(root / "val"), "--out-dir", str(out)]
    code, stdout, stderr = _hv([*argv, "flip_test=true", "pictures=2", "batch_size=2"], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["samples_scored"] == 5 and result["skipped"] == {"no pose.json or no person": 1}
    assert [b["key"] for b in result["bad_samples"]] == ["dead"]
    assert result["keypoints"] == "coco17" and result["model"]["flip_test"] is True
    assert 0.0 <= result["AP"] <= 1.0
    assert json.loads((out / "metrics.json").read_text()) == result
    assert "flip_test: true" in (out / "config.yaml").read_text()
    assert len(list((out / "pictures").glob("*.png"))) == 2
    # The same numbers from the files it wrote, through the file command.
    code, stdout, _ = _hv(
        ["eval", "pose", "--gt", str(out / "gt_coco.json"), "--pred", str(out / "pred_coco.json")], capsys
    )
    assert code == 0
    again = json.loads(stdout)
    assert {k: again[k] for k in ("AP", "AR", "groups")} == {k: result[k] for k in ("AP", "AR", "groups")}


@pytest.mark.slow
@pytest.mark.parametrize(("task", "key"), [("seg", "mIoU"), ("depth", "rmse"), ("normal", "mean")])
def test_eval_dense_from_checkpoint(eval_data, capsys, task: str, key: str) -> None:
    root, ckpt = eval_data
    out = root / f"eval-{task}"
    argv = ["eval", task, "--checkpoint", ckpt, "--shards", str(root / "val" / "*.tar"), "--out-dir", str(out)]
    code, stdout, stderr = _hv([*argv, "batch_size=2", "pictures=1"], capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["samples_scored"] == 5 and np.isfinite(result[key])
    assert len(list((out / "pictures").glob("*.png"))) == 1
    # The report renders the evaluation folder: table and picture.
    code, _, _ = _hv(["eval", "report", str(out), "--out", str(out / "report.html")], capsys)
    text = (out / "report.html").read_text()
    assert code == 0 and key in text and "data:image/png;base64," in text


def test_eval_from_checkpoint_bad_inputs(eval_data, tmp_path, capsys) -> None:
    root, ckpt = eval_data
    code, _, err = _hv(["eval", "seg", "--checkpoint", ckpt, "--shards", str(tmp_path / "none*.tar")], capsys)
    assert code == 2 and "no shards match" in err
    code, _, err = _hv(["eval", "seg", "--checkpoint", ckpt, "--shards", str(root / "val"), "flip=true"], capsys)
    assert code == 2 and "flip" in err and "flip_test" in err  # unknown key, with the suggestion
    code, _, err = _hv(["eval", "seg", "--checkpoint", ckpt, "--gt", "x", "--pred", "y"], capsys)
    assert code == 2 and "not both" in err
    code, _, err = _hv(["eval", "seg", "--checkpoint", ckpt], capsys)
    assert code == 2 and "go together" in err
    pose_only = write_finetuned_checkpoint(str(tmp_path / "pose.safetensors"), "pose", (32, 32), "coco17")
    code, _, err = _hv(["eval", "depth", "--checkpoint", pose_only, "--shards", str(root / "val")], capsys)
    assert code == 2 and "has no depth head" in err
    code, _, err = _hv(
        ["eval", "depth", "--checkpoint", ckpt, "--shards", str(root / "val"), "bad_samples=raise"], capsys
    )
    assert code == 2 and "dead" in err
