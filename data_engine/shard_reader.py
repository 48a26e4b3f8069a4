"""Streaming WebDataset shard reading with an explicit bad-sample policy: `iter_members` (raw bytes per member)
and `iter_samples` (decoded samples, bad ones raised or counted in a `ReadReport`, never dropped silently).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from data_engine.sample import SampleError, decode
from data_engine.shard_paths import expand, is_uri, local_path, open_input, split_uri


class BadSamplePolicy(str, Enum):
    """What a reader does with a bad sample or a broken shard: the one type of every stage's `bad_samples` setting.

    A str Enum: the plain strings "skip" and "raise" compare equal to its members, and YAML values load into it.
    """

    skip = "skip"  # record it (shard, key, reason) in the read report and go on
    raise_ = "raise"  # stop at the first one, naming it


# The largest member a reader accepts: the largest image curation accepts (89.5 MP, RGB PNG) is 270 MB uncompressed.
MAX_MEMBER_BYTES = 320 << 20


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
    if is_uri(path):
        filesystem, inner = split_uri(path)
        size = filesystem.get_file_info(inner).size or 0
        opener = lambda: filesystem.open_input_file(inner)  # noqa: E731
    else:
        size = os.path.getsize(local_path(path))
        opener = lambda: open(local_path(path), "rb")  # noqa: E731, SIM115 (used in a with block below)
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
