"""A small Label Studio REST client: the calls push / predict / pull / qa make, with clear errors.

    studio = Studio.from_env(url=None)        # URL from --url or LABEL_STUDIO_URL, key from LABEL_STUDIO_API_KEY
    project = studio.require_project("people-pose")

It speaks the documented REST API (the one the SDK wraps) through httpx, which the SDK brings, because
these commands need plain dicts in and out, page-by-page streaming of tasks with their annotations (an
export of tens of thousands of 308-keypoint tasks does not fit in memory comfortably), and one place that
turns every transport and HTTP failure into an `AnnotationError` naming the URL and what was being done.
Authentication (annotation/auth.py): a legacy token (`hv annotate serve` creates one) or a personal access
token (a JWT, exchanged for short-lived access tokens and refreshed as they expire), whichever
LABEL_STUDIO_API_KEY holds. The key lives only in the auth flow and is never formatted into a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from annotation.errors import AnnotationError

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"


def api_key_from_env() -> str:
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise AnnotationError(
            f"{API_KEY_ENV} is not set: export the Label Studio API key (Account & Settings > Access token; "
            f"for `hv annotate serve`, the key you started it with)"
        )
    return key


def resolve_url(url: str | None) -> str:
    url = (url or os.environ.get(URL_ENV, "")).strip().rstrip("/")
    if not url:
        raise AnnotationError(f"no Label Studio URL: pass --url or set {URL_ENV} (e.g. http://127.0.0.1:8080)")
    if not url.startswith(("http://", "https://")):
        raise AnnotationError(f"Label Studio URL {url!r} must start with http:// or https://")
    return url


class Studio:
    """One server, one key. Every method raises AnnotationError on failure."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 60.0) -> None:
        import httpx

        from annotation.auth import LabelStudioAuth

        self.url = resolve_url(url)
        self.auth = LabelStudioAuth(self.url, api_key)
        self._http = httpx.Client(
            base_url=self.url,
            auth=self.auth,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            follow_redirects=False,
        )

    @classmethod
    def from_env(cls, url: str | None, timeout_s: float = 60.0) -> Studio:
        resolved = resolve_url(url)  # check the URL before the key: the cheaper mistake to report first
        return cls(resolved, api_key_from_env(), timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Studio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- transport

    def request(self, method: str, path: str, doing: str, ok: tuple[int, ...] = (200, 201), **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise AnnotationError(f"Label Studio at {self.url} did not answer in time while {doing}") from None
        except httpx.HTTPError as e:
            raise AnnotationError(
                f"cannot reach Label Studio at {self.url} while {doing} ({type(e).__name__}); is the server "
                f"running (`hv annotate serve`) and the URL right?"
            ) from None
        if response.status_code in (401, 403):
            raise AnnotationError(
                f"Label Studio at {self.url} refused the API key from {API_KEY_ENV} while {doing} "
                f"(HTTP {response.status_code}: {_detail(response)[:200]}); check the key"
                + (", and that legacy API tokens are enabled" if self.auth.kind == "legacy" else "")
            )
        if response.status_code not in ok:
            detail = _detail(response)
            raise AnnotationError(
                f"Label Studio at {self.url} answered HTTP {response.status_code} while {doing}: {detail}"
            )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise AnnotationError(
                f"{self.url} is not a Label Studio API (non-JSON answer while {doing}); check the URL"
            ) from None

    def check(self) -> dict[str, Any]:
        """Who we are on this server: fails early and clearly on a wrong URL or key."""
        user = self.request("GET", "/api/current-user/whoami", "checking the API key")
        if not isinstance(user, dict) or "id" not in user:
            raise AnnotationError(f"{self.url} does not look like Label Studio (no user behind the key)")
        return user

    # -------------------------------------------------------------------------------------- projects

    def find_project(self, title: str) -> dict[str, Any] | None:
        page = self.request("GET", "/api/projects", f"looking up project {title!r}", params={"title": title})
        # The title filter matches substrings on some versions: keep the exact title only.
        matches = [p for p in page.get("results", []) if p.get("title") == title]
        if len(matches) > 1:
            ids = ", ".join(str(p["id"]) for p in matches)
            raise AnnotationError(f"{len(matches)} projects are titled {title!r} (ids {ids}); rename all but one")
        return matches[0] if matches else None

    def require_project(self, title: str) -> dict[str, Any]:
        project = self.find_project(title)
        if project is None:
            raise AnnotationError(f"no project titled {title!r} on {self.url}; create it with `hv annotate push`")
        return project

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        body = {"title": title, "label_config": label_config, "description": description}
        return self.request("POST", "/api/projects", f"creating project {title!r}", json=body)

    def ensure_local_storage(self, project_id: int, folder: str) -> None:
        """A Local Files import storage covering `folder`: without one the server answers 404 for the
        images. Its regex matches nothing, so a `Sync` clicked in the UI cannot create duplicate tasks."""
        doing = f"listing storages of project {project_id}"
        existing = self.request("GET", "/api/storages/localfiles", doing, params={"project": project_id})
        if any(os.path.abspath(s.get("path", "")) == os.path.abspath(folder) for s in existing or []):
            return
        body = {
            "project": project_id,
            "path": folder,
            "use_blob_urls": True,
            "regex_filter": "^$",
            "title": "humanvision images",
        }
        self.request("POST", "/api/storages/localfiles", f"adding local-files storage {folder}", json=body)

    # ----------------------------------------------------------------------------------------- tasks

    def iter_tasks(self, project_id: int, with_annotations: bool = False, page_size: int = 200) -> Iterator[dict]:
        """Every task of a project, page by page (with annotations and predictions when asked)."""
        page = 1
        seen = 0
        while True:
            params: dict[str, Any] = {"project": project_id, "page": page, "page_size": page_size}
            if with_annotations:
                params["fields"] = "all"
            body = self.request(
                "GET", "/api/tasks", f"listing tasks of project {project_id}", ok=(200, 404), params=params
            )
            tasks = body.get("tasks", []) if isinstance(body, dict) else []
            yield from tasks
            seen += len(tasks)
            total = int(body.get("total", 0)) if isinstance(body, dict) else 0
            if not tasks or seen >= total:
                return
            page += 1

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        body = self.request(
            "POST",
            f"/api/projects/{project_id}/import",
            f"importing {len(tasks)} tasks into project {project_id}",
            params={"return_task_ids": "true", "commit_to_project": "true"},
            json=tasks,
        )
        return [int(i) for i in body.get("task_ids", [])]

    def import_predictions(self, project_id: int, predictions: list[dict[str, Any]]) -> int:
        body = self.request(
            "POST",
            f"/api/projects/{project_id}/import/predictions",
            f"importing {len(predictions)} predictions into project {project_id}",
            json=predictions,
        )
        return int(body.get("created", 0)) if isinstance(body, dict) else 0

    def create_annotation(self, task_id: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        """What an annotator's client sends on Submit (used by tests and scripted imports)."""
        return self.request(
            "POST", f"/api/tasks/{task_id}/annotations", f"annotating task {task_id}", json={"result": result}
        )

    def set_model_version(self, project_id: int, model_version: str) -> None:
        """The version whose predictions annotators see, and whose scores the data manager sorts by."""
        self.request(
            "PATCH",
            f"/api/projects/{project_id}",
            f"setting the model version of project {project_id}",
            json={"model_version": model_version},
        )

    def ensure_view(self, project_id: int, title: str, data: dict[str, Any]) -> int:
        """A data manager tab titled `title` holding `data` (filters, ordering): created, or updated in place."""
        doing = f"listing the data manager tabs of project {project_id}"
        views = self.request("GET", "/api/dm/views", doing, params={"project": project_id}) or []
        body = {"project": project_id, "data": {"title": title, **data}}
        for view in views:
            if view.get("data", {}).get("title") == title:
                self.request("PATCH", f"/api/dm/views/{view['id']}", f"updating tab {title!r}", json=body)
                return int(view["id"])
        return int(self.request("POST", "/api/dm/views", f"creating tab {title!r}", json=body)["id"])

    def iter_view_tasks(self, project_id: int, view_id: int, page_size: int = 100) -> Iterator[dict]:
        """A tab's tasks in its order (filters and ordering applied by the server)."""
        page, seen = 1, 0
        while True:
            params: dict[str, Any] = {"project": project_id, "view": view_id, "page": page, "page_size": page_size}
            body = self.request("GET", "/api/tasks", f"listing tab {view_id}", ok=(200, 404), params=params)
            tasks = body.get("tasks", []) if isinstance(body, dict) else []
            yield from tasks
            seen += len(tasks)
            if not tasks or seen >= int(body.get("total", 0)):
                return
            page += 1

    # ------------------------------------------------------------------------------------- ML backends

    def connect_ml_backend(self, project_id: int, url: str, title: str | None = None) -> dict[str, Any]:
        """Register the ML backend at `url` on a project (Label Studio calls its /health and /setup first);
        already registered: the existing one."""
        if not url.startswith(("http://", "https://")):
            raise AnnotationError(f"ML backend URL {url!r} must start with http:// or https://")
        url = url.rstrip("/")
        doing = f"listing the ML backends of project {project_id}"
        existing = self.request("GET", "/api/ml", doing, params={"project": project_id}) or []
        for backend in existing:
            if str(backend.get("url", "")).rstrip("/") == url:
                return backend
        body = {"url": url, "project": project_id, "title": title or url, "is_interactive": False}
        return self.request("POST", "/api/ml", f"connecting the ML backend {url} to project {project_id}", json=body)

    def request_predictions(self, project_id: int, task_ids: list[int]) -> Any:
        """Ask the project's ML backend for predictions of these tasks (the data manager's action)."""
        return self.request(
            "POST",
            "/api/dm/actions",
            f"requesting predictions for {len(task_ids)} tasks of project {project_id}",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": {"all": False, "included": task_ids}},
        )


def _detail(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or body)[:300]
    return str(body)[:300]
