"""The one place where humanvision starts or joins Ray (`hv curate`, `hv synth`).

    init_ray("")                      # a local Ray for this job, token authentication on
    init_ray("auto")                  # join the cluster `ray start` made on this machine
    init_ray("10.0.0.5:6379")         # join a user's cluster, under that cluster's own security

A local Ray (empty address) cannot be made to listen on loopback only: Ray 2.60's GCS, raylet and workers
listen on every interface whatever `_node_ip_address` says. So whoever reaches the machine could submit jobs
(run code as the user) unless Ray's token authentication is on. `init_ray` turns it on for the local Ray
(`RAY_AUTH_MODE=token`, also when the shell says `disabled`) with a token of 256 random bits kept in a 0600
file under a 0700 folder (`token_file()`), never printed. Ray's workers inherit both variables.

Joining a cluster (`--ray-address`) follows that cluster's security model, which is the user's: for a cluster
started with token authentication set `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN_PATH=<its token file>` (or
`RAY_AUTH_TOKEN`) before `hv ... --ray-address`; nothing here changes them.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Any

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TOKEN_ENV = "RAY_AUTH_TOKEN"
# Where the local Ray's token lives unless HV_RAY_TOKEN_DIR names another private folder.
TOKEN_DIR_ENV = "HV_RAY_TOKEN_DIR"


class RayConnectError(RuntimeError):
    """`--ray-address` names no cluster this process may join (down, wrong address, or a token it lacks)."""


def token_folder() -> Path:
    override = os.environ.get(TOKEN_DIR_ENV)
    if override:
        return Path(override)
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config_home) / "humanvision" / "ray"


def token_file(folder: Path | None = None) -> Path:
    """The local Ray's token file, created (0600 in a 0700 folder) with a fresh token when missing.

    A token file that others could have read (wider than 0600, another owner, a symbolic link) is replaced by
    a new token rather than trusted: what leaked once opens the door for every later job.
    """
    folder = folder or token_folder()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"Ray token folder {folder} is not a folder owned by this user")
    os.chmod(folder, 0o700)
    path = folder / "auth_token"
    state = _token_state(path)
    if state == "trusted":
        return path
    tmp = folder / f".auth_token.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)  # left by a killed process with this PID
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32))
        if state == "missing":
            try:
                # Create only if still absent: two jobs starting at once must end up with one token, or the
                # workers of the first would read the second's.
                os.link(tmp, path)
                return path
            except FileExistsError:
                if _token_state(path) == "trusted":
                    return path
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _token_state(path: Path) -> str:
    """ "missing", "trusted" (a non-empty regular file of ours, mode 0600) or "untrusted"."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "missing"
    private = stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o600
    return "trusted" if private and path.read_bytes().strip() else "untrusted"


def enable_local_token_auth(folder: Path | None = None) -> None:
    """Set the environment a local Ray (and every worker it spawns) reads its authentication from."""
    os.environ[AUTH_MODE_ENV] = "token"
    if not (os.environ.get(TOKEN_ENV) or os.environ.get(TOKEN_PATH_ENV)):
        os.environ[TOKEN_PATH_ENV] = str(token_file(folder))
    # Ray caches its config and the token at import; make it read the variables just set.
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def init_ray(address: str = "", **local_options: Any) -> None:
    """`ray.init` for humanvision's jobs: join `address`, or start a local Ray with token auth on.

    `local_options` are `ray.init` keyword arguments for a local start (num_cpus, object_store_memory,
    _temp_dir, ...); the quiet settings every job uses are added here.
    """
    import ray

    common: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    if address:
        try:
            ray.init(address=address, **common)
        except Exception as e:  # Ray raises ConnectionError, AuthenticationError, RuntimeError... for one cause
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            hint = f"; a cluster with token authentication needs {AUTH_MODE_ENV}=token and {TOKEN_PATH_ENV}=FILE"
            raise RayConnectError(f"--ray-address {address}: cannot join that Ray cluster ({first}){hint}") from None
        return
    enable_local_token_auth()
    ray.init(include_dashboard=False, **common, **local_options)
