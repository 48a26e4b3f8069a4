"""The server we start keeps to itself: a private data dir, and no error tracker reporting off the machine."""

from __future__ import annotations

import stat
from pathlib import Path

import psutil
import pytest

from annotation.server import DATABASE_NAME, DEFAULT_USERNAME, SENTRY_SETTINGS, SETTING_PREFIXES

from .conftest import TEST_PASSWORD, LiveServer

pytestmark = [pytest.mark.labelstudio]


def _server_process(live_server: LiveServer) -> psutil.Process:
    port = int(live_server.url.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    for child in psutil.Process().children(recursive=True):  # net_connections may not name other users' pids
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in child.net_connections(kind="tcp")):
            return child
    raise AssertionError(f"no process listens on port {port}")


def _logged_in_page(url: str, path: str) -> str:
    """A page as the annotator's browser gets it (the app pages carry the frontend's Sentry settings)."""
    import httpx

    with httpx.Client(base_url=url, timeout=60, follow_redirects=True) as browser:
        browser.get("/user/login/")
        form = {
            "email": DEFAULT_USERNAME,
            "password": TEST_PASSWORD,
            "csrfmiddlewaretoken": browser.cookies["csrftoken"],
        }
        browser.post("/user/login/", data=form, headers={"Referer": f"{url}/user/login/"})
        response = browser.get(path)
    assert response.status_code == 200 and "APP_SETTINGS" in response.text, response.text[:300]
    return response.text


def test_data_dir_and_database_are_private(live_server: LiveServer) -> None:
    # Before: the data dir was made under the default umask (0755) and label_studio.sqlite3, which holds the
    # API token, was 0644: readable by every user of the machine.
    data_dir = live_server.media_root.parent / "data"
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    database = data_dir / DATABASE_NAME
    assert stat.S_IMODE(database.stat().st_mode) & 0o077 == 0
    made_by_server = [p for p in data_dir.rglob("*") if p.is_file() and p.stat().st_mtime > database.stat().st_ctime]
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in made_by_server), made_by_server


def test_started_server_has_sentry_off(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Label Studio 1.23.2 falls back to its own DSNs (ingest.sentry.io) unless SENTRY_DSN / FRONTEND_SENTRY_DSN
    # are set; read what the running server process was given, and what its pages tell the browser.
    environ = _server_process(live_server).environ()
    for name in SENTRY_SETTINGS:
        for prefix in SETTING_PREFIXES:
            assert environ.get(f"{prefix}{name}") == "", f"{prefix}{name} reaches the server as {environ.get(name)!r}"
    # Calls out (ML backends, webhooks) may reach this machine's loopback, never a private or link-local network.
    assert environ["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    banned = environ["USER_ADDITIONAL_BANNED_SUBNETS"].split(",")
    assert "127.0.0.0/8" not in banned and {"10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16", "::1/128"} <= set(banned)
    page = _logged_in_page(live_server.url, "/projects/")
    assert "sentry_dsn: null" in page
    assert "ingest.sentry.io" not in page
    assert Path(environ["LABEL_STUDIO_BASE_DATA_DIR"]) == live_server.media_root.parent / "data"
