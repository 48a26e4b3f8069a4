"""Atomic WebDataset shard writing: `ShardWriter` streams samples into `{prefix}-{000000}.tar` shards.

Each shard is written to a hidden temporary beside its final name and renamed once complete (on an object store:
spooled locally and uploaded under its final name once complete, see data_engine/output_fs.py), so a killed job
never leaves a half shard under a final name; a writer restarted on the same folder deletes stale temporaries and
numbers its new shards after the existing complete ones.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from data_engine.output_fs import AtomicFile, OutputFS
from data_engine.sample import Sample, SampleError, encode
from data_engine.shard_paths import SHARD_NAME_RE, TMP_MARK, is_uri, local_path


@dataclass
class ShardInfo:
    path: str
    count: int
    bytes: int
    keys: list[str] = field(default_factory=list)


class ShardWriter:
    """Write samples into `{prefix}-{000000}.tar` shards, each closed at `max_count` samples or `max_bytes`.

    Each shard is streamed into `.{name}.tmp-{random}` beside its final name and renamed when complete (an object
    store gets it in one upload under its final name once complete).
    WebDataset's own ShardWriter is not used because on an exception it closes (and names) the partial
    shard, and it opens an empty shard before the first sample; `_TarStream` writes the same tar layout.

        with ShardWriter("out/curated", max_count=1000) as writer:
            shard_path = writer.write(sample)         # a Sample, or a dict of encoded members
        writer.shards  # -> [ShardInfo(path, count, bytes, keys), ...]

    On an exception inside the `with` block the current temporary is deleted and nothing is renamed.
    `on_shard` is called with each completed ShardInfo (for per-shard stats or manifests).
    `prefix` is a local path or a URI (s3://bucket/x/curated?endpoint_override=...), or, with `output`, a name
    inside that folder.
    """

    def __init__(
        self,
        prefix: str,
        max_count: int = 1000,
        max_bytes: int = 1 << 30,
        on_shard: Callable[[ShardInfo], None] | None = None,
        start_index: int | None = None,
        output: OutputFS | None = None,
    ) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be positive")
        # A local prefix names its shards as given (relative stays relative), anything else by its URI.
        self._local_prefix = None if output is not None or is_uri(prefix) else local_path(prefix)
        if output is None:
            output, prefix = _split_prefix(prefix)
        self.output = output
        self.base = prefix
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.on_shard = on_shard
        self.shards: list[ShardInfo] = []
        self._tar: Any = None
        self._file: AtomicFile | None = None
        self._current: ShardInfo | None = None
        self.output.makedirs()
        self.index = self._recover() if start_index is None else start_index

    # Restart: remove stale temporaries, continue numbering after the complete shards.
    def _recover(self) -> int:
        last = -1
        for name in self.output.list(""):
            if name.startswith(f".{self.base}-") and TMP_MARK in name:
                self.output.delete(name)
                continue
            m = SHARD_NAME_RE.match(name)
            if m and m.group("prefix") == self.base:
                last = max(last, int(m.group("num")))
        return last + 1

    def _name(self, index: int) -> str:
        return f"{self.base}-{index:06d}.tar"

    def _open(self) -> None:
        name = self._name(self.index)
        self._file = self.output.begin(name)
        self._tar = _TarStream(self._file.stream)
        path = f"{self._local_prefix}-{self.index:06d}.tar" if self._local_prefix else self.output.uri(name)
        self._current = ShardInfo(path=path, count=0, bytes=0)

    def write(self, sample: Sample | dict[str, Any]) -> str:
        """Encode (if a Sample) and append one sample; returns the final path of the shard it lands in.

        A dict of members needs `__key__` (str or bytes) and bytes per member name; `__url__` and other
        `__` entries are dropped (they describe where a sample was read from, not the sample).
        """
        members = encode(sample) if isinstance(sample, Sample) else sample
        if "__key__" not in members:
            raise SampleError("members need a __key__")
        key = members["__key__"]
        key = key.decode() if isinstance(key, bytes) else str(key)
        members = {k: v for k, v in members.items() if not k.startswith("__")}
        members["__key__"] = key
        if self._tar is None:
            self._open()
        assert self._current is not None
        size = self._tar.write(members)
        self._current.count += 1
        self._current.bytes += size
        self._current.keys.append(key)
        path = self._current.path
        if self._current.count >= self.max_count or self._current.bytes >= self.max_bytes:
            self._finish()
        return path

    def _finish(self) -> None:
        if self._tar is None:
            return
        assert self._current is not None and self._file is not None
        self._tar.close()  # closes the underlying stream too (and fails here if the last bytes cannot be written)
        self._file.commit()
        self.shards.append(self._current)
        info, self._current, self._tar, self._file = self._current, None, None, None
        self.index += 1
        if self.on_shard is not None:
            self.on_shard(info)

    def abort(self) -> None:
        """Drop the shard being written; complete shards stay."""
        if self._file is not None:
            self._file.discard()
        self._tar = self._file = self._current = None

    def close(self) -> list[ShardInfo]:
        self._finish()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _split_prefix(prefix: str) -> tuple[OutputFS, str]:
    """`folder/name` (or `scheme://bucket/folder/name?query`) -> (the folder, name)."""
    if is_uri(prefix):
        address, _, query = prefix.partition("?")
        folder, _, name = address.rpartition("/")
        return OutputFS.open(folder + (f"?{query}" if query else "")), name
    folder, name = os.path.split(local_path(prefix))
    return OutputFS.open(folder or "."), name


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o444, 0, "humanvision", "humanvision"
    return info


def sample_tar_bytes(key: str, sizes: dict[str, int]) -> int:
    """The bytes `_TarStream.write` adds for a sample whose members have these sizes (headers and padding
    included), without the data: what decides where a shard closes (`max_bytes`), known before reading a file."""
    total = 0
    for name, size in sizes.items():
        header = _member_info(f"{key}.{name}", size).tobuf(tarfile.DEFAULT_FORMAT, tarfile.ENCODING, "surrogateescape")
        total += len(header) + -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return total


class _TarStream:
    """WebDataset's tar layout (one regular file `{key}.{member}` per member, samples in order) on tarfile
    alone. webdataset's own TarWriter would do, but importing webdataset imports torch: 1-2 s that every
    curation and render job paid when its first shard opened. Fixed mtime and owner, so the same samples
    give the same bytes."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._tar = tarfile.open(fileobj=stream, mode="w")  # noqa: SIM115 (closed in close())

    def write(self, members: dict[str, Any]) -> int:
        """Append one sample; returns the bytes it added to the archive (headers and padding included)."""
        key = members["__key__"]
        start = self._tar.offset
        for name, data in members.items():
            if name.startswith("__"):
                continue
            if isinstance(data, str):
                data = data.encode("utf-8")
            elif not isinstance(data, (bytes, bytearray, memoryview)):
                raise SampleError(f"{key}: member {name!r} is {type(data).__name__}, expected bytes")
            self._tar.addfile(_member_info(f"{key}.{name}", len(data)), io.BytesIO(data))
        return self._tar.offset - start

    def close(self) -> None:
        try:
            self._tar.close()  # the end-of-archive blocks
        finally:
            self._stream.close()
