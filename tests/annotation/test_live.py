"""Against a real Label Studio on 127.0.0.1: push, annotate as a client would, predict, pull, qa, errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

import humanvision_cli
from annotation import convert, labeling
from annotation.client import Studio
from annotation.push import member_text
from data_engine import schema
from data_engine.sample import decode, encode
from data_engine.shards import iter_members, iter_samples

from .conftest import TEST_TOKEN, make_shards

pytestmark = pytest.mark.labelstudio


def hv(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        humanvision_cli.main(list(argv))
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert TEST_TOKEN not in output
    return int(exit_info.value.code or 0), output


def assert_no_token_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert TEST_TOKEN.encode() not in path.read_bytes(), path


def studio(ls_env) -> Studio:
    return Studio(ls_env.url, ls_env.token)


def tasks_by_key(ls_env, title: str) -> dict[str, dict]:
    with studio(ls_env) as s:
        project = s.require_project(title)
        return {t["data"]["key"]: t for t in s.iter_tasks(project["id"], with_annotations=True)}


def test_pose_round_trip_push_annotate_pull(ls_env, tmp_path, capsys):
    samples = make_shards(tmp_path / "in", 5, seed=1)
    code, out = hv(
        capsys,
        "annotate",
        "push",
        str(tmp_path / "in"),
        "batch_size=2",
        "--project",
        "pose-rt",
        "--task",
        "pose",
        "--quiet",
    )
    assert code == 0, out
    assert "5 tasks created" in out
    # Re-push: nothing new, nothing duplicated.
    code, out = hv(
        capsys, "annotate", "push", str(tmp_path / "in"), "--project", "pose-rt", "--task", "pose", "--quiet"
    )
    assert code == 0 and "0 tasks created, 5 already there" in out
    tasks = tasks_by_key(ls_env, "pose-rt")
    assert sorted(tasks) == sorted(s.key for s in samples)

    # The image the annotator's browser loads is the shard's image, byte for byte.
    first = tasks[samples[0].key]
    image = httpx.get(ls_env.url + first["data"]["image"], headers={"Authorization": f"Token {ls_env.token}"})
    assert image.status_code == 200 and image.content == encode(samples[0])[samples[0].image_format]

    with studio(ls_env) as s:
        for sample in samples[:4]:  # the fifth stays unannotated
            results = convert.pose_to_results(sample.pose, sample.width, sample.height)
            s.create_annotation(tasks[sample.key]["id"], results)

    out_dir = tmp_path / "out"
    code, out = hv(capsys, "annotate", "pull", "--project", "pose-rt", "--out", str(out_dir), "--quiet")
    assert code == 0, out
    pulled = {s.key: s for s in iter_samples(str(out_dir))}
    assert sorted(pulled) == sorted(s.key for s in samples[:4])
    originals = {
        member_text(m["__key__"]): m
        for path in sorted((tmp_path / "in").glob("*.tar"))
        for m in iter_members(str(path))
    }
    for sample in samples[:4]:
        got = pulled[sample.key]
        want = decode(originals[sample.key])
        assert got.image_bytes == want.image_bytes and got.meta["source"] == want.meta["source"]
        assert got.meta["annotation"]["task_id"] == tasks[sample.key]["id"]
        kp_got, kp_want = got.pose.persons[0].keypoints, sample.pose.persons[0].keypoints
        assert got.pose.keypoint_set == "all" and kp_got.shape == (308, 3)
        np.testing.assert_array_equal(kp_got[:, 2], kp_want[:, 2])  # visibility 0 / 1 / 2 preserved
        assert np.abs(kp_got[:, :2] - kp_want[:, :2]).max() < 0.01
    report = json.loads((out_dir / "pull-report.json").read_text())
    assert report["unfinished"] == 1 and report["written"] == 4
    assert (out_dir / "annotate-config.yaml").exists() and not list(out_dir.glob(".pull-*"))
    assert_no_token_in(tmp_path)
    assert_no_token_in(ls_env.media_root)


def _stroke_results(masks: list[tuple[str, np.ndarray]], width: int, height: int) -> list[dict]:
    """Brush regions as the editor sends them: the SDK's RLE of each stroke's RGBA layer."""
    return [
        {
            "id": f"s{i}",
            "from_name": labeling.SEG,
            "to_name": labeling.IMAGE,
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [name]},
        }
        for i, (name, mask) in enumerate(masks)
    ]


def test_seg_round_trip_all_classes_with_overlapping_strokes(ls_env, tmp_path, capsys):
    samples = make_shards(tmp_path / "in", 2, seed=2, size=(40, 30))
    code, out = hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", "seg-rt", "--task", "seg", "--quiet")
    assert code == 0, out
    tasks = tasks_by_key(ls_env, "seg-rt")
    names = schema.vocabulary("goliath28").names
    rng = np.random.default_rng(5)
    expected = {}
    with studio(ls_env) as s:
        for sample in samples:
            strokes = []
            want = np.full((30, 40), 255, np.uint8)
            for class_id in rng.permutation(28):
                mask = np.zeros((30, 40), bool)
                y, x = rng.integers(0, 25), rng.integers(0, 34)
                mask[y : y + rng.integers(3, 9), x : x + rng.integers(3, 12)] = True  # strokes overlap
                strokes.append((names[class_id], mask))
                want[mask] = class_id  # the later stroke covers the earlier one
            expected[sample.key] = want
            s.create_annotation(tasks[sample.key]["id"], _stroke_results(strokes, 40, 30))
    out_dir = tmp_path / "out"
    code, out = hv(capsys, "annotate", "pull", "--project", "seg-rt", "--out", str(out_dir), "--quiet")
    assert code == 0, out
    pulled = {s.key: s for s in iter_samples(str(out_dir))}
    for key, want in expected.items():
        assert np.array_equal(pulled[key].seg, want)
        assert len(set(np.unique(want)) - {255}) == 28 or (pulled[key].seg != 255).any()
        assert pulled[key].meta["seg_vocabulary"] == "goliath28"


def test_predictions_are_imported_once_per_model_version(ls_env, tmp_path, capsys):
    samples = make_shards(tmp_path / "in", 3, seed=3)
    base = ["--quiet"]
    assert hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", "pred", "--task", "pose", *base)[0] == 0
    code, out = hv(
        capsys,
        "annotate",
        "predict",
        str(tmp_path / "in"),
        "--project",
        "pred",
        "--task",
        "pose",
        "--model-version",
        "synth-v1",
        *base,
    )
    assert code == 0 and "3 predictions created" in out, out
    code, out = hv(
        capsys,
        "annotate",
        "predict",
        str(tmp_path / "in"),
        "--project",
        "pred",
        "--task",
        "pose",
        "--model-version",
        "synth-v1",
        *base,
    )
    assert code == 0 and "0 predictions created, 3 already there" in out, out
    tasks = tasks_by_key(ls_env, "pred")
    for sample in samples:
        (prediction,) = tasks[sample.key]["predictions"]
        assert prediction["model_version"] == "synth-v1" and prediction["score"] == 1.0
        pose, problems = convert.results_to_pose(prediction["result"], sample.width, sample.height, "all")
        assert problems == [] and np.abs(pose.persons[0].keypoints - sample.pose.persons[0].keypoints).max() < 0.01
    # Samples never pushed are listed with their reason, and the exit code says so.
    make_shards(tmp_path / "other", 1, seed=9)
    code, out = hv(capsys, "annotate", "predict", str(tmp_path / "other"), "--project", "pred", "--task", "pose", *base)
    assert code == 1 and "push it first" in out


def _shifted(sample, dx: float) -> list[dict]:
    pose = sample.pose
    moved = pose.persons[0].keypoints.copy()
    moved[moved[:, 2] > 0, 0] += dx
    from data_engine.sample import PersonPose, Pose

    return convert.pose_to_results(
        Pose(pose.keypoint_set, [PersonPose(pose.persons[0].bbox, moved)]), sample.width, sample.height
    )


def test_qa_agreement_on_constructed_cases_and_pull_all(ls_env, tmp_path, capsys):
    samples = make_shards(tmp_path / "in", 2, seed=4, size=(64, 48))
    assert (
        hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", "qa-pose", "--task", "pose", "--quiet")[0]
        == 0
    )
    tasks = tasks_by_key(ls_env, "qa-pose")
    same, shifted = samples
    with studio(ls_env) as s:
        for _ in range(2):
            s.create_annotation(tasks[same.key]["id"], convert.pose_to_results(same.pose, 64, 48))
        s.create_annotation(tasks[shifted.key]["id"], convert.pose_to_results(shifted.pose, 64, 48))
        s.create_annotation(tasks[shifted.key]["id"], _shifted(shifted, 1.5))
    report_path = tmp_path / "qa" / "report.json"
    code, out = hv(capsys, "annotate", "qa", "--project", "qa-pose", "--out", str(report_path))
    assert code == 0, out
    report = json.loads(report_path.read_text())
    by_key = {t["key"]: t for t in report["tasks"]}
    oks_same = by_key[same.key]["pairs"][0]["oks"]
    assert all(v == pytest.approx(1.0) for v in oks_same.values())
    placed = shifted.pose.persons[0].keypoints[:, 2] > 0
    sig = schema.sigmas()
    body = np.array([k.group == "body" for k in schema.keypoints()])
    area = 64.0 * 48.0
    want_body = np.exp(-(1.5**2) / (2 * area * (2 * sig[body & placed]) ** 2)).mean()
    assert by_key[shifted.key]["pairs"][0]["oks"]["body"] == pytest.approx(want_body, rel=1e-6)
    assert report["summary"]["tasks_with_several_annotations"] == 2

    out_dir = tmp_path / "all"
    code, out = hv(capsys, "annotate", "pull", "--project", "qa-pose", "--out", str(out_dir), "--all", "--quiet")
    assert code == 0, out
    members = {member_text(m["__key__"]): m for m in iter_members(str(next(out_dir.glob("*.tar"))))}
    kept = [name for name in members[shifted.key] if name.startswith("ann")]
    assert len(kept) == 2 and all(name.endswith(".pose.json") for name in kept)
    assert len(decode(members[shifted.key]).meta["annotations"]) == 2


def test_seg_qa_iou_identical_is_one(ls_env, tmp_path, capsys):
    samples = make_shards(tmp_path / "in", 1, seed=6, size=(20, 16))
    assert (
        hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", "qa-seg", "--task", "seg", "--quiet")[0] == 0
    )
    task = tasks_by_key(ls_env, "qa-seg")[samples[0].key]
    with studio(ls_env) as s:
        for _ in range(2):
            s.create_annotation(task["id"], convert.seg_to_results(samples[0].seg, "goliath28"))
    code, out = hv(capsys, "annotate", "qa", "--project", "qa-seg")
    assert code == 0
    summary = json.loads(out)
    ious = {k: v["mean"] for k, v in summary["agreement"].items()}
    assert len(ious) == 28 and all(v == pytest.approx(1.0) for v in ious.values())


def test_bad_inputs_and_unreachable_servers_fail_clearly(ls_env, tmp_path, capsys, monkeypatch):
    make_shards(tmp_path / "in", 2, seed=7)
    good = sorted((tmp_path / "in").glob("*.tar"))
    corrupt = tmp_path / "in" / "broken-000000.tar"
    corrupt.write_bytes(good[0].read_bytes()[:700])  # truncated mid-member
    code, out = hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", "bad-in", "--task", "pose", "--quiet")
    assert code == 1 and "broken-000000.tar" in out and "2 tasks created" in out

    code, out = hv(capsys, "annotate", "push", str(tmp_path / "nothing*.tar"), "--project", "x", "--task", "pose")
    assert code == 2 and "no shards match" in out

    out_dir = tmp_path / "out"
    code, out = hv(capsys, "annotate", "pull", "--project", "does-not-exist", "--out", str(out_dir))
    assert code == 2 and "no project titled 'does-not-exist'" in out
    code, out = hv(
        capsys, "annotate", "pull", "--project", "bad-in", "--out", str(out_dir), "--url", "http://127.0.0.1:9"
    )
    assert code == 2 and "cannot reach Label Studio at http://127.0.0.1:9" in out
    code, out = hv(capsys, "annotate", "qa", "--project", "bad-in", "--url", ls_env.url + "/nowhere")
    assert code == 2 and "HTTP 404" in out
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "f" * 40)
    code, out = hv(capsys, "annotate", "pull", "--project", "bad-in", "--out", str(out_dir))
    assert code == 2 and "refused the API key" in out
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    code, out = hv(capsys, "annotate", "push", str(good[0]), "--project", "bad-in", "--task", "pose")
    assert code == 2 and "LABEL_STUDIO_API_KEY is not set" in out
    assert not out_dir.exists() or not any(out_dir.iterdir())
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TEST_TOKEN)
    code, out = hv(capsys, "annotate", "push", str(good[0]), "--project", "bad-in", "--task", "seg")
    assert code == 2 and "is a pose project" in out
