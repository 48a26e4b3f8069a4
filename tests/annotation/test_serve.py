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


def test_serve_starts_on_loopback_prints_login_and_stops_on_ctrl_c(tmp_path):
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
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not token_accepted(url, TEST_TOKEN) and proc.poll() is None:
            time.sleep(0.5)
        assert token_accepted(url, TEST_TOKEN), "server did not come up"
        assert token_accepted(url, "f" * 40) is False
        time.sleep(1.0)  # let it print the login lines
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert f"Label Studio is up: {url}" in output
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={data_dir / 'media'}" in output
    assert TEST_TOKEN not in output
    assert token_accepted(url, TEST_TOKEN) is None and port_is_free(port)  # the whole process group is gone


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
