"""Pre-annotations from a fine-tuned checkpoint: `hv annotate predict --checkpoint` against a real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import humanvision_cli
from annotation import convert
from annotation.client import Studio
from annotation.model_predictor import model_predictor, person_boxes
from data_engine.shards import iter_samples

from .conftest import TEST_TOKEN, make_shards


def test_model_predictor_matches_the_model_and_the_boxes(checkpoint: Path, tmp_path: Path) -> None:
    from train.predictor import Predictor

    make_shards(tmp_path / "in", 2, seed=12, size=(48, 64))
    samples = list(iter_samples(str(tmp_path / "in")))
    sample = samples[0]
    sample.meta["persons"] = [{"bbox": [4.0, 6.0, 40.0, 60.0], "score": 0.9}, {"bbox": [0, 0, 20, 30], "score": 0.8}]
    np.testing.assert_array_equal(person_boxes(sample), [[4, 6, 40, 60], [0, 0, 20, 30]])
    pose_fn = model_predictor(str(checkpoint), "pose", keypoint_threshold=0.0)
    prediction = pose_fn(sample)
    assert prediction.pose.keypoint_set == "coco17" and len(prediction.pose.persons) == 2
    reference = Predictor(str(checkpoint)).pose([sample.image], [person_boxes(sample)])[0]
    got = prediction.pose.persons[0].keypoints
    xy = reference.keypoints[0]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= 48) & (xy[:, 1] >= 0) & (xy[:, 1] <= 64)
    np.testing.assert_array_equal(got[:, 2], np.where(inside, 2.0, 0.0))  # off-image points are left unplaced
    np.testing.assert_allclose(got[inside, :2], xy[inside], atol=1e-5)
    # A threshold above every score (untrained peaks are unbounded) leaves every keypoint for the annotator.
    nothing = model_predictor(str(checkpoint), "pose", keypoint_threshold=1e9)(sample)
    assert (nothing.pose.persons[0].keypoints[:, 2] == 0).all() and nothing.score == 0.0
    # Without detector boxes the whole image is the person.
    assert person_boxes(samples[1]).tolist() == [[0.0, 0.0, 48.0, 64.0]]
    seg = model_predictor(str(checkpoint), "seg")(sample)
    assert seg.seg.shape == (64, 48) and seg.seg.dtype == np.uint8 and seg.seg.max() < 28
    assert 0.0 < seg.score <= 1.0


@pytest.mark.labelstudio
def test_hv_annotate_predict_with_checkpoint(ls_env, checkpoint: Path, tmp_path: Path, capsys) -> None:
    def hv(*argv: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            humanvision_cli.main(list(argv))
        captured = capsys.readouterr()
        assert TEST_TOKEN not in captured.out + captured.err
        return int(exit_info.value.code or 0), captured.out + captured.err

    make_shards(tmp_path / "in", 3, seed=13, with_labels=False, size=(48, 64))
    samples = list(iter_samples(str(tmp_path / "in")))  # decoded as the command sees them (some are JPEG)
    assert hv("annotate", "push", str(tmp_path / "in"), "--project", "model-pre", "--task", "pose", "--quiet")[0] == 0
    args = ["annotate", "predict", str(tmp_path / "in"), "--project", "model-pre", "--task", "pose", "--quiet"]
    code, out = hv(*args, "--checkpoint", str(checkpoint))
    assert code == 0 and "3 predictions created" in out, out
    # Idempotent per model version (the run folder's name by default).
    code, out = hv(*args, "--checkpoint", str(checkpoint / "model.safetensors"))
    assert code == 0 and "0 predictions created, 3 already there" in out, out
    with Studio(ls_env.url, ls_env.token) as studio:
        project = studio.require_project("model-pre")
        tasks = {t["data"]["key"]: t for t in studio.iter_tasks(project["id"], with_annotations=True)}
    expected = model_predictor(str(checkpoint), "pose")
    for sample in samples:
        (prediction,) = tasks[sample.key]["predictions"]
        assert prediction["model_version"] == checkpoint.name
        pose, _ = convert.results_to_pose(prediction["result"], sample.width, sample.height, "coco17")
        want = expected(sample).pose.persons[0].keypoints
        placed = want[:, 2] > 0
        got = pose.persons[0].keypoints if pose.persons else np.zeros_like(want)
        np.testing.assert_allclose(got[placed, :2], want[placed, :2], atol=0.01)

    # A checkpoint without the head, and one that does not exist: a clear error, exit 2.
    code, out = hv(*args[:-2], "depth", "--quiet", "--checkpoint", str(checkpoint))
    assert code == 2
    code, out = hv(*args, "--checkpoint", str(tmp_path / "missing-run"))
    assert code == 2 and "missing-run" in out
