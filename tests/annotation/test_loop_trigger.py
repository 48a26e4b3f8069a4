"""The backend's webhook trigger: Label Studio's annotation events, posted over HTTP to 127.0.0.1, start one loop
cycle every `loop_after` annotations, one at a time. The cycle is stubbed here only (tests/annotation/test_loop.py
runs the real one)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from werkzeug.serving import make_server

from annotation.backend import BackendApp, LoopFollower, LoopTrigger
from annotation.backend_model import BackendModel
from annotation.server import LOOPBACK, free_port


@pytest.fixture
def backend(checkpoint: Path, tmp_path: Path):
    started, release, calls = threading.Event(), threading.Event(), []

    def cycle() -> dict:
        calls.append(1)
        started.set()
        assert release.wait(60)
        return {"cycle": len(calls), "status": "done"}

    trigger = LoopTrigger(2, cycle)
    app = BackendApp(BackendModel(str(checkpoint), tmp_path), trigger)
    port = free_port()
    server = make_server(LOOPBACK, port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{port}", trigger, started, release, calls
    finally:
        release.set()
        trigger.join(30)
        server.shutdown()
        thread.join(10)


def _event(url: str, action: str) -> dict:
    response = httpx.post(f"{url}/webhook", json={"action": action, "annotation": {"id": 1}, "task": {"id": 1}})
    assert response.status_code == 200, response.text
    return response.json()


def test_webhook_starts_one_cycle_every_n_annotations(backend) -> None:
    url, trigger, started, release, calls = backend
    assert _event(url, "ANNOTATION_CREATED")["loop"] == "counted"
    assert _event(url, "PROJECT_UPDATED")["loop"] == "off"  # not an annotation: not counted
    assert _event(url, "ANNOTATION_UPDATED")["loop"] == "started"
    assert started.wait(30)
    # While the cycle runs, more annotations are counted and a due trigger is recorded, not started twice.
    assert _event(url, "ANNOTATION_CREATED")["loop"] == "counted"
    assert _event(url, "ANNOTATION_CREATED")["loop"] == "running"
    assert _event(url, "ANNOTATION_UPDATED")["loop"] == "running"
    health = httpx.get(f"{url}/health").json()["loop"]
    assert health["running"] and health["started"] == 1 and health["while_running"] == 2 and health["pending"] == 3
    assert len(calls) == 1
    release.set()
    trigger.join(30)
    health = httpx.get(f"{url}/health").json()["loop"]
    assert health["finished"] == 1 and not health["running"] and health["last"] == {"cycle": 1, "status": "done"}
    # The pending events start the next cycle at the next annotation.
    started.clear()
    assert _event(url, "ANNOTATION_CREATED")["loop"] == "started"
    assert started.wait(30)
    trigger.join(30)
    assert len(calls) == 2 and httpx.get(f"{url}/health").json()["loop"]["pending"] == 0


def test_a_failed_cycle_is_reported_and_the_backend_goes_on() -> None:
    def cycle() -> dict:
        raise RuntimeError("server gone")

    trigger = LoopTrigger(1, cycle)
    assert trigger.annotation() == "started"
    trigger.join(30)
    status = trigger.status()
    assert status["failed"] == 1 and status["last"] == {"error": "RuntimeError: server gone"}
    with pytest.raises(ValueError):
        LoopTrigger(0, cycle)


def test_backend_follows_the_loop_folder(checkpoint: Path, tmp_path: Path) -> None:
    """A cycle finished by `hv annotate loop` elsewhere: the backend serves its model at the next request."""
    model = BackendModel(str(checkpoint), tmp_path)
    follower = LoopFollower(tmp_path / "loop", model, every_s=0)
    app = BackendApp(model, follower=follower)
    port = free_port()
    server = make_server(LOOPBACK, port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://{LOOPBACK}:{port}"
    try:
        assert httpx.get(f"{url}/health").json()["model_version"] == checkpoint.name  # no loop folder yet
        cycle = tmp_path / "loop" / "cycle-001"
        cycle.mkdir(parents=True)
        record = {"cycle": 1, "trained": {"checkpoint": str(checkpoint / "model.safetensors")}}
        record["pushed"] = {"model_version": "loop-cycle-001"}
        (cycle / "cycle.json").write_text(json.dumps(record))  # not done yet: not served
        assert httpx.get(f"{url}/health").json()["model_version"] == checkpoint.name
        (cycle / "cycle.json").write_text(json.dumps({**record, "status": "done"}))
        assert httpx.get(f"{url}/health").json()["model_version"] == "loop-cycle-001"
        assert follower.serving == str(checkpoint / "model.safetensors")
        # A broken newer cycle is reported in the log; the backend keeps serving what it has.
        (tmp_path / "loop" / "cycle-002").mkdir()
        broken = {"cycle": 2, "status": "done", "trained": {"checkpoint": str(tmp_path / "gone.safetensors")}}
        (tmp_path / "loop" / "cycle-002" / "cycle.json").write_text(json.dumps({**broken, "pushed": record["pushed"]}))
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200 and health.json()["model_version"] == "loop-cycle-001"
    finally:
        server.shutdown()
        thread.join(10)
