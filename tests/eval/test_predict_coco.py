"""`hv predict` with COCO files: detection results as `--boxes`, keypoint results out that `hv eval pose` scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_testdata import write_finetuned_checkpoint
from PIL import Image

from data_engine import coco
from humanvision_cli import main


def _hv(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.fixture(scope="module")
def coco_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_coco")
    ckpt = write_finetuned_checkpoint(str(root / "model.safetensors"), "pose", (32, 32), "coco17")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3)).astype(np.uint8)).save(photos / "000000000042.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 50, 3)).astype(np.uint8)).save(photos / "holiday.png")
    detections = [
        {"image_id": 42, "category_id": 1, "bbox": [4, 5, 26, 35], "score": 0.9},
        {"image_id": 42, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.4},
        {"image_id": 42, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.8},  # a car: not a person
    ]
    boxes = root / "detections.json"
    boxes.write_text(json.dumps(detections))
    return root, ckpt, boxes


def test_coco_detections_in_and_keypoint_results_out(coco_inputs, capsys):
    root, ckpt, boxes = coco_inputs
    out = root / "out"
    argv = ["predict", "--checkpoint", ckpt, str(root / "photos"), "--out", str(out), "--boxes", str(boxes)]
    code, _, err = _hv(argv, capsys)
    assert code == 0, err
    index = {e["name"]: e for e in json.loads((out / "index.json").read_text())["predicted"]}
    assert index["000000000042"]["box_source"] == "file" and index["000000000042"]["persons"] == 2
    assert index["000000000042"]["coco_image_id"] == 42
    assert index["holiday"]["box_source"] == "image" and index["holiday"]["coco_image_id"] == 2  # its position
    pose = json.loads((out / "pose" / "000000000042.json").read_text())
    assert [p["bbox"] for p in pose["persons"]] == [[4, 5, 30, 40], [0, 0, 10, 10]]

    results = json.loads((out / "coco_results.json").read_text())
    assert [r["image_id"] for r in results] == [42, 42, 2]
    ours = [r for r in results if r["image_id"] == 42]
    for result, person in zip(ours, pose["persons"], strict=True):
        assert result["category_id"] == 1 and result["score"] == pytest.approx(person["score"])
        assert np.allclose(np.reshape(result["keypoints"], (17, 3)), person["keypoints"], atol=1e-3)

    # pycocotools (through `hv eval pose`) scores the file against a GT built the way eval builds it.
    gt = {
        "images": [{"id": 42, "width": 40, "height": 48}, {"id": 2, "width": 50, "height": 30}],
        "annotations": [
            coco.gt_annotation(i + 1, r["image_id"], (0, 0, 40, 48), np.reshape(r["keypoints"], (17, 3)))
            for i, r in enumerate(results)
        ],
        "categories": [coco.gt_category("coco17")],
    }
    for a in gt["annotations"]:
        a["keypoints"] = [v if (j % 3) != 2 else 2 for j, v in enumerate(a["keypoints"])]
        a["num_keypoints"] = 17
    (root / "gt.json").write_text(json.dumps(gt))
    code, stdout, err = _hv(
        ["eval", "pose", "--gt", str(root / "gt.json"), "--pred", str(out / "coco_results.json")], capsys
    )
    assert code == 0, err
    assert json.loads(stdout)["AP"] == pytest.approx(1.0)


def test_bad_coco_detections_name_the_file_and_the_entry(coco_inputs, tmp_path, capsys):
    root, ckpt, _ = coco_inputs
    bad = tmp_path / "detections.json"
    for entries, message in (
        ([{"image_id": 42, "bbox": [1, 2, 0, 5], "score": 1}], "entry 0 has an empty box"),
        ([{"image_id": 42, "score": 1}], "entry 0 must be an object with image_id, bbox"),
        ([{"image_id": 42, "bbox": "1 2 3 4"}], "entry 0 bbox must be [x, y, w, h]"),
    ):
        bad.write_text(json.dumps(entries))
        argv = [
            "predict",
            "--checkpoint",
            ckpt,
            str(root / "photos"),
            "--out",
            str(tmp_path / "o"),
            "--boxes",
            str(bad),
        ]
        code, _, err = _hv(argv, capsys)
        assert code == 2 and "detections.json" in err and message in err, err
