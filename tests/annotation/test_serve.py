"""`hv annotate serve` as a user runs it: a real process, loopback only, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from annotation.server import free_port, port_is_free, token_accepted

from .conftest import TEST_TOKEN, _binary, ensure_template

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a non-interactive shell hands its children


def _start_serve(tmp_path, sigint_ignored: bool = False) -> tuple[subprocess.Popen, str, int]:
    """`hv annotate serve` in a subprocess, from the cached migrated data dir; returns once it takes the token."""
    _binary()
    data_dir = tmp_path / "data"
    shutil.copytree(ensure_template(), data_dir)
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_API_KEY": TEST_TOKEN}
    env.pop("LABEL_STUDIO_PASSWORD", None)
    command = [
        sys.executable,
        "-m",
        "humanvision_cli",
        "annotate",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_ignore_sigint if sigint_ignored else None,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not token_accepted(url, TEST_TOKEN) and proc.poll() is None:
        time.sleep(0.5)
    if not token_accepted(url, TEST_TOKEN):
        proc.kill()
        pytest.fail(f"server did not come up: {proc.communicate(timeout=30)[0]}")
    return proc, url, port


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "started-in-background"])
def test_serve_starts_on_loopback_prints_login_and_stops_on_ctrl_c(tmp_path, sigint_ignored):
    """Ctrl-C stops it, also when it was started with SIGINT ignored (a background job of a script): it then did
    nothing, and the server kept running."""
    proc, url, port = _start_serve(tmp_path, sigint_ignored)
    try:
        assert token_accepted(url, "f" * 40) is False
        time.sleep(1.0)  # let it print the login lines
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert f"Label Studio is up: {url}" in output
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={tmp_path / 'data' / 'media'}" in output
    assert TEST_TOKEN not in output
    assert token_accepted(url, TEST_TOKEN) is None and port_is_free(port)  # the whole process group is gone


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_serve_stops_the_server_on_sigterm_and_sighup(tmp_path, stop_signal):
    # Before: the signal's default action ended `hv annotate serve` alone; Label Studio, in its own session,
    # went on listening with parent 1.
    import psutil

    proc, url, port = _start_serve(tmp_path)
    try:
        server_processes = psutil.Process(proc.pid).children(recursive=True)
        assert server_processes, "no Label Studio child process"
        proc.send_signal(stop_signal)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    _gone, alive = psutil.wait_procs(server_processes, timeout=10)
    for p in alive:  # never leave a server behind, even when the test fails
        p.kill()
    assert not alive, f"Label Studio processes still running after {stop_signal.name}: {[p.pid for p in alive]}"
    assert proc.returncode == 0, output
    assert "stopping Label Studio" in output
    assert token_accepted(url, TEST_TOKEN) is None and port_is_free(port)


def test_serve_refuses_a_taken_port_and_a_missing_key(tmp_path, monkeypatch, capsys):
    import socket

    import humanvision_cli

    _binary()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TEST_TOKEN)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            humanvision_cli.main(["annotate", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")])
    assert exit_info.value.code == 2 and f"port {port} on 127.0.0.1 is taken" in capsys.readouterr().err
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    with pytest.raises(SystemExit) as exit_info:
        humanvision_cli.main(["annotate", "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")])
    assert exit_info.value.code == 2 and "LABEL_STUDIO_API_KEY is not set" in capsys.readouterr().err
