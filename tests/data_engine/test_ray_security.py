"""The local Ray that `hv curate` starts cannot be used by someone who reaches the machine: every socket its
processes listen on outside loopback refuses a client without the token, and the token stays private."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from data_engine.curate_state import HOLD_ENV
from data_engine.ray_runtime import token_file

# One harmless call per Ray gRPC service that listens on a port (GCS, raylet node manager and object manager,
# core workers and the driver). Ray checks the token before it looks at the request, so an empty request is
# enough; an unknown method on a port answers UNIMPLEMENTED, and an open door would answer anything else.
PROBES = (
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
    "/ray.rpc.NodeManagerService/GetNodeStats",
    "/ray.rpc.ObjectManagerService/Pull",
    "/ray.rpc.CoreWorkerService/NumPendingTasks",
)
LOOPBACK = ("127.0.0.1", "::1")


def _external_ip() -> str:
    """An address of this machine that is not loopback: what another host would connect to. A machine with
    none (no network at all) is probed through 127.0.0.1: the listeners bind every interface and the token is
    checked on every connection whatever its source, so the refusals prove the same thing there."""
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family.name == "AF_INET" and not a.address.startswith("127."):
                return a.address
    return "127.0.0.1"


def _grpc_answers(host: str, port: int, metadata: tuple = ()) -> dict[str, str]:
    import grpc

    answers = {}
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in PROBES:
            try:
                channel.unary_unary(method)(b"", timeout=5, metadata=metadata)
                answers[method] = "OK"
            except grpc.RpcError as e:
                answers[method] = e.code().name
    return answers


def _http_status(host: str, port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as r:
            return str(r.status)
    except urllib.error.HTTPError as e:
        return str(e.code)
    except Exception as e:  # not HTTP at all (a gRPC port answers garbage to HTTP/1.1)
        return type(e).__name__


def test_token_file_is_private_and_a_readable_one_is_replaced(tmp_path):
    folder = tmp_path / "tokens"
    path = token_file(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 random bits, hex
    assert token_file(folder) == path and path.read_text() == token  # kept across jobs

    os.chmod(path, 0o644)  # someone else may have read it: it is no longer a secret
    assert token_file(folder).read_text() != token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    os.chmod(folder, 0o755)
    token_file(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    stolen = tmp_path / "elsewhere"
    stolen.write_text("f" * 64)
    path.unlink()
    path.symlink_to(stolen)  # a link could point at a file others can write: never trusted
    assert token_file(folder).read_text() != "f" * 64
    assert not path.is_symlink()

    path.unlink()
    (folder / f".auth_token.tmp-{os.getpid()}").write_text("left by a killed job")
    assert len(token_file(folder).read_text()) == 64 and os.listdir(folder) == ["auth_token"]


@pytest.mark.slow
def test_live_curate_job_listens_only_behind_token_auth(corpus, tmp_path):
    """While a real `hv curate` runs (held after its first analysis checkpoint), probe every listening socket
    of its process tree from the machine's external address, without the token."""
    ip = _external_ip()
    out, release, tokens = tmp_path / "out", tmp_path / "release", tmp_path / "tokens"
    env = {
        **os.environ,
        HOLD_ENV: f"analysis_part:{release}",
        "HV_RAY_TOKEN_DIR": str(tokens),
        "RAY_AUTH_MODE": "disabled",  # a shell that still says so must not open the door
    }
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    run = "from humanvision_cli import main; main()"
    command = [sys.executable, "-c", run, "curate", str(corpus / "images"), "--out", str(out), "--detector", "none"]
    command += ["checkpoint_rows=2", "images_per_task=2", "num_cpus=1", "progress=false"]
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "state" / "analysis").glob("part-*.parquet")):
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline, "the job did not reach its first checkpoint"
            time.sleep(0.2)
        driver = psutil.Process(job.pid)
        listeners = []
        for process in [driver, *driver.children(recursive=True)]:
            try:
                sockets = process.net_connections(kind="inet")
                name = process.name()
            except psutil.NoSuchProcess:
                continue
            listeners += [(name, s.laddr.ip, s.laddr.port) for s in sockets if s.status == psutil.CONN_LISTEN]
        exposed = [(name, port) for name, host, port in listeners if host not in LOOPBACK]
        names = {name for name, _ in exposed}
        assert "gcs_server" in names and "raylet" in names, listeners  # the probe is not vacuous

        open_doors = []
        for name, port in exposed:
            answers = _grpc_answers(ip, port)
            if "UNAUTHENTICATED" in answers.values():
                continue
            if _http_status(ip, port) == "401":  # Ray's HTTP agents: "Unauthorized: Missing authentication token"
                continue
            open_doors.append((name, port, answers))
        assert open_doors == []

        # The refusal is about the token: with it, the same GCS call from the same address succeeds.
        token = (tokens / "auth_token").read_text().strip()
        gcs_port = next(port for name, port in exposed if name == "gcs_server")
        with_token = _grpc_answers(ip, gcs_port, metadata=(("authorization", f"Bearer {token}"),))
        assert with_token[PROBES[0]] == "OK"
    finally:
        release.touch()
        stdout, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr
    assert token not in stdout + stderr
