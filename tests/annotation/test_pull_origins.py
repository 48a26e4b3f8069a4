"""`pull` reads only the shards a project was pushed from, never a path a task's data names."""

from __future__ import annotations

import json

import pytest

from annotation import convert
from annotation.client import Studio
from annotation.push import PUSH_RECORD, project_folder
from data_engine.shards import iter_samples

from .conftest import make_shards
from .test_live import hv

pytestmark = pytest.mark.labelstudio


def test_pull_refuses_a_shard_the_task_was_edited_to_name(ls_env, tmp_path, capsys):
    samples = make_shards(tmp_path / "in", 3, seed=21)
    code, out = hv(
        capsys, "annotate", "push", str(tmp_path / "in"), "--project", "origins", "--task", "pose", "--quiet"
    )
    assert code == 0, out
    # A look-alike shard elsewhere: the same keys, other images. Before the fix pull opened whatever the task named.
    decoys = make_shards(tmp_path / "elsewhere", 3, seed=21, size=(40, 30))
    decoy_shard = str(sorted((tmp_path / "elsewhere").glob("*.tar"))[0])
    with Studio(ls_env.url, ls_env.token) as s:
        project = s.require_project("origins")
        tasks = {t["data"]["key"]: t for t in s.iter_tasks(project["id"])}
        for sample in samples:
            s.create_annotation(
                tasks[sample.key]["id"], convert.pose_to_results(sample.pose, sample.width, sample.height)
            )
        edits = {samples[0].key: decoy_shard, samples[1].key: "/etc/passwd"}
        for key, where in edits.items():
            task = tasks[key]
            data = {**task["data"], "shard": where}
            s.request("PATCH", f"/api/tasks/{task['id']}", "editing a task", json={"data": data})

    out_dir = tmp_path / "out"
    code, out = hv(capsys, "annotate", "pull", "--project", "origins", "--out", str(out_dir), "--quiet")
    assert code == 1, out  # done, with the refused tasks listed
    pulled = {s.key: s for s in iter_samples(str(out_dir))}
    assert sorted(pulled) == [samples[2].key]
    assert all(pulled[k].width == 48 for k in pulled) and decoys[0].width == 40
    report = json.loads((out_dir / "pull-report.json").read_text())
    refused = {b["key"]: b for b in report["bad"]}
    assert set(refused) == set(edits)
    for key, where in edits.items():
        assert refused[key]["shard"] == where and "not pushed from" in refused[key]["reason"]
    assert "not pushed from" in out

    # --shards names the originals explicitly: the user's choice, and the edited tasks come back from them.
    code, out = hv(
        capsys, "annotate", "pull", "--project", "origins", "--out", str(tmp_path / "out2"), "--quiet",
        "--shards", str(tmp_path / "in"),
    )  # fmt: skip
    assert code == 0, out
    assert sorted(s.key for s in iter_samples(str(tmp_path / "out2"))) == sorted(s.key for s in samples)


def test_pull_without_or_with_a_corrupt_push_record_fails_clearly(ls_env, tmp_path, capsys):
    make_shards(tmp_path / "in", 1, seed=22)
    code, out = hv(
        capsys, "annotate", "push", str(tmp_path / "in"), "--project", "no-record", "--task", "pose", "--quiet"
    )
    assert code == 0, out
    record = project_folder(ls_env.media_root.resolve(), "no-record") / PUSH_RECORD
    assert json.loads(record.read_text())["shards"] == [str(p) for p in sorted((tmp_path / "in").glob("*.tar"))]
    record.write_text('{"shards": [')
    code, out = hv(capsys, "annotate", "pull", "--project", "no-record", "--out", str(tmp_path / "o1"))
    assert code == 2 and f"push record {record} is unreadable" in out
    record.unlink()
    code, out = hv(capsys, "annotate", "pull", "--project", "no-record", "--out", str(tmp_path / "o2"))
    assert code == 2 and f"no push record at {record}" in out and "--shards" in out
    assert not list((tmp_path / "o2").glob("*.tar"))
