"""Label Studio stopped in the middle of a push: a clear error, and a re-push completes with no duplicates."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from annotation.client import Studio
from annotation.server import LabelStudioServer

from .conftest import TEST_PASSWORD, TEST_TOKEN, make_shards, start_from_template

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

PROJECT = "interrupted-push"


def task_keys(url: str) -> list[str]:
    with Studio(url, TEST_TOKEN) as studio:
        project = studio.require_project(PROJECT)
        return [t["data"]["key"] for t in studio.iter_tasks(project["id"])]


def test_server_stopped_mid_push_then_repush_completes_without_duplicates(tmp_path: Path) -> None:
    samples = make_shards(tmp_path / "in", 300, seed=21, with_labels=False, size=(32, 24))
    server = start_from_template(tmp_path / "ls")
    settings = server.settings
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": server.url,
        "LABEL_STUDIO_API_KEY": TEST_TOKEN,
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(settings.media_root),
    }
    # One task per request, so the push is still going when the server goes away.
    argv = [sys.executable, "-m", "humanvision_cli", "annotate", "push", str(tmp_path / "in"), "batch_size=1"]
    argv += ["--project", PROJECT, "--task", "pose", "--quiet"]
    try:
        push = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        created: list[str] = []
        while time.monotonic() < deadline and push.poll() is None:
            try:
                created = task_keys(server.url)
            except Exception:
                created = []  # the project may not exist yet
            if len(created) >= 5:
                break
            time.sleep(0.2)
        assert push.poll() is None, "the push finished before the server could be stopped: make it longer"
        server.stop(grace_s=1.0)  # a server that goes away, not one that drains its requests first
        output, _ = push.communicate(timeout=120)
        assert push.returncode == 2, output
        assert server.url in output and TEST_TOKEN not in output  # names the server, never the key

        # The same data dir again (the port may differ: the URL comes from the environment).
        server = LabelStudioServer(settings, token=TEST_TOKEN, password=TEST_PASSWORD)
        server.start()
        env["LABEL_STUDIO_URL"] = server.url
        partial = task_keys(server.url)
        assert 5 <= len(partial) < len(samples)
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        keys = task_keys(server.url)
        assert sorted(keys) == sorted(s.key for s in samples)  # every sample once: nothing lost, nothing twice
    finally:
        server.stop()
