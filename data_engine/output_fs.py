"""Where a job writes: a local folder or any `pyarrow.fs` URI (s3://, gs://), behind one small interface whose every
write is all-or-nothing under its final name.

    out = OutputFS.open("s3://bucket/curated?endpoint_override=127.0.0.1:9000&scheme=http")
    out.check(create=True)                          # OutputFSError naming the URI: unreachable, no bucket, a file
    out.write_bytes("stats.json", data)             # the whole object under its final name, or nothing
    with out.open_atomic("manifest.parquet") as f:  # the same, for streamed writes
        ...
    out.list("shards")                              # names of the files directly under shards/, sorted

Local folders: a hidden temporary beside the final name, then os.replace (a rename). Object stores have no rename:
a write is spooled to a local temporary file and uploaded under its final name only once
complete, in one C++ call. S3 creates an object only when its upload completes, so a kill -9 mid-upload leaves
nothing under the final name (at most an incomplete multipart upload, which a bucket lifecycle rule removes).
A Python exception never reaches a half-fed upload stream: pyarrow's S3 stream cannot be aborted, and closing it
(which its destructor does) would publish the partial object.

Credentials for S3 come from the AWS SDK's usual chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
AWS_SESSION_TOKEN), AWS_PROFILE with ~/.aws/credentials, or an instance role; the URI's query carries only options
such as `region=`, `endpoint_override=`, `scheme=` (pyarrow refuses keys there).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from data_engine.shard_paths import TMP_MARK, is_uri


class OutputFSError(ValueError):
    """An output location that cannot be used; the message names it (secrets hidden) and says why."""


def redact(uri: str) -> str:
    return re.sub(r"(secret_key|session_token)=[^&]*", r"\1=***", uri)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@dataclass
class OutputFS:
    """A folder: `filesystem` None means local (`base` an absolute path), else `base` is the path inside it."""

    root: str  # as given, for messages
    base: str
    filesystem: Any = None  # pyarrow.fs.FileSystem
    query: str = ""  # the URI's query, kept so that uri() rebuilds addresses the same file system understands

    @classmethod
    def open(cls, root: str) -> OutputFS:
        if not is_uri(root):
            local = root[len("file://") :] if root.startswith("file://") else root
            return cls(root=root, base=os.path.abspath(local))
        from pyarrow import fs

        try:
            filesystem, inner = fs.FileSystem.from_uri(root)
        except (pa.ArrowInvalid, OSError) as e:
            raise OutputFSError(f"{redact(root)}: not a usable URI ({_first_line(e)})") from None
        return cls(root=root, base=inner.rstrip("/"), filesystem=filesystem, query=root.partition("?")[2])

    @property
    def remote(self) -> bool:
        return self.filesystem is not None

    @property
    def display(self) -> str:
        return redact(self.root) if self.remote else self.base

    def path(self, rel: str = "") -> str:
        """The local path, or the path inside the file system, of `rel` (a '/'-separated relative path)."""
        if not rel:
            return self.base
        return os.path.join(self.base, rel) if not self.remote else f"{self.base}/{rel}"

    def uri(self, rel: str = "") -> str:
        """An address of `rel` that `pyarrow.fs.FileSystem.from_uri` (or open()) understands: for shard readers."""
        if not self.remote:
            return self.path(rel)
        scheme = self.root.split("://", 1)[0]
        return f"{scheme}://{self.path(rel)}" + (f"?{self.query}" if self.query else "")

    def sub(self, rel: str) -> OutputFS:
        """The folder `rel` under this one, on the same file system."""
        return OutputFS(root=self.uri(rel), base=self.path(rel), filesystem=self.filesystem, query=self.query)

    # ----------------------------------------------------------------------------------------------- reading

    def exists(self, rel: str) -> bool:
        if not self.remote:
            return os.path.exists(self.path(rel))
        from pyarrow import fs

        return self.filesystem.get_file_info(self.path(rel)).type != fs.FileType.NotFound

    def list(self, rel: str) -> list[str]:
        """Names of the files directly under `rel`, sorted; [] when it does not exist."""
        if not self.remote:
            folder = self.path(rel)
            if not os.path.isdir(folder):
                return []
            return sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
        from pyarrow import fs

        infos = self.filesystem.get_file_info(fs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == fs.FileType.File)

    def read_bytes(self, rel: str) -> bytes:
        if not self.remote:
            with open(self.path(rel), "rb") as f:
                return f.read()
        with self.filesystem.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_table(self, rel: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(rel), schema=schema, columns=columns, filesystem=self.filesystem)

    # ----------------------------------------------------------------------------------------------- writing

    def makedirs(self, rel: str = "") -> None:
        if not self.remote:
            os.makedirs(self.path(rel), exist_ok=True)
        elif self.filesystem.type_name != "s3":  # S3 has no folders (create_dir would add marker objects)
            self.filesystem.create_dir(self.path(rel), recursive=True)

    def begin(self, rel: str) -> AtomicFile:
        """A file being written under `rel`: feed `.stream`, then commit() or discard()."""
        return AtomicFile(self, rel)

    @contextlib.contextmanager
    def open_atomic(self, rel: str) -> Iterator[BinaryIO]:
        """A binary stream whose bytes appear under `rel` only when the block ends without an exception."""
        pending = self.begin(rel)
        try:
            yield pending.stream
        except BaseException:
            pending.discard()
            raise
        pending.commit()

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_atomic(rel) as f:
            f.write(data)

    def write_table(self, rel: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def delete(self, rel: str) -> None:
        if not self.remote:
            os.remove(self.path(rel))
        else:
            self.filesystem.delete_file(self.path(rel))

    # ----------------------------------------------------------------------------------------------- checks

    def check(self, create: bool) -> None:
        """Refuse a location that is a file, cannot be reached or written, or names a missing bucket.

        With `create`, makes the folder and proves that a file can be written there.
        """
        if not self.remote:
            folder = self.base
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise OutputFSError(f"{self.display}: is a file, not a folder")
            if create:
                try:
                    os.makedirs(folder, exist_ok=True)
                    with tempfile.TemporaryFile(dir=folder):  # os.access says yes to root on a read-only mount
                        pass
                except OSError as e:
                    raise OutputFSError(f"{self.display}: cannot write there ({e.strerror or e})") from None
            return
        from pyarrow import fs

        try:
            info = self.filesystem.get_file_info(self.base)
            if info.type == fs.FileType.File:
                raise OutputFSError(f"{self.display}: is a file, not a folder")
            bucket = self.base.split("/", 1)[0]
            if self.filesystem.type_name == "s3" and self.filesystem.get_file_info(bucket).type == fs.FileType.NotFound:
                raise OutputFSError(f"{self.display}: bucket {bucket!r} does not exist (create it first)")
            if create:
                self.makedirs()
                probe = f".hv-write-check-{uuid.uuid4().hex[:8]}"
                self.write_bytes(probe, b"")
                self.delete(probe)
        except OSError as e:
            raise OutputFSError(f"{self.display}: cannot reach or write it ({_first_line(e)})") from None


class AtomicFile:
    """Bytes written to `stream` appear under the final name on commit(); discard() drops them.

    Local: a hidden temporary `.{name}.tmp-{random}` beside the final name, fsynced and renamed. Remote: a local
    spool file, uploaded under the final name in one C++ copy (see the module docstring).
    """

    def __init__(self, out: OutputFS, rel: str) -> None:
        self.out, self.rel = out, rel
        if out.remote:
            fd, self._tmp = tempfile.mkstemp(prefix=".hv-spool-")
        else:
            folder, name = os.path.split(out.path(rel))
            os.makedirs(folder, exist_ok=True)
            self._tmp = os.path.join(folder, f".{name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.stream: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        try:
            if not self.stream.closed:
                self.stream.flush()
                if not self.out.remote:
                    os.fsync(self.stream.fileno())
                self.stream.close()
            if not self.out.remote:
                os.replace(self._tmp, self.out.path(self.rel))
                return
            from pyarrow import fs

            fs.copy_files(
                self._tmp,
                self.out.path(self.rel),
                source_filesystem=fs.LocalFileSystem(),
                destination_filesystem=self.out.filesystem,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._tmp)

    def discard(self) -> None:
        # The stream may be what failed (disk full): deleting the temporary is all that matters.
        with contextlib.suppress(Exception):
            self.stream.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._tmp)
