"""Output paths checked before a job starts: a folder that is a file, or one that cannot be written, is one
line naming the path (and the command exits 2), not a traceback minutes later.

    from data_engine.outputs import OutputPathError, prepare_output_dir, prepare_output_file

    try:
        prepare_output_dir(args.out)          # creates it (and its parents) and proves it writable
    except OutputPathError as e:
        print(f"hv synth: {e}", file=sys.stderr)
        return 2

Local paths only: URIs (s3://, gs://) are the file system's to check, and are returned unchanged.
"""

from __future__ import annotations

import errno
import os
import tempfile


class OutputPathError(ValueError):
    """An output path that cannot be used; the message names it and says why."""


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _reason(error: OSError) -> str:
    if error.errno in (errno.EACCES, errno.EPERM):
        return "not writable (permission denied)"
    if error.errno == errno.EROFS:
        return "not writable (read-only file system)"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way (a path component is a file, not a folder)"
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    return error.strerror or type(error).__name__


def prepare_output_dir(path: str, what: str = "output folder") -> str:
    """Create the folder `path` if needed and check that a file can be created in it; returns `path`.

    Raises OutputPathError naming the path when it is a file, sits under a file, or cannot be written.
    """
    if _is_uri(path):
        return path
    local = path[len("file://") :] if path.startswith("file://") else path
    if os.path.exists(local) and not os.path.isdir(local):
        raise OutputPathError(f"{what} {path!r} is a file, not a folder")
    try:
        os.makedirs(local, exist_ok=True)
        # os.access says yes to root on a read-only mount and no to ACL-granted users: creating a file is the test.
        fd, probe = tempfile.mkstemp(prefix=".hv-write-check-", dir=local)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OutputPathError(f"{what} {path!r}: {_reason(e)}") from None
    return path


def prepare_output_file(path: str, what: str = "output file") -> str:
    """Check that the file `path` can be written: not a folder, in a folder that exists (or can be made) and is
    writable. Returns `path`; raises OutputPathError naming it."""
    if _is_uri(path):
        return path
    if os.path.isdir(path):
        raise OutputPathError(f"{what} {path!r} is a folder, not a file")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        prepare_output_dir(folder, what="its folder")
    except OutputPathError as e:
        raise OutputPathError(f"{what} {path!r}: {e}") from None
    return path
