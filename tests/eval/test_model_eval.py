"""`hv eval TASK --checkpoint --shards`: the inference geometry (pure functions) and the whole run on real shards."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from eval_testdata import labelled_sample, write_finetuned_checkpoint

from data_engine import schema
from data_engine.sample import PersonPose
from data_engine.shards import ShardWriter
from eval.inference import map_keypoints
from humanvision_cli import main


def test_map_keypoints_by_name() -> None:
    full = np.zeros((308, 3))
    idx = schema.keypoint_index()
    full[idx["left_wrist"]] = (5, 6, 2)
    coco = map_keypoints(full, "all", "coco17")
    assert coco[schema.subset_names("coco17").index("left_wrist")].tolist() == [5, 6, 2]
    back = map_keypoints(coco, "coco17", "all")
    assert back[idx["left_wrist"]].tolist() == [5, 6, 2]
    assert np.count_nonzero(back[:, 2]) == 1  # the 291 points coco17 lacks come back unlabelled


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("modeleval")
    ckpt = write_finetuned_checkpoint(str(root / "run" / "model.safetensors"), "multi", (32, 32), "coco17")
    rng = np.random.default_rng(3)
    with ShardWriter(str(root / "val" / "val"), max_count=3) as writer:
        for i in range(5):
            sample = labelled_sample(rng, f"{i:04x}", keypoint_set="all")
            if i == 0:  # a second person with a zero-width box: cannot be cropped, counted under skipped
                first = sample.pose.persons[0]
                sample.pose.persons.append(PersonPose(bbox=(5.0, 5.0, 5.0, 9.0), keypoints=first.keypoints.copy()))
            writer.write(sample)
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
    assert result["samples_scored"] == 5
    assert result["skipped"] == {"no pose.json or no person": 1, "person with an empty box": 1}
    assert result["persons"] == 5
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
    # flip_test=true really runs the mirrored crops: the keypoints differ from a run without it.
    plain = root / "eval-pose-noflip"
    code, _, _ = _hv([*argv[:-1], str(plain), "flip_test=false"], capsys)
    flipped_kps = json.loads((out / "pred_coco.json").read_text())[0]["keypoints"]
    plain_kps = json.loads((plain / "pred_coco.json").read_text())[0]["keypoints"]
    assert code == 0 and flipped_kps != plain_kps


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
