"""`hv import coco`: a COCO-WholeBody-style file round-trips import -> shards -> eval's COCO ground truth with the
same keypoints and AP 1.0 on itself; every image is accounted for; bad files fail with one clear line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_engine import coco, schema
from data_engine.shards import iter_samples
from eval.metrics.pose import pose_metrics
from humanvision_cli import main

W, H = 64, 48


def _hv(*argv: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return int(done.value.code or 0)


def _person(rng: np.random.Generator, ann_id: int, image_id: int, with_mask: bool) -> dict:
    def points(n: int) -> list[float]:
        xy = rng.uniform([8, 6], [W - 8, H - 6], (n, 2)).round(2)
        v = rng.choice([0, 1, 2], n, p=[0.2, 0.3, 0.5])
        xy[v == 0] = 0
        return np.column_stack([xy, v]).reshape(-1).tolist()

    ann = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "bbox": [4.0, 3.0, 50.0, 40.0],
        "area": 2000.0,
        "iscrowd": 0,
        "keypoints": points(17),
        "foot_kpts": points(6),
        "face_kpts": points(68),
        "lefthand_kpts": points(21),
        "righthand_kpts": points(21),
    }
    if with_mask:
        ann["segmentation"] = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
    return ann


@pytest.fixture
def wholebody(tmp_path):
    rng = np.random.default_rng(3)
    images = tmp_path / "images"
    images.mkdir()
    pixels = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.jpg", quality=90)
    Image.fromarray(pixels[::-1].copy()).save(images / "b.png")
    Image.fromarray(pixels[:, ::-1].copy()).save(images / "c.jpg")
    Image.fromarray(pixels[:24]).save(images / "small.png")  # the file says 64x48
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    Image.fromarray(pixels).save(images / "empty_scene.png")
    entries = [("a.jpg", 1), ("b.png", 2), ("c.jpg", 3), ("small.png", 4), ("broken.jpg", 5)]
    entries += [("missing.jpg", 6), ("empty_scene.png", 7)]
    annotations = [
        _person(rng, 1, 1, with_mask=True),
        _person(rng, 2, 1, with_mask=False),
        _person(rng, 3, 2, with_mask=False),
        _person(rng, 4, 3, with_mask=True),
        _person(rng, 5, 4, with_mask=False),
        _person(rng, 6, 5, with_mask=False),
        {**_person(rng, 7, 3, with_mask=False), "iscrowd": 1},  # a crowd region is no person
    ]
    data = {
        "images": [{"id": i, "file_name": name, "width": W, "height": H} for name, i in entries],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "keypoints": list(schema.COCO17_NAMES), "skeleton": []}],
    }
    path = tmp_path / "wholebody.json"
    path.write_text(json.dumps(data))
    return path, images, data


def _named(ann: dict) -> dict[str, tuple[float, float, float]]:
    """Every labelled point of an annotation by its WholeBody name."""
    out = {}
    arrays = [("keypoints", list(schema.COCO17_NAMES)), *coco.WHOLEBODY_PARTS]
    for field, names in arrays:
        for name, xyv in zip(names, np.asarray(ann[field]).reshape(-1, 3), strict=True):
            if xyv[2] > 0:
                out[name] = tuple(float(v) for v in xyv)
    return out


def test_wholebody_round_trips_to_eval_ground_truth_with_ap_1(wholebody, tmp_path):
    path, images, data = wholebody
    out = tmp_path / "out"
    assert _hv("import", "coco", str(path), str(images), "--out", str(out)) == 0

    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert len(rows) == len(data["images"])  # every image accounted for
    assert {n: r["status"] for n, r in rows.items() if r["status"] == "accepted"}.keys() == {"a.jpg", "b.png", "c.jpg"}
    assert "the file says 64x48" in rows["small.png"]["reason"] and "is 64x24" in rows["small.png"]["reason"]
    assert "unreadable image" in rows["broken.jpg"]["reason"]
    assert "cannot read the image" in rows["missing.jpg"]["reason"]
    assert rows["empty_scene.png"]["reason"] == "no person annotation"

    samples = {s.meta["source"]["coco_image_id"]: s for s in iter_samples(str(out / "shards"))}
    assert sorted(samples) == [1, 2, 3]
    index = schema.keypoint_index()
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if not ann["iscrowd"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
    gt = {"images": [], "annotations": [], "categories": [coco.gt_category("all")]}
    for image_id, s in samples.items():
        assert s.pose.keypoint_set == "all" and len(s.pose.persons) == len(by_image[image_id])
        assert np.array_equal(s.image, np.asarray(Image.open(images / s.meta["source"]["uri"].rsplit("/", 1)[-1])))
        for person, ann in zip(s.pose.persons, by_image[image_id], strict=True):
            assert person.bbox == (4.0, 3.0, 54.0, 43.0)
            named = _named(ann)
            labelled = {i for i in range(schema.NUM_KEYPOINTS) if person.keypoints[i, 2] > 0}
            expected = {}
            for name, xyv in named.items():
                target = coco.goliath_index(name)
                if target is not None and target not in expected:  # the body's wrist wins over the hand root
                    expected[target] = xyv
            assert labelled == set(expected)
            for i, xyv in expected.items():
                assert np.allclose(person.keypoints[i], xyv, atol=1e-4), schema.keypoints()[i].name
            assert person.keypoints[index["left_thumb_third_joint"], 2] == (
                named["left_thumb1"][2] if "left_thumb1" in named else 0
            )
        gt["images"].append({"id": image_id, "width": W, "height": H})
        for person in s.pose.persons:
            gt["annotations"].append(
                coco.gt_annotation(len(gt["annotations"]) + 1, image_id, person.bbox, person.keypoints)
            )
    # The mask: the union of the given polygons (image 1: one person of two has one), absent where none is given.
    assert samples[1].mask is not None and samples[1].mask[20, 20] and not samples[1].mask[40, 5]
    assert samples[2].mask is None
    assert gt["categories"][0]["skeleton"] and all(min(link) >= 1 for link in gt["categories"][0]["skeleton"])
    preds = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in gt["annotations"]
    ]
    assert pose_metrics(gt, preds, "all")["AP"] == pytest.approx(1.0)


def test_bad_annotation_files_fail_with_one_line_naming_the_file(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cases = {
        "missing.json": None,
        "not_json.json": "{not json",
        "list.json": "[]",
        "no_images.json": json.dumps({"annotations": [], "categories": []}),
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        assert _hv("import", "coco", str(tmp_path / name), str(images), "--out", str(tmp_path / "out")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and name in err[0], err


def test_a_person_with_the_wrong_number_of_points_rejects_its_image_with_the_reason(wholebody, tmp_path):
    path, images, data = wholebody
    data["annotations"][2]["lefthand_kpts"] = data["annotations"][2]["lefthand_kpts"][:30]
    path.write_text(json.dumps(data))
    report = coco.import_coco(str(path), str(images), str(tmp_path / "out"), log=lambda s: None)
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in report.rows}
    assert rows["b.png"]["status"] == "rejected"
    assert rows["b.png"]["reason"] == "annotation 3: lefthand_kpts has 10 points, expected 21"
    assert rows["a.jpg"]["status"] == "accepted" and "face-0" in report.unmapped


def test_finger_names_map_from_the_palm_out():
    index = schema.keypoint_index()
    assert coco.goliath_index("left_hand_root") == index["left_wrist"]
    assert coco.goliath_index("right_forefinger1") == index["right_forefinger_third_joint"]
    assert coco.goliath_index("right_forefinger4") == index["right_forefinger4"]
    assert coco.goliath_index("left_big_toe") == index["left_big_toe"]
    assert coco.goliath_index("face-12") is None


def test_broken_annotations_and_duplicate_images_are_recorded_per_image(wholebody, tmp_path):
    path, images, data = wholebody
    (images / "a_again.jpg").write_bytes((images / "a.jpg").read_bytes())
    data["images"].append({"id": 8, "file_name": "a_again.jpg", "width": W, "height": H})
    data["annotations"].append(_person(np.random.default_rng(9), 8, 8, with_mask=False))
    data["annotations"][2]["keypoints"][0] = float("nan")  # image 2
    data["annotations"][3]["keypoints"][1] = "twelve"  # image 3
    data["annotations"][0]["segmentation"] = [["x", 1, 2]]  # image 1
    path.write_text(json.dumps(data))
    report = coco.import_coco(str(path), str(images), str(tmp_path / "out"), log=lambda s: None)
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in report.rows}
    assert rows["b.png"]["status"] == "rejected" and "non-finite keypoints" in rows["b.png"]["reason"]
    assert rows["c.jpg"]["status"] == "rejected" and "annotations [4]: unusable (ValueError" in rows["c.jpg"]["reason"]
    assert rows["a.jpg"]["status"] == "rejected"
    assert rows["a.jpg"]["reason"].startswith("annotation 1: segmentation is neither polygons nor RLE")
    # a.jpg's bytes, but a.jpg itself was rejected: this copy, with its own good annotation, is the sample.
    assert rows["a_again.jpg"]["status"] == "accepted"
    assert len(rows) == len(data["images"]) and report.counts()["accepted"] == 1


def test_the_same_image_twice_is_one_sample_and_a_duplicate_row(wholebody, tmp_path):
    path, images, data = wholebody
    (images / "a_again.jpg").write_bytes((images / "a.jpg").read_bytes())
    data["images"].append({"id": 8, "file_name": "a_again.jpg", "width": W, "height": H})
    data["annotations"].append(_person(np.random.default_rng(9), 8, 8, with_mask=False))
    path.write_text(json.dumps(data))
    report = coco.import_coco(str(path), str(images), str(tmp_path / "out"), log=lambda s: None)
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in report.rows}
    assert rows["a_again.jpg"]["status"] == "duplicate" and rows["a_again.jpg"]["reason"].endswith("a.jpg")
    assert len(list(iter_samples(str(tmp_path / "out" / "shards")))) == 3
