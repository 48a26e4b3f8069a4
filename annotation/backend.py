"""`hv annotate backend`: a Label Studio ML backend on 127.0.0.1 serving a fine-tuned checkpoint.

    hv annotate backend --checkpoint runs/finetune-pose --port 9090 --media-root runs/label-studio/media
    hv annotate connect --project people-pose --backend http://127.0.0.1:9090

Label Studio calls it when an annotator opens a task or asks for predictions (the documented ML backend
protocol): `GET /health`, `POST /setup` (checks the project's labeling config is served, answers the model
version), `POST /predict` (`{"tasks": [...], "label_config": ...}` -> `{"results": [{result, score,
model_version}, ...]}`, one per task) and `POST /webhook` (Label Studio's events; annotation events are
counted). The model side is annotation/backend_model.py.

With `loop.loop_after=N` (and `--loop-project`, `--loop-out`), every N annotation events (ANNOTATION_CREATED /
UPDATED, from a Label Studio webhook pointed at `/webhook`) start one `hv annotate loop` cycle in a background
thread (`LoopTrigger`); one runs at a time, and a trigger that comes while one runs is counted in
`while_running`, not started. With `--loop-out` the backend follows that loop folder (`LoopFollower`): it
serves the newest finished cycle's model, whether the cycle ran here or as `hv annotate loop` elsewhere.

Why Werkzeug and not `label-studio-ml`: its current PyPI release (1.0.9) pins Flask 1.1 / Werkzeug 2.0 /
Jinja2 3.0 and would downgrade the project's Werkzeug and Jinja2; Werkzeug (the Pallets WSGI toolkit under
Flask) is already installed, maintained, and gives routing, request parsing and a threaded server. A bad
request (not JSON, a task without a local image, a config it does not serve) is answered 400 with a one-line
reason; any other failure 500 with its type and message; the service keeps running. Label Studio's `/setup`
carries an API token: it is never logged or answered back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from annotation.backend_model import BackendModel, BackendRequestError
from annotation.errors import AnnotationError

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 256 * 1024 * 1024  # a predict batch of 308-keypoint tasks is far below this
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


class LoopTrigger:
    """Runs `cycle` in a background thread once `every` annotation events have arrived; one cycle at a time."""

    def __init__(self, every: int, cycle: Callable[[], Any]) -> None:
        if every < 1:
            raise ValueError(f"a loop trigger needs every >= 1, got {every}")
        self.every = every
        self.cycle = cycle
        self.pending = 0  # annotation events since the last cycle started
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.while_running = 0  # triggers that came while a cycle ran: recorded, not started
        self.last: dict[str, Any] | None = None  # the last cycle's outcome
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def annotation(self) -> Literal["counted", "started", "running"]:
        """Count one annotation event; start a cycle when `every` are pending and none runs."""
        with self._lock:
            self.pending += 1
            if self.pending < self.every:
                return "counted"
            if self._thread is not None and self._thread.is_alive():
                self.while_running += 1  # the events stay pending: the next one after this cycle starts another
                return "running"
            self.pending = 0
            self.started += 1
            self._thread = threading.Thread(target=self._run, name="hv-annotate-loop", daemon=True)
            self._thread.start()
            return "started"

    def _run(self) -> None:
        try:
            result = self.cycle()
        except Exception as e:  # a failed cycle must not end the backend; it is reported in /health
            log.exception("loop cycle failed")
            with self._lock:
                self.failed += 1
                self.last = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            return
        with self._lock:
            self.finished += 1
            self.last = result if isinstance(result, dict) else {"result": str(result)}

    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        with self._lock:
            last = self.last
            summary = None
            if last is not None:
                summary = {k: last[k] for k in ("cycle", "status", "error") if k in last}
            return {
                "every": self.every,
                "pending": self.pending,
                "running": self.running(),
                "started": self.started,
                "finished": self.finished,
                "failed": self.failed,
                "while_running": self.while_running,
                "last": summary,
            }


class LoopFollower:
    """Serves the newest finished cycle's model of a loop folder; looks at most every `every_s` seconds."""

    def __init__(self, out_dir: Path, model: BackendModel, every_s: float = 5.0) -> None:
        self.out_dir = out_dir
        self.model = model
        self.every_s = every_s
        self.serving: str | None = None  # the cycle checkpoint in use (None: the backend's own --checkpoint)
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def check(self) -> None:
        from annotation.loop import done_cycles

        with self._lock:
            now = time.monotonic()
            if now - self._checked < self.every_s:
                return
            self._checked = now
            try:
                done = done_cycles(self.out_dir) if self.out_dir.is_dir() else []
            except AnnotationError as e:
                log.warning("backend: cannot read the loop folder: %s", e)
                return
            if not done or done[-1]["trained"]["checkpoint"] == self.serving:
                return
            newest = done[-1]
            try:
                self.model.reload(newest["trained"]["checkpoint"], newest["pushed"]["model_version"])
            except Exception as e:  # keep serving the model we have; say why the new one is not served
                log.warning("backend: cannot serve cycle %s's model: %s: %s", newest["cycle"], type(e).__name__, e)
                return
            self.serving = newest["trained"]["checkpoint"]
            log.info("backend: serving %s (cycle %s)", self.model.model_version, newest["cycle"])


class BackendApp:
    """The WSGI application: routes to `on_<endpoint>`, JSON in and out, errors as JSON."""

    def __init__(
        self, model: BackendModel, trigger: LoopTrigger | None = None, follower: LoopFollower | None = None
    ) -> None:
        self.model = model
        self.trigger = trigger
        self.follower = follower
        self.annotation_events = 0
        self._events_lock = threading.Lock()
        self.url_map = Map(
            [
                Rule("/", endpoint="health", methods=["GET"]),
                Rule("/health", endpoint="health", methods=["GET"]),
                Rule("/setup", endpoint="setup", methods=["POST"]),
                Rule("/predict", endpoint="predict", methods=["POST"]),
                Rule("/webhook", endpoint="webhook", methods=["POST"]),
            ]
        )

    def __call__(self, environ: dict, start_response: Any) -> Any:
        request = Request(environ)
        request.max_content_length = MAX_REQUEST_BYTES
        try:
            endpoint, _ = self.url_map.bind_to_environ(environ).match()
            if self.follower is not None and endpoint in ("health", "setup", "predict"):
                self.follower.check()
            response = getattr(self, f"on_{endpoint}")(request)
        except BackendRequestError as e:
            response = _json({"error": str(e)}, 400)
        except HTTPException as e:
            response = _json({"error": f"{e.code} {e.name}: {e.description}"}, e.code or 500)
        except Exception as e:  # one bad request must not end the service; say what failed
            log.exception("backend request %s failed", request.path)
            response = _json({"error": f"internal error: {type(e).__name__}: {str(e)[:300]}"}, 500)
        return response(environ, start_response)

    def on_health(self, request: Request) -> Response:
        return _json(
            {
                "status": "UP",
                "model_class": "humanvision",
                "model_version": self.model.model_version,
                "tasks": list(self.model.model.tasks),
                "loop": self.trigger.status() if self.trigger is not None else "off",
            }
        )

    def on_setup(self, request: Request) -> Response:
        body = _body(request)
        schema = body.get("schema")
        if not isinstance(schema, str):
            raise BackendRequestError("setup needs the project's labeling config in `schema`")
        self.model.check_served(schema)
        return _json({"model_version": self.model.model_version})

    def on_predict(self, request: Request) -> Response:
        body = _body(request)
        tasks, label_config = body.get("tasks"), body.get("label_config")
        if not isinstance(tasks, list) or not tasks:
            raise BackendRequestError("predict needs a non-empty list of `tasks`")
        if not isinstance(label_config, str):
            raise BackendRequestError("predict needs the project's `label_config`")
        results = self.model.predict(tasks, label_config)
        return _json({"results": results, "model_version": self.model.model_version})

    def on_webhook(self, request: Request) -> Response:
        body = _body(request)
        action = body.get("action")
        if not isinstance(action, str):
            raise BackendRequestError("webhook needs an `action`")
        loop = "off"
        if action in ANNOTATION_ACTIONS:
            with self._events_lock:
                self.annotation_events += 1
            if self.trigger is not None:
                loop = self.trigger.annotation()
        return _json({"status": "ok", "action": action, "annotation_events": self.annotation_events, "loop": loop})


def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.get_data(cache=False) or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BackendRequestError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise BackendRequestError("the request body must be a JSON object")
    return body


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, mimetype="application/json")


def serve(app: BackendApp, port: int, ready: threading.Event | None = None) -> None:
    """Serve on 127.0.0.1:`port` until KeyboardInterrupt (Ctrl-C, or SIGTERM / SIGHUP through the CLI)."""
    from werkzeug.serving import make_server

    from annotation.server import LOOPBACK

    server = make_server(LOOPBACK, port, app, threaded=True)
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    finally:
        server.server_close()
