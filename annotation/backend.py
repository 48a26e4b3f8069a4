"""`hv annotate backend`: a Label Studio ML backend on 127.0.0.1 serving a fine-tuned checkpoint.

    hv annotate backend --checkpoint runs/finetune-pose --port 9090 --media-root runs/label-studio/media
    hv annotate connect --project people-pose --backend http://127.0.0.1:9090

Label Studio calls it when an annotator opens a task or asks for predictions (the documented ML backend
protocol): `GET /health`, `POST /setup` (checks the project's labeling config is served, answers the model
version), `POST /predict` (`{"tasks": [...], "label_config": ...}` -> `{"results": [{result, score,
model_version}, ...]}`, one per task) and `POST /webhook` (Label Studio's events; annotation events are
counted). The model side is annotation/backend_model.py.

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
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from annotation.backend_model import BackendModel, BackendRequestError

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 256 * 1024 * 1024  # a predict batch of 308-keypoint tasks is far below this
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")


class BackendApp:
    """The WSGI application: routes to `on_<endpoint>`, JSON in and out, errors as JSON."""

    def __init__(self, model: BackendModel) -> None:
        self.model = model
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
        if action in ANNOTATION_ACTIONS:
            with self._events_lock:
                self.annotation_events += 1
        return _json({"status": "ok", "action": action, "annotation_events": self.annotation_events})


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
