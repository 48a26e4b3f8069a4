"""Label Studio's own exports of our projects: its COCO converter on a real export of a pushed, annotated
pose project gives the keypoints in the schema's order (it orders them by each label's `model_index`)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from label_studio_sdk.converter import Converter

from annotation import convert, labeling
from annotation.client import Studio
from data_engine import schema

from .conftest import make_shards
from .test_live import hv

pytestmark = pytest.mark.labelstudio


@pytest.mark.parametrize("keypoint_set", ["all", "coco17"])
def test_keypoint_labels_carry_model_index_in_subset_order(keypoint_set):
    root = ET.fromstring(labeling.pose_config(keypoint_set))
    labels = [
        (lab.get("value"), lab.get("model_index")) for c in root.iter("KeyPointLabels") for lab in c.iter("Label")
    ]
    by_index = sorted(labels, key=lambda nl: int(nl[1]))
    assert [name for name, _ in by_index] == schema.subset_names(keypoint_set)
    assert sorted(int(i) for _, i in labels) == list(range(len(schema.subset(keypoint_set))))


def test_label_studio_coco_export_has_goliath_keypoint_order(ls_env, tmp_path, capsys):
    # Before: no model_index, and the SDK's COCO converter raised "No keypoint order found".
    samples = make_shards(tmp_path / "in", 2, seed=31)
    code, out = hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", "coco-export", "--task", "pose")
    assert code == 0, out
    with Studio(ls_env.url, ls_env.token) as s:
        project = s.require_project("coco-export")
        tasks = {t["data"]["key"]: t for t in s.iter_tasks(project["id"])}
        for sample in samples:
            s.create_annotation(
                tasks[sample.key]["id"], convert.pose_to_results(sample.pose, sample.width, sample.height)
            )
        export = s.request("GET", f"/api/projects/{project['id']}/export", "exporting", params={"exportType": "JSON"})
    export_path = tmp_path / "export.json"
    export_path.write_text(json.dumps(export))

    converter = Converter(config=project["label_config"], project_dir=str(tmp_path), download_resources=False)
    converter.convert_to_coco(str(export_path), str(tmp_path / "coco"), is_dir=False)
    coco = json.loads((tmp_path / "coco" / "result.json").read_text())

    names = [k.name for k in schema.keypoints()]
    keypoint_category = next(c for c in coco["categories"] if "keypoints" in c)
    assert keypoint_category["keypoints"] == names
    by_task = {item["id"]: i for i, item in enumerate(export)}
    keypoint_annotations = {a["image_id"]: a for a in coco["annotations"] if "keypoints" in a}
    assert len(keypoint_annotations) == len(samples)
    for sample in samples:
        got = np.asarray(keypoint_annotations[by_task[tasks[sample.key]["id"]]]["keypoints"], dtype=float).reshape(
            -1, 3
        )
        want = sample.pose.persons[0].keypoints
        assert got.shape == (308, 3)
        labelled = want[:, 2] > 0
        # The converter knows no occlusion: every placed keypoint is v = 2, pixel coordinates rounded.
        np.testing.assert_array_equal(got[:, 2], np.where(labelled, 2, 0))
        assert np.abs(got[labelled, :2] - want[labelled, :2]).max() <= 0.5 + 1e-6
