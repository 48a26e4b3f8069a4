"""`hv annotate backend` as Label Studio's ML backend, against the real server: registered with
`hv annotate connect`, predictions requested through Label Studio's API, stored predictions = ours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from annotation import convert, labeling
from annotation.backend_model import BackendModel
from annotation.client import Studio
from annotation.server import free_port, port_is_free

from .conftest import TEST_TOKEN, make_shards
from .test_live import hv

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def _start_backend(checkpoint: Path, media_root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "humanvision_cli", "annotate", "backend", "--checkpoint", str(checkpoint)]
    command += ["--port", str(port), "--media-root", str(media_root)]
    env = {k: v for k, v in os.environ.items() if k != "LABEL_STUDIO_API_KEY"}  # the backend needs no key
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"backend did not come up: {proc.communicate(timeout=30)[0]}")


def _keypoints(result: list[dict], sample_size: tuple[int, int]) -> np.ndarray:
    pose, _ = convert.results_to_pose(result, *sample_size, "all")
    return pose.persons[0].keypoints if pose.persons else np.zeros((308, 3), np.float32)


def test_backend_predictions_through_label_studio_equal_ours(ls_env, checkpoint, tmp_path, capsys):
    proc, backend_url = _start_backend(checkpoint, ls_env.media_root)
    try:
        health = httpx.get(f"{backend_url}/health").json()
        assert health["status"] == "UP" and health["model_version"] == checkpoint.name
        make_shards(tmp_path / "in", 3, seed=51, with_labels=False, size=(48, 64))
        ours = BackendModel(str(checkpoint), ls_env.media_root)
        for kind in ("pose", "seg", "bbox"):
            title = f"backend-{kind}"
            code, out = hv(
                capsys, "annotate", "push", str(tmp_path / "in"), "--project", title, "--task", kind, "--quiet"
            )
            assert code == 0, out
            code, out = hv(capsys, "annotate", "connect", "--project", title, "--backend", backend_url)
            assert code == 0 and f"at {backend_url}" in out, out
            code, again = hv(capsys, "annotate", "connect", "--project", title, "--backend", backend_url)
            assert code == 0 and again.split(":")[1] == out.split(":")[1]  # the same backend id: not registered twice

            with Studio(ls_env.url, ls_env.token) as studio:
                project = studio.require_project(title)
                tasks = list(studio.iter_tasks(project["id"]))
                studio.request_predictions(project["id"], [t["id"] for t in tasks])
                stored = {t["id"]: t["predictions"] for t in studio.iter_tasks(project["id"], with_annotations=True)}
            expected = ours.predict(tasks, project["label_config"])
            for task, want in zip(tasks, expected, strict=True):
                (got,) = [p for p in stored[task["id"]] if p["model_version"] == checkpoint.name]
                assert 0.0 <= got["score"] <= 1.0 and got["score"] == pytest.approx(want["score"], abs=1e-4)
                size = (task["data"]["width"], task["data"]["height"])
                if kind == "pose":
                    np.testing.assert_allclose(
                        _keypoints(got["result"], size), _keypoints(want["result"], size), atol=0.05
                    )
                elif kind == "seg":
                    got_seg, _ = convert.results_to_seg(got["result"], *size, "goliath28", "last")
                    want_seg, _ = convert.results_to_seg(want["result"], *size, "goliath28", "last")
                    assert (got_seg == want_seg).mean() > 0.99
                else:
                    assert {r["from_name"] for r in got["result"]} <= {labeling.PERSON}
                    boxes = [[r["value"][k] for k in ("x", "y", "width", "height")] for r in got["result"]]
                    want_boxes = [[r["value"][k] for k in ("x", "y", "width", "height")] for r in want["result"]]
                    np.testing.assert_allclose(boxes, want_boxes, atol=0.1)

        # Bad requests: a clear 400 each, and the service goes on.
        pose_config = labeling.pose_config("all")

        def one_task(data: dict, config: str = pose_config) -> dict:
            return {"tasks": [{"id": 1, "data": data}], "label_config": config}

        bad = [
            (b"not json", "not JSON"),
            (one_task({"text": "hi"}), "no `image`"),
            (one_task({"image": "/data/local-files/?d=../../etc/passwd"}), "outside the media root"),
            (one_task({"image": "/data/local-files/?d=hv/missing.png"}), "not found"),
            (one_task({"image": "http://example.com/a.jpg"}), "not a local file"),
            (one_task({"image": "x"}, "<View><Text name='t' value='$t'/></View>"), "not served"),
            ({"tasks": [], "label_config": pose_config}, "non-empty list"),
        ]
        for body, reason in bad:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            response = httpx.post(f"{backend_url}/predict", timeout=60, **kwargs)
            assert response.status_code == 400 and reason in response.json()["error"], (reason, response.text)
        assert httpx.post(f"{backend_url}/setup", json={"project": "1.2"}).status_code == 400
        assert httpx.get(f"{backend_url}/nowhere").status_code == 404
        webhook = httpx.post(f"{backend_url}/webhook", json={"action": "ANNOTATION_CREATED"}).json()
        assert webhook["status"] == "ok" and webhook["annotation_events"] >= 1
        assert httpx.get(f"{backend_url}/health").json()["status"] == "UP"

        # A project whose labeling config the backend does not serve: Label Studio's /setup check refuses it.
        with Studio(ls_env.url, ls_env.token) as studio:
            studio.create_project("backend-text", "<View><Text name='t' value='$t'/></View>")
        code, out = hv(capsys, "annotate", "connect", "--project", "backend-text", "--backend", backend_url)
        assert code == 2 and "backend-text" not in out.split("error:")[0], out

        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert port_is_free(int(backend_url.rsplit(":", 1)[1]))
    assert TEST_TOKEN not in output  # Label Studio's /setup sends a token: it never shows
