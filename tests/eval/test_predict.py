"""`hv predict`: images, folders and shards in; pictures, pose JSON and contract PNGs out; bad inputs recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_testdata import labelled_sample, write_finetuned_checkpoint
from PIL import Image

from data_engine.sample import decode_depth, decode_normal, decode_seg
from data_engine.shards import ShardWriter
from eval.cli import split_overrides
from humanvision_cli import main
from train.predictor import Predictor


@pytest.fixture(scope="module")
def predict_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    ckpt = write_finetuned_checkpoint(str(root / "model.safetensors"), "multi", (32, 32), "all")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3)).astype(np.uint8)).save(photos / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 50, 3)).astype(np.uint8)).save(photos / "b.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    sample = labelled_sample(rng, "abc1")
    sample.meta["persons"] = [{"bbox": [2.0, 3.0, 20.0, 30.0], "score": 0.9, "detector": "hog"}]
    with ShardWriter(str(root / "shards" / "s"), max_count=10) as writer:
        writer.write(sample)
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps({"a.jpg": [[4, 5, 30, 40], [0, 0, 10, 10, 0.5]]}))
    return root, ckpt, boxes


def _hv(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.mark.slow
def test_predict_images_and_shards(predict_inputs, capsys) -> None:
    root, ckpt, boxes = predict_inputs
    out = root / "out"
    argv = ["predict", "--checkpoint", ckpt, str(root / "photos"), str(root / "shards" / "*.tar"), "--out", str(out)]
    code, stdout, stderr = _hv([*argv, "--boxes", str(boxes), "batch_size=2"], capsys)
    assert code == 1, stderr  # broken.jpg failed: the command fails, after writing the others
    assert "3 predicted, 1 failed" in stdout and "broken.jpg" in stderr
    index = json.loads((out / "index.json").read_text())
    assert [e["name"] for e in index["predicted"]] == ["a", "b", "abc1"]
    assert index["failed"][0]["name"] == "broken" and "not a readable image" in index["failed"][0]["reason"]
    sources = {e["name"]: e["box_source"] for e in index["predicted"]}
    assert sources == {"a": "file", "b": "image", "abc1": "shard json.persons"}

    pose_a = json.loads((out / "pose" / "a.json").read_text())
    assert pose_a["keypoint_set"] == "all" and len(pose_a["persons"]) == 2
    assert pose_a["persons"][0]["bbox"] == [4, 5, 30, 40] and pose_a["persons"][1]["box_score"] == 0.5
    assert np.asarray(pose_a["persons"][0]["keypoints"]).shape == (308, 3)
    pose_b = json.loads((out / "pose" / "b.json").read_text())
    assert pose_b["persons"][0]["bbox"] == [0, 0, 50, 30]  # whole image

    # Maps have the input's size, decode with the contract codecs, and equal a direct run of the model.
    seg_b = decode_seg((out / "seg" / "b.png").read_bytes())
    depth_b = decode_depth((out / "depth" / "b.png").read_bytes())
    normal_b = decode_normal((out / "normal" / "b.png").read_bytes())
    assert seg_b.shape == depth_b.shape == normal_b.shape[:2] == (30, 50)
    assert np.all(depth_b > 0)
    image_b = np.asarray(Image.open(root / "photos" / "b.png").convert("RGB"))
    direct = Predictor(ckpt).dense([image_b])[0]
    np.testing.assert_array_equal(seg_b, direct.seg)
    assert {p.name for p in (out / "pictures").iterdir()} == {"a.png", "b.png", "abc1.png"}
    picture = np.asarray(Image.open(out / "pictures" / "a.png"))
    assert picture.shape[1] > 4 * 40  # image, pose, seg + legend, depth, normal side by side

    # The seg PNGs are what `hv eval seg --pred` reads.
    gt = root / "gt_seg"
    gt.mkdir()
    (gt / "b.png").write_bytes((out / "seg" / "b.png").read_bytes())
    pred = root / "pred_seg"
    pred.mkdir()
    (pred / "b.png").write_bytes((out / "seg" / "b.png").read_bytes())
    code, stdout, _ = _hv(["eval", "seg", "--gt", str(gt), "--pred", str(pred)], capsys)
    assert code == 0 and json.loads(stdout)["aAcc"] == 1.0


def test_predict_bad_inputs(predict_inputs, tmp_path, capsys) -> None:
    root, ckpt, _ = predict_inputs

    def run(*extra: str) -> tuple[int, str]:
        code, _, err = _hv(["predict", "--checkpoint", ckpt, "--out", str(tmp_path / "o"), *extra], capsys)
        return code, err

    code, err = run(str(tmp_path / "missing.jpg"))
    assert code == 2 and "missing.jpg' does not exist" in err
    bad_boxes = tmp_path / "boxes.json"
    bad_boxes.write_text(json.dumps({"a.jpg": [[10, 10, 5, 5]]}))
    code, err = run(str(root / "photos" / "a.jpg"), "--boxes", str(bad_boxes))
    assert code == 2 and "entry 'a.jpg' has an empty box" in err
    bad_boxes.write_text("[[1, 2, 3, 4]]")
    code, err = run(str(root / "photos" / "a.jpg"), "--boxes", str(bad_boxes))
    assert code == 2 and "must be an object" in err
    code, err = run(str(root / "photos" / "a.jpg"), "tasks=[flow]")
    assert code == 2 and "flow" in err
    code, err = run(str(root / "photos" / "a.jpg"), "batchsize=2")
    assert code == 2 and "batchsize" in err
    code, err = run(str(root / "photos" / "broken.jpg"), "bad_samples=raise")
    assert code == 2 and "broken.jpg: not a readable image" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run(str(empty))
    assert code == 2 and "holds no images" in err


def test_predict_fails_when_an_input_failed_after_writing_the_others(predict_inputs, tmp_path, capsys) -> None:
    """An image file declaring 12000x12000 (a 0.2 MB JPEG that decodes to 432 MB) is refused from its header."""
    root, ckpt, _ = predict_inputs
    bomb = tmp_path / "bomb.jpg"
    Image.new("L", (12000, 12000), 128).save(bomb, quality=50)
    out = tmp_path / "o"
    argv = ["predict", "--checkpoint", ckpt, str(root / "photos" / "a.jpg"), str(bomb), "--out", str(out)]
    code, stdout, stderr = _hv([*argv, "tasks=[pose]"], capsys)
    assert code == 1, stderr
    assert "1 predicted, 1 failed" in stdout
    index = json.loads((out / "index.json").read_text())
    assert [e["name"] for e in index["predicted"]] == ["a"] and (out / "pose" / "a.json").is_file()
    (failed,) = index["failed"]
    assert failed["name"] == "bomb" and "12000x12000" in failed["reason"] and "max_pixels" in failed["reason"]
    code, _, _ = _hv(["predict", "--checkpoint", ckpt, str(root / "photos" / "a.jpg"), "--out", str(out)], capsys)
    assert code == 0


@pytest.mark.slow
def test_predict_with_the_curation_detector(predict_inputs, tmp_path, capsys) -> None:
    root, ckpt, _ = predict_inputs
    argv = ["predict", "--checkpoint", ckpt, str(root / "photos" / "a.jpg"), "--out", str(tmp_path / "o")]
    code, _, stderr = _hv([*argv, "box_source=detector", "detector.name=hog", "tasks=[pose]"], capsys)
    assert code == 0, stderr
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    # 48x40 is smaller than one HOG window: nobody found, recorded, and the whole image used instead.
    assert index["predicted"][0]["box_source"] == "image (detector found nobody)"
    assert not (tmp_path / "o" / "seg").exists()  # tasks=[pose]: no dense maps


def test_split_overrides(tmp_path) -> None:
    odd = tmp_path / "x=1.jpg"
    odd.write_bytes(b"")
    assert split_overrides(["a.jpg", "batch_size=2", str(odd), "detector.name=hog"]) == (
        ["a.jpg", str(odd)],
        ["batch_size=2", "detector.name=hog"],
    )
