"""`hv annotate loop` against the real Label Studio server: annotators finish some tasks, one cycle pulls them,
fine-tunes the tiny model through `hv train finetune`, and pre-annotates the rest, least confident first."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import numpy as np
import pytest

from annotation import convert
from annotation.client import Studio
from annotation.loop import VIEW_TITLE

from .conftest import make_shards, random_pose
from .test_live import assert_no_token_in, hv

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

TINY = "loop.finetune_overrides=['steps=2','batch_size=2','optim.warmup_steps=0','progress=false','tensorboard=false']"


def _annotate(studio: Studio, task_id: int, seed: int) -> None:
    """What an annotator's Submit sends: a coco17 pose on the 48 x 64 image."""
    pose = random_pose(np.random.default_rng(seed), 48, 64, "coco17")
    studio.create_annotation(task_id, convert.pose_to_results(pose, 48, 64))


def _versions(studio: Studio, project_id: int) -> dict[int, list[str]]:
    return {
        int(t["id"]): [p["model_version"] for p in t.get("predictions", [])]
        for t in studio.iter_tasks(project_id, with_annotations=True)
    }


def test_loop_cycle_pulls_trains_and_preannotates(ls_env, checkpoint: Path, tmp_path: Path, capsys) -> None:
    from train.models.weights import load_finetuned

    make_shards(tmp_path / "in", 5, seed=61, with_labels=False, size=(48, 64))
    title = "loop-pose"
    code, out = hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", title, "--task", "pose")
    assert code == 0, out
    out_dir = tmp_path / "loop"
    loop = ["annotate", "loop", "--project", title, "--checkpoint", str(checkpoint), "--out", str(out_dir)]
    loop += ["--quiet", TINY]

    # Nothing annotated yet: says so, trains nothing, exit 0.
    code, out = hv(capsys, *loop)
    assert code == 0 and "nothing to train" in out, out
    assert not list(out_dir.glob("cycle-*"))

    with Studio(ls_env.url, ls_env.token) as s:
        project_id = int(s.require_project(title)["id"])
        task_ids = sorted(int(t["id"]) for t in s.iter_tasks(project_id))
        for i, task_id in enumerate(task_ids[:3]):
            _annotate(s, task_id, i)

    code, out = hv(capsys, *loop)
    assert code == 0 and "cycle 1: pulled 3 labelled tasks (3 new), trained 2 steps" in out, out
    version = "loop-cycle-001"
    record = json.loads((out_dir / "cycle-001" / "cycle.json").read_text())
    assert record["status"] == "done" and record["pulled"]["new_task_ids"] == task_ids[:3]
    assert record["trained"]["init"] == str(checkpoint) and record["trained"]["steps"] == 2
    assert record["pushed"] == {**record["pushed"], "model_version": version, "created": 2, "labelled": 3}
    lines = (out_dir / "cycles.jsonl").read_text().splitlines()
    assert [json.loads(line)["cycle"] for line in lines] == [1]
    model = load_finetuned(str(out_dir / "cycle-001" / "model.safetensors"))
    assert "pose" in model.spec.tasks and model.spec.keypoint_set == "coco17"
    assert_no_token_in(out_dir)

    with Studio(ls_env.url, ls_env.token) as s:
        versions = _versions(s, project_id)
        assert all(version not in versions[t] for t in task_ids[:3])  # labelled tasks get no pre-annotation
        assert all(versions[t].count(version) == 1 for t in task_ids[3:])
        assert s.request("GET", f"/api/projects/{project_id}", "reading")["model_version"] == version
        # The tab annotators open: the unlabelled tasks, lowest score of this version first.
        view = record["pushed"]["view"]
        listed = list(s.iter_view_tasks(project_id, view))
        assert sorted(int(t["id"]) for t in listed) == task_ids[3:]
        scores = [float(t["predictions_score"]) for t in listed]
        assert scores == sorted(scores), scores
        # The score sorted by is this version's prediction score (the project's model version picks it).
        by_task = {
            int(t["id"]): [p["score"] for p in t["predictions"] if p["model_version"] == version]
            for t in s.iter_tasks(project_id, with_annotations=True)
        }
        for task, score in zip(listed, scores, strict=True):
            assert by_task[int(task["id"])] == [pytest.approx(score)]
        tab = s.request("GET", f"/api/dm/views/{view}", "reading the tab")
        assert tab["data"]["ordering"] == ["tasks:predictions_score"]
        tabs = s.request("GET", "/api/dm/views", "tabs", params={"project": project_id})
        assert [v["data"]["title"] for v in tabs].count(VIEW_TITLE) == 1

    # Nothing new since: no second cycle.
    code, out = hv(capsys, *loop)
    assert code == 0 and "nothing to train" in out and not (out_dir / "cycle-002").exists(), out

    # A cycle killed before it was marked done: the same command completes it, without duplicates.
    (out_dir / "cycle-001" / "cycle.json").unlink()
    code, out = hv(capsys, *loop)
    assert code == 0 and "cycle 1: pulled 3 labelled tasks (3 new)" in out and "0 predictions" in out, out
    assert len((out_dir / "cycles.jsonl").read_text().splitlines()) == 1
    with Studio(ls_env.url, ls_env.token) as s:
        versions = _versions(s, project_id)
        assert all(versions[t].count(version) == 1 for t in task_ids[3:])
        _annotate(s, task_ids[3], 7)

    # The next cycle starts from the previous cycle's model and pulls only the new annotation as new.
    code, out = hv(capsys, *loop)
    assert code == 0 and "cycle 2: pulled 4 labelled tasks (1 new)" in out, out
    second = json.loads((out_dir / "cycle-002" / "cycle.json").read_text())
    assert second["trained"]["init"] == str(out_dir / "cycle-001" / "model.safetensors")
    assert second["pulled"]["new_task_ids"] == [task_ids[3]] and second["pushed"]["created"] == 1
    assert [json.loads(line)["cycle"] for line in (out_dir / "cycles.jsonl").read_text().splitlines()] == [1, 2]

    # Killed after training, before the predictions were recorded: only the last step runs again.
    path = out_dir / "cycle-002" / "cycle.json"
    path.write_text(json.dumps({k: v for k, v in second.items() if k not in ("pushed", "status")}))
    code, out = hv(capsys, *loop)
    assert code == 0 and "0 predictions of loop-cycle-002 pushed (1 already there)" in out, out
    again = json.loads(path.read_text())
    assert again["trained"] == second["trained"] and again["status"] == "done"
    assert [json.loads(line)["cycle"] for line in (out_dir / "cycles.jsonl").read_text().splitlines()] == [1, 2]


def test_loop_bad_input(ls_env, checkpoint: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out_dir = tmp_path / "loop"
    base = ["--checkpoint", str(checkpoint), "--out", str(out_dir), "--quiet"]
    code, out = hv(capsys, "annotate", "loop", "--project", "no-such-project", *base)
    assert code == 2 and "no project titled 'no-such-project'" in out, out

    # A seg project over lip20: the checkpoint's seg head is goliath28; nothing is pulled or trained.
    make_shards(tmp_path / "in", 1, seed=62, with_labels=False, size=(48, 64))
    push = ["annotate", "push", str(tmp_path / "in"), "--project", "loop-lip", "--task", "seg", "--vocab", "lip20"]
    assert hv(capsys, *push)[0] == 0
    code, out = hv(capsys, "annotate", "loop", "--project", "loop-lip", *base)
    assert code == 2 and "seg head over goliath28" in out and "lip20" in out, out
    code, out = hv(capsys, "annotate", "loop", "--project", "loop-lip", *base[2:], "--checkpoint", str(tmp_path))
    assert code == 2 and "checkpoint" in out, out
    assert not list(out_dir.glob("cycle-*"))
    code, out = hv(capsys, "annotate", "loop", "--project", "loop-lip", *base, "loop.finetune_config=nope.yaml")
    assert code == 2 and "loop.finetune_config 'nope.yaml' is not a file" in out, out
    out_dir.mkdir(exist_ok=True)
    with open(out_dir / ".loop.lock", "w") as lock:  # a cycle running (a backend's trigger, another shell)
        fcntl.flock(lock, fcntl.LOCK_EX)
        code, out = hv(capsys, "annotate", "loop", "--project", "loop-lip", *base)
    assert code == 2 and "another loop cycle is running" in out, out
    (tmp_path / "a-file").write_text("")
    code, out = hv(capsys, "annotate", "loop", "--project", "loop-lip", *base[:2], "--out", str(tmp_path / "a-file"))
    assert code == 2 and "is a file" in out, out

    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    code, out = hv(capsys, "annotate", "loop", "--project", "loop-lip", *base)
    assert code == 2 and "cannot reach Label Studio" in out, out
