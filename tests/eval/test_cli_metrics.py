"""`hv eval pose|seg|depth|normal` end to end through the real `hv` entry point (in process)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_testdata import coco_pose_set, write_dense_set

from humanvision_cli import main


def _hv(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_eval_pose_prints_one_json_object_and_writes_it(tmp_path, capsys) -> None:
    gt, preds = coco_pose_set(np.random.default_rng(0), "body+feet+hands", images=2, persons=2)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    out = tmp_path / "metrics" / "pose.json"
    code, stdout, _ = _hv(
        ["eval", "pose", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json"), "--out", str(out)],
        capsys,
    )
    assert code == 0
    printed = json.loads(stdout)  # stdout is exactly one JSON object: pycocotools' chatter is kept off it
    assert printed == json.loads(out.read_text())
    assert printed["keypoints"] == "body+feet+hands"
    assert set(printed["groups"]) == {"body", "feet", "left_hand", "right_hand", "face", "all"}


@pytest.mark.parametrize(("task", "key"), [("seg", "mIoU"), ("depth", "rmse"), ("normal", "median")])
def test_eval_dense_commands(tmp_path, capsys, task: str, key: str) -> None:
    dirs = write_dense_set(str(tmp_path), np.random.default_rng(1), count=2)
    gt_dir, pred_dir = dirs[task]
    code, stdout, _ = _hv(["eval", task, "--gt", gt_dir, "--pred", pred_dir], capsys)
    assert code == 0
    value = json.loads(stdout)[key]
    assert isinstance(value, float) and np.isfinite(value)


def test_eval_bad_input_exits_2_naming_the_file(tmp_path, capsys) -> None:
    dirs = write_dense_set(str(tmp_path), np.random.default_rng(2), count=2)
    gt_dir, _ = dirs["seg"]
    code, stdout, stderr = _hv(["eval", "seg", "--gt", gt_dir, "--pred", str(tmp_path / "missing")], capsys)
    assert code == 2 and stdout == ""
    assert "missing" in stderr and "does not exist" in stderr
    (tmp_path / "gt.json").write_text("{")
    code, _, stderr = _hv(
        ["eval", "pose", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "gt.json")], capsys
    )
    assert code == 2 and "gt.json" in stderr and "not valid JSON" in stderr
