"""The whole trigger chain, for real: annotators submit in Label Studio, its webhook posts to `hv annotate backend`
(127.0.0.1), the backend runs one `hv annotate loop` cycle after `loop.loop_after` annotations and then serves
the cycle's model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from annotation.client import Studio
from annotation.server import free_port, port_is_free

from .conftest import make_shards
from .test_live import hv
from .test_loop import TINY, _annotate, _versions

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_label_studio_webhook_runs_a_cycle_in_the_backend(ls_env, checkpoint: Path, tmp_path: Path, capsys) -> None:
    from train.models.weights import load_finetuned

    title = "loop-webhook"
    make_shards(tmp_path / "in", 4, seed=71, with_labels=False, size=(48, 64))
    assert hv(capsys, "annotate", "push", str(tmp_path / "in"), "--project", title, "--task", "pose")[0] == 0
    out_dir = tmp_path / "loop"
    port = free_port()
    command = [sys.executable, "-m", "humanvision_cli", "annotate", "backend", "--checkpoint", str(checkpoint)]
    command += ["--port", str(port), "--media-root", str(ls_env.media_root), "--loop-project", title]
    command += ["--loop-out", str(out_dir), "loop.loop_after=2", TINY]
    log_path = tmp_path / "backend.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        with Studio(ls_env.url, ls_env.token) as s:
            project_id = int(s.require_project(title)["id"])
            hook = {
                "project": project_id,
                "url": f"{url}/webhook",
                "send_payload": True,
                "send_for_all_actions": False,
                "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
                "is_active": True,
            }
            s.request("POST", "/api/webhooks/", "adding a webhook", json=hook)
            task_ids = sorted(int(t["id"]) for t in s.iter_tasks(project_id))
            _annotate(s, task_ids[0], 1)
            deadline = time.monotonic() + 20
            while httpx.get(f"{url}/health").json()["loop"]["pending"] != 1:  # Label Studio posted the event
                assert time.monotonic() < deadline, "no webhook event reached the backend"
                time.sleep(0.2)
            _annotate(s, task_ids[1], 2)

        deadline = time.monotonic() + 300
        while True:
            health = httpx.get(f"{url}/health", timeout=30).json()
            done = health["loop"]["finished"] and health["model_version"] == "loop-cycle-001"
            if done or health["loop"]["failed"]:
                break
            assert proc.poll() is None and time.monotonic() < deadline, (health, log_path.read_text()[-3000:])
            time.sleep(1)
        assert health["loop"]["started"] == 1 and health["loop"]["failed"] == 0, health
        record = json.loads((out_dir / "cycle-001" / "cycle.json").read_text())
        assert record["status"] == "done" and record["pulled"]["new_task_ids"] == task_ids[:2]
        load_finetuned(record["trained"]["checkpoint"])
        with Studio(ls_env.url, ls_env.token) as s:
            versions = _versions(s, project_id)
        assert [versions[t].count("loop-cycle-001") for t in task_ids] == [0, 0, 1, 1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert port_is_free(port)
