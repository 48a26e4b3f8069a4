"""WebDataset shards: atomic writing, streaming reading with an explicit bad-sample policy.

A shard is `{prefix}-{000000}.tar`. The writer streams members into a hidden temporary file beside it
and renames it to the final name only once it is complete, so a killed job never leaves a half shard
under a final name; a writer restarted on the same folder deletes stale temporaries and numbers its new
shards after the existing complete ones.

Paths are local paths or any URI that `pyarrow.fs` understands (s3://, gs://, file://).
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import tarfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from data_engine.sample import Sample, SampleError, decode, encode


class BadSamplePolicy(str, Enum):
    """What a reader does with a bad sample or a broken shard: the one type of every stage's `bad_samples` setting.

    A str Enum: the plain strings "skip" and "raise" compare equal to its members, and YAML values load into it.
    """

    skip = "skip"  # record it (shard, key, reason) in the read report and go on
    raise_ = "raise"  # stop at the first one, naming it


_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<num>\d{6})\.tar$")
_TMP_MARK = ".tmp-"
# The largest member a reader accepts: the largest image curation accepts (89.5 MP, RGB PNG) is 270 MB uncompressed.
MAX_MEMBER_BYTES = 320 << 20


# ------------------------------------------------------------------------------------------- file systems


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _fs(path: str):
    """(pyarrow FileSystem, path inside it) for a URI."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(path)


def open_input(path: str):
    """A binary stream for reading a local path or a pyarrow.fs URI."""
    if _is_uri(path):
        filesystem, inner = _fs(path)
        return filesystem.open_input_stream(inner)
    return open(_local(path), "rb")


def expand(patterns: str | Iterable[str]) -> list[str]:
    """Expand shard paths: files, folders (every *.tar inside, sorted), and glob patterns; URIs included.

    Raises FileNotFoundError naming a pattern that matches nothing.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for pattern in patterns:
        if _is_uri(pattern):
            out.extend(_expand_uri(pattern))
            continue
        pattern = _local(pattern)
        if os.path.isdir(pattern):
            matches = sorted(glob.glob(os.path.join(pattern, "**", "*.tar"), recursive=True))
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern, recursive=True))
        else:
            matches = [pattern] if os.path.exists(pattern) else []
        matches = [m for m in matches if _TMP_MARK not in os.path.basename(m)]
        if not matches:
            raise FileNotFoundError(f"no shards match {pattern!r}")
        out.extend(matches)
    return out


def _expand_uri(pattern: str) -> list[str]:
    import fnmatch

    from pyarrow import fs

    filesystem, inner = _fs(pattern)
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


# ------------------------------------------------------------------------------------------------ writing


@dataclass
class ShardInfo:
    path: str
    count: int
    bytes: int
    keys: list[str] = field(default_factory=list)


class ShardWriter:
    """Write samples into `{prefix}-{000000}.tar` shards, each closed at `max_count` samples or `max_bytes`.

    Each shard is streamed into `.{name}.tmp-{random}` beside its final name and renamed when complete.
    WebDataset's own ShardWriter is not used because on an exception it closes (and names) the partial
    shard, and it opens an empty shard before the first sample; `_TarStream` writes the same tar layout.

        with ShardWriter("out/curated", max_count=1000) as writer:
            shard_path = writer.write(sample)         # a Sample, or a dict of encoded members
        writer.shards  # -> [ShardInfo(path, count, bytes, keys), ...]

    On an exception inside the `with` block the current temporary is deleted and nothing is renamed.
    `on_shard` is called with each completed ShardInfo (for per-shard stats or manifests).
    """

    def __init__(
        self,
        prefix: str,
        max_count: int = 1000,
        max_bytes: int = 1 << 30,
        on_shard: Callable[[ShardInfo], None] | None = None,
        start_index: int | None = None,
    ) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be positive")
        self.prefix = _local(prefix)
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.on_shard = on_shard
        self.shards: list[ShardInfo] = []
        self._remote = _is_uri(self.prefix)
        self._tar: Any = None
        self._stream: Any = None
        self._tmp_path = ""
        self._current: ShardInfo | None = None
        if self._remote:
            self._filesystem, self._inner_prefix = _fs(self.prefix)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(self.prefix)), exist_ok=True)
        self.index = self._recover() if start_index is None else start_index

    # Restart: remove stale temporaries, continue numbering after the complete shards.
    def _recover(self) -> int:
        if self._remote:
            return self._recover_remote()
        folder = os.path.dirname(os.path.abspath(self.prefix))
        base = os.path.basename(self.prefix)
        last = -1
        for name in os.listdir(folder):
            if name.startswith(f".{base}-") and _TMP_MARK in name:
                os.remove(os.path.join(folder, name))
                continue
            m = _SHARD_RE.match(name)
            if m and m.group("prefix") == base:
                last = max(last, int(m.group("num")))
        return last + 1

    def _recover_remote(self) -> int:
        from pyarrow import fs

        folder, base = self._inner_prefix.rsplit("/", 1)
        last = -1
        infos = self._filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
        for info in infos:
            name = info.base_name
            if name.startswith(f".{base}-") and _TMP_MARK in name:
                self._filesystem.delete_file(info.path)
                continue
            m = _SHARD_RE.match(name)
            if m and m.group("prefix") == base:
                last = max(last, int(m.group("num")))
        return last + 1

    def _final_path(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def _open(self) -> None:
        final = self._final_path(self.index)
        folder, name = os.path.split(final)
        self._tmp_path = os.path.join(folder, f".{name}{_TMP_MARK}{uuid.uuid4().hex[:8]}")
        if self._remote:
            self._stream = self._filesystem.open_output_stream(_fs(self._tmp_path)[1])
        else:
            self._stream = open(self._tmp_path, "wb")  # noqa: SIM115 (closed by _finish or abort)
        self._tar = _TarStream(self._stream)
        self._current = ShardInfo(path=final, count=0, bytes=0)

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
        assert self._current is not None
        self._tar.close()  # closes the underlying stream too (and fails here if the last bytes cannot be written)
        if self._remote:
            self._filesystem.move(_fs(self._tmp_path)[1], _fs(self._current.path)[1])
        else:
            with open(self._tmp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp_path, self._current.path)
        self.shards.append(self._current)
        info, self._current, self._tar, self._stream = self._current, None, None, None
        self.index += 1
        if self.on_shard is not None:
            self.on_shard(info)

    def abort(self) -> None:
        """Drop the shard being written; complete shards stay."""
        if self._tar is None:
            return
        # The stream may be what failed (disk full): deleting the temporary is all that matters.
        with contextlib.suppress(Exception):
            self._tar.close()
        if self._remote:
            self._filesystem.delete_file(_fs(self._tmp_path)[1])
        elif os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)
        self._tar = self._stream = self._current = None

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
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mode, info.mtime, info.uname, info.gname = len(data), 0o444, 0, "humanvision", "humanvision"
            self._tar.addfile(info, io.BytesIO(data))
        return self._tar.offset - start

    def close(self) -> None:
        try:
            self._tar.close()  # the end-of-archive blocks
        finally:
            self._stream.close()


# ------------------------------------------------------------------------------------------------ reading


class ShardError(IOError):
    """A shard that cannot be read as a tar (truncated, corrupt, missing). The message names it."""


@dataclass
class BadSample:
    shard: str
    key: str | None  # None when the shard itself broke before a key could be read
    reason: str
    seen: int = 1  # times a report met it: a training stream reads its shards once per epoch


@dataclass
class ReadReport:
    """What a read saw: good samples counted, bad ones listed once each with key, reason and times seen."""

    samples: int = 0
    bad: list[BadSample] = field(default_factory=list)
    # Called with each bad sample when first found, for readers that log as they go (a training data slot).
    on_bad: Callable[[BadSample], None] | None = None
    _listed: dict[tuple[str, str], BadSample] = field(default_factory=dict, repr=False)

    def record(self, bad: BadSample) -> None:
        # A sample is its (shard, key); a broken shard, its reason. Not (shard, key, reason): a codec's message
        # may differ between reads (Pillow names the address of the buffer it was given).
        identity = (bad.shard, bad.key if bad.key is not None else bad.reason)
        listed = self._listed.get(identity)
        if listed is not None:  # read again (a later epoch): counted, not listed twice
            listed.seen += bad.seen
            return
        self._listed[identity] = bad
        self.bad.append(bad)
        if self.on_bad is not None:
            self.on_bad(bad)

    def summary(self) -> str:
        return f"{self.samples} samples read, {len(self.bad)} bad"


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the basename."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def iter_members(path: str, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict[str, Any]]:
    """Stream one shard's samples as dicts of raw bytes per member, with `__key__` and `__url__` as str
    (the same dicts `webdataset.WebDataset` yields).

    A GNU sparse member (a few KB that expand to any size) or one above `max_member_bytes` is never read:
    its sample carries `__error__` with the reason, which `sample.decode` raises as a SampleError naming the key.

    Raises ShardError naming the shard if it is missing, truncated or not a tar.
    """
    current: dict[str, Any] = {}
    current_key: str | None = None
    try:
        with open_input(path) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _split_name(info.name)
                if key.startswith("__") or not ext:
                    continue
                refused = _refusal(info, max_member_bytes)
                data = b""
                if refused is None:
                    f = tar.extractfile(info)
                    data = f.read() if f is not None else b""
                if key != current_key or ext in current:  # a member met twice in a row starts a second copy
                    if current_key is not None:
                        yield current
                    current_key, current = key, {"__key__": key, "__url__": path}
                current[ext] = data
                if refused is not None:  # the sample is kept, unread, so that its readers report it by key
                    current.setdefault("__error__", f"member {ext}: {refused}")
    except Exception as e:  # tarfile raises several types for truncated/corrupt input: report them as one
        raise ShardError(f"{path}: not a readable tar shard ({type(e).__name__}: {e})") from e
    if not _has_end_marker(path):
        # tarfile's stream mode ends quietly when a file is cut at a header boundary; the last sample may
        # then be incomplete and everything after the cut is gone. Say so instead of yielding it.
        raise ShardError(f"{path}: truncated tar shard (no end-of-archive marker after {current_key!r})")
    if current_key is not None:
        yield current


def _refusal(info: tarfile.TarInfo, max_member_bytes: int) -> str | None:
    """Why a member is not read, or None. `size` of a sparse member is its stored data; reading it expands
    the holes to the declared size, so sparse members are refused whatever they declare."""
    if info.issparse():
        return "GNU sparse tar member refused (a shard writer never makes one; reading it expands the holes)"
    if info.size > max_member_bytes:
        return f"{info.size} bytes, over the member size cap of {max_member_bytes} (max_member_bytes)"
    return None


def _has_end_marker(path: str) -> bool:
    """A complete tar ends with two zero 512-byte blocks (and is a whole number of blocks long)."""
    if _is_uri(path):
        filesystem, inner = _fs(path)
        size = filesystem.get_file_info(inner).size or 0
        opener = lambda: filesystem.open_input_file(inner)  # noqa: E731
    else:
        size = os.path.getsize(_local(path))
        opener = lambda: open(_local(path), "rb")  # noqa: E731, SIM115 (used in a with block below)
    if size < 1024 or size % 512:
        return False
    with opener() as f:
        f.seek(size - 1024)
        return not any(f.read(1024))


def iter_samples(
    paths: str | Iterable[str],
    policy: BadSamplePolicy | str = BadSamplePolicy.raise_,
    report: ReadReport | None = None,
    decoder: Callable[[dict[str, Any]], Any] = decode,
    select: Callable[[int], bool] | None = None,
    unique_keys: bool = True,
) -> Iterator[Any]:
    """Yield decoded samples from shards.

    policy "raise": the first bad sample or broken shard raises (SampleError / ShardError, naming it).
    policy "skip": bad samples and broken shards are recorded in `report.bad` (shard, key, reason) and
    skipped; the samples before a truncation point are still yielded. Nothing is dropped silently.
    select: keep only the samples whose running index over all `paths` it accepts, decided before decoding
    (e.g. `lambda i: i % workers == worker` splits one stream between loader workers).
    unique_keys: a key met again in this call is a bad sample ("duplicate key", the first one is kept), so an
    eval never scores a sample twice and an epoch never trains on one twice. Every key of the call is kept in
    a set (before `select`, so split readers agree on which copy is first; the reader owning the copy reports
    it); `hv shards inspect` checks a whole shard set, which a reader only sees part of.
    """
    policy = BadSamplePolicy(policy)  # a misspelt policy fails here, not by silently acting as "skip"
    report = report if report is not None else ReadReport()
    first_shard: dict[str, str] = {}
    index = -1
    for path in expand(paths):
        members_iter = iter_members(path)
        while True:
            try:
                members = next(members_iter)
            except StopIteration:
                break
            except ShardError as e:
                if policy == BadSamplePolicy.raise_:
                    raise
                report.record(BadSample(shard=path, key=None, reason=str(e)))
                break
            index += 1
            key = members["__key__"]
            duplicate_of = first_shard.get(key) if unique_keys else None
            if unique_keys and duplicate_of is None:
                first_shard[key] = path
            if select is not None and not select(index):
                continue
            if duplicate_of is not None:
                reason = f"{key}: duplicate key (first read from {duplicate_of}); this copy is not used"
                if policy == BadSamplePolicy.raise_:
                    raise SampleError(f"{path}: {reason}")
                report.record(BadSample(shard=path, key=key, reason=reason))
                continue
            try:
                sample = decoder(members)
            except SampleError as e:
                if policy == BadSamplePolicy.raise_:
                    raise SampleError(f"{path}: {e}") from None
                report.record(BadSample(shard=path, key=key, reason=str(e)))
                continue
            report.samples += 1
            yield sample
