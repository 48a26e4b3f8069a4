"""A local Label Studio server on 127.0.0.1 with SQLite: the embedded default for a team without one.

    export LABEL_STUDIO_API_KEY=$(python -c 'import secrets; print(secrets.token_hex(20))')
    hv annotate serve --port 8080 --data-dir runs/label-studio

The server is an application with its own pins, so it lives in its own venv (`make setup` creates
`<repo>/.venv-ls`); `HV_LABEL_STUDIO_BIN` or `--label-studio-bin` point elsewhere. Facts that shape this
module (STACK.md): Label Studio binds 0.0.0.0 unless told `--internal-host 127.0.0.1`; when its port is
taken it silently moves to another one, so we refuse a taken port up front and then check that *our*
token is accepted on the URL we print; `label-studio --version` starts a server, so it is never called.

Nothing leaves the machine and nothing is readable by others: Label Studio 1.23.2 ships Sentry DSNs (backend
and browser, with `send_default_pii`), which we blank in every spelling its `get_env` reads
(LABEL_STUDIO_*, HEARTEX_*, bare); the data dir, whose `label_studio.sqlite3` holds the API token, is kept
0700 and the server runs under umask 077 so whatever it creates there is private.

The admin user and its legacy API token are created on the first start of a data dir from environment
variables (LABEL_STUDIO_USERNAME / _PASSWORD / _USER_TOKEN), never from command-line arguments, so the
token does not show in `ps` output or in anything we print.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotation.errors import AnnotationError

REPO_ROOT = Path(__file__).resolve().parents[1]
BINARY_ENV = "HV_LABEL_STUDIO_BIN"
DEFAULT_USERNAME = "admin@localhost"
LOOPBACK = "127.0.0.1"
DATABASE_NAME = "label_studio.sqlite3"
# Label Studio's settings read each of these through `get_env`, which tries LABEL_STUDIO_<name>, HEARTEX_<name>,
# then <name>: an empty value in every spelling switches the error tracker off whatever the user's shell holds.
SENTRY_SETTINGS = ("SENTRY_DSN", "FRONTEND_SENTRY_DSN")
SETTING_PREFIXES = ("LABEL_STUDIO_", "HEARTEX_", "")
# Label Studio 1.23.2's default SSRF block list (core/utils/io.py validate_ip) without 127.0.0.0/8.
BANNED_SUBNETS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24",
    "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4",
    "233.252.0.0/24", "240.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128", "::ffff:0:0/96", "::ffff:0:0:0/96",
    "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001:0000::/32", "2001:20::/28", "2001:db8::/32", "2002::/16",
    "fc00::/7", "fe80::/10", "ff00::/8",
)  # fmt: skip


def find_binary(explicit: str | None = None) -> Path:
    """The `label-studio` executable: the option, else $HV_LABEL_STUDIO_BIN, else <repo>/.venv-ls/bin."""
    candidate = explicit or os.environ.get(BINARY_ENV) or str(REPO_ROOT / ".venv-ls" / "bin" / "label-studio")
    path = Path(candidate)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise AnnotationError(
            f"Label Studio server not found at {path}. Create its venv with `make setup` (it installs "
            f"label-studio==1.23.2 into {REPO_ROOT / '.venv-ls'}), or point {BINARY_ENV} / --label-studio-bin "
            "at an existing `label-studio` executable."
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nothing listens on it. SO_REUSEADDR: a just-stopped server leaves TIME_WAIT sockets that Label Studio
    itself would bind over; a listening socket still makes the bind fail."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def token_accepted(url: str, token: str, timeout: float = 5.0) -> bool | None:
    """True: the server answers and takes the token; False: it answers and refuses it; None: no answer."""
    request = urllib.request.Request(f"{url}/api/projects?page_size=1", headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200
    except urllib.error.HTTPError as e:
        return False if e.code in (401, 403) else None
    except (urllib.error.URLError, OSError):
        return None


def make_private(data_dir: Path) -> None:
    """The data dir 0700 and an existing database 0600: a folder made before (or copied) is tightened too."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir.chmod(0o700)
    database = data_dir / DATABASE_NAME
    if database.exists():
        database.chmod(0o600)


@dataclass
class ServerSettings:
    data_dir: Path
    media_root: Path  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: `push` copies images under it
    port: int
    username: str = DEFAULT_USERNAME
    binary: Path | None = None
    log_path: Path | None = None  # None: the server's output goes to our terminal


class LabelStudioServer:
    """Start, wait for and stop one Label Studio process (in its own process group).

    with LabelStudioServer(settings, token=..., password=...) as server:
        print(server.url)
    """

    def __init__(self, settings: ServerSettings, token: str, password: str) -> None:
        if len(token) < 6:
            raise AnnotationError("LABEL_STUDIO_API_KEY is too short for a Label Studio token (use 40 hex digits)")
        self.settings = settings
        self._token = token
        self._password = password
        self.url = f"http://{LOOPBACK}:{settings.port}"
        self.process: subprocess.Popen | None = None
        self._log = None

    def environment(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update(
            # Absolute: Label Studio checks a storage path by prefix against the document root, so a
            # relative root refuses the absolute paths `push` sends ("Validation error").
            LABEL_STUDIO_BASE_DATA_DIR=str(s.data_dir.resolve()),
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(s.media_root.resolve()),
            LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LATEST_VERSION_CHECK="false",
            # Label Studio refuses to call (ML backends, their webhooks, URLs) any reserved address, 127.0.0.1
            # included, so it could not reach `hv annotate backend`. Same list, minus IPv4 loopback only: private
            # networks, link-local (cloud metadata) and the rest stay blocked.
            USE_DEFAULT_BANNED_SUBNETS="false",
            USER_ADDITIONAL_BANNED_SUBNETS=",".join(BANNED_SUBNETS),
            COLLECT_ANALYTICS="false",
            LABEL_STUDIO_USERNAME=s.username,
            LABEL_STUDIO_PASSWORD=self._password,
            LABEL_STUDIO_USER_TOKEN=self._token,
        )
        env.update({f"{prefix}{name}": "" for name in SENTRY_SETTINGS for prefix in SETTING_PREFIXES})
        return env

    def start(self, timeout_s: float = 240.0) -> str:
        s = self.settings
        binary = s.binary or find_binary()
        if not port_is_free(s.port):
            # Label Studio would silently move to another port; say so instead of serving somewhere unexpected.
            raise AnnotationError(f"port {s.port} on {LOOPBACK} is taken; pick another with --port")
        make_private(s.data_dir)
        s.media_root.mkdir(parents=True, exist_ok=True)
        command = [
            str(binary),
            "start",
            "--no-browser",
            "--internal-host",
            LOOPBACK,
            "--port",
            str(s.port),
            "--data-dir",
            str(s.data_dir),
            "--enable-legacy-api-token",
        ]
        output = None
        if s.log_path is not None:
            s.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(s.log_path, "ab")  # noqa: SIM115 (closed in stop())
            output = self._log
        self.process = subprocess.Popen(
            command,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            start_new_session=True,  # our Ctrl-C handling stops the whole group, not a half of it
            preexec_fn=_default_interrupt,  # an inherited "SIGINT ignored" would make stop() wait for SIGTERM
            umask=0o077,  # the database (API token inside), exports and uploads it writes: owner only
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                where = f"; its log: {s.log_path}" if s.log_path else ""
                raise AnnotationError(f"Label Studio exited with code {code} while starting{where}")
            accepted = token_accepted(self.url, self._token)
            if accepted:
                return self.url
            if accepted is False:
                self.stop()
                raise AnnotationError(
                    f"Label Studio at {self.url} refuses LABEL_STUDIO_API_KEY: the data dir {s.data_dir} was created "
                    "with another token (a token is set only when the admin user is first created)"
                )
            time.sleep(0.5)
        self.stop()
        raise AnnotationError(f"Label Studio did not answer on {self.url} within {timeout_s:.0f} s")

    def stop(self, grace_s: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LabelStudioServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# A closed terminal (SIGHUP) or `kill` / a process manager (SIGTERM) must stop the server as Ctrl-C does;
# their default action would end us and leave Label Studio, in its own session, running with parent 1. SIGINT is
# in the list too: a process started in the background by a non-interactive shell (`hv annotate serve &` in a
# script, a test run under `make test &`) inherits SIGINT *ignored*, and Ctrl-C / `kill -INT` would do nothing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _default_interrupt() -> None:
    """In the Label Studio child before exec: SIGINT back to its default, so Python installs KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _stop_signals_handled_by(handler: Any) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stop_signals_interrupt() -> contextlib.AbstractContextManager[None]:
    """Inside: SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so the Ctrl-C path (a `finally:
    server.stop()`) runs, whatever dispositions this process inherited."""
    return _stop_signals_handled_by(_interrupt)


def ignoring_stop_signals() -> contextlib.AbstractContextManager[None]:
    """While the server is being stopped: a second SIGTERM must not cut the stop in half."""
    return _stop_signals_handled_by(signal.SIG_IGN)


@contextlib.contextmanager
def running(settings: ServerSettings, token: str, password: str, timeout_s: float = 240.0) -> Iterator[str]:
    server = LabelStudioServer(settings, token=token, password=password)
    try:
        yield server.start(timeout_s)
    finally:
        server.stop()
