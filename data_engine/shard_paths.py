"""Shard paths: local paths and `pyarrow.fs` URIs (s3://, gs://, file://), and the expansion of shard patterns.

    expand(["train/", "val/*.tar", "s3://bucket/people"])   # -> every complete shard, sorted per pattern
    with open_input("s3://bucket/people-000000.tar") as f: ...

A shard is `{prefix}-{000000}.tar` (`SHARD_NAME_RE`); a shard being written is a hidden temporary beside it whose
name holds `TMP_MARK`, which expansion never returns.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable

SHARD_NAME_RE = re.compile(r"^(?P<prefix>.+)-(?P<num>\d{6})\.tar$")
TMP_MARK = ".tmp-"


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def split_uri(path: str):
    """(pyarrow FileSystem, path inside it) for a URI."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(path)


def open_input(path: str):
    """A binary stream for reading a local path or a pyarrow.fs URI."""
    if is_uri(path):
        filesystem, inner = split_uri(path)
        return filesystem.open_input_stream(inner)
    return open(local_path(path), "rb")


def expand(patterns: str | Iterable[str]) -> list[str]:
    """Expand shard paths: files, folders (every *.tar inside, sorted), and glob patterns; URIs included.

    Raises FileNotFoundError naming a pattern that matches nothing.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for pattern in patterns:
        if is_uri(pattern):
            out.extend(_expand_uri(pattern))
            continue
        pattern = local_path(pattern)
        if os.path.isdir(pattern):
            matches = sorted(glob.glob(os.path.join(pattern, "**", "*.tar"), recursive=True))
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern, recursive=True))
        else:
            matches = [pattern] if os.path.exists(pattern) else []
        matches = [m for m in matches if TMP_MARK not in os.path.basename(m)]
        if not matches:
            raise FileNotFoundError(f"no shards match {pattern!r}")
        out.extend(matches)
    return out


def _expand_uri(pattern: str) -> list[str]:
    import fnmatch

    from pyarrow import fs

    filesystem, inner = split_uri(pattern)
    scheme = pattern.split("://", 1)[0]
    if any(ch in inner for ch in "*?["):
        base = inner[: min(inner.find(c) for c in "*?[" if c in inner)].rsplit("/", 1)[0]
        infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True))
        found = sorted(i.path for i in infos if i.type == fs.FileType.File and fnmatch.fnmatch(i.path, inner))
    else:
        info = filesystem.get_file_info(inner)
        if info.type == fs.FileType.Directory:
            infos = filesystem.get_file_info(fs.FileSelector(inner, recursive=True))
            found = sorted(i.path for i in infos if i.type == fs.FileType.File and i.path.endswith(".tar"))
        else:
            found = [inner] if info.type == fs.FileType.File else []
    if not found:
        raise FileNotFoundError(f"no shards match {pattern!r}")
    return [f"{scheme}://{p}" for p in found]
