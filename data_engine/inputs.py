"""Expand the INPUT arguments of `hv curate` into a stream of image URIs (a generator: nothing is listed twice
and nothing is held beyond the current folder or list batch).

- a folder: every file below it (recursive, symbolic links to folders not followed, so a link loop cannot
  recurse) whose extension is in `decode.extensions`; the others are counted (`ListingStats`, then
  `skipped_by_extension` in stats.json), so every file under a folder is accounted for;
- a glob pattern (`photos/**/*.jpg`, `s3://bucket/raw/*.png`): every file it matches, whatever its extension;
- a list file (`.txt`: one URI per line, `#` comments; `.csv` / `.parquet`: the `uri_column` column): every
  URI it names, even missing ones (they become manifest rows with reason `missing`). Relative paths in a
  local list file are relative to the list file's folder;
- anything else: that one file.

Local paths become absolute (so a re-run from another folder matches the manifest); URIs that `pyarrow.fs`
understands (s3://, gs://, hdfs://, file://) are listed through it.
A command-line INPUT that does not exist, or a glob that matches nothing, is an error at start-up.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

LIST_SUFFIXES = (".txt", ".csv", ".parquet")
_GLOB_CHARS = "*?["


class InputError(ValueError):
    """An INPUT argument that names nothing, or a list file without the URI column (message names it)."""


@dataclass
class ListingStats:
    """What expanding the INPUTs left out on purpose (filled in while `iter_uris` is consumed)."""

    skipped_by_extension: int = 0  # files under an input folder whose extension is not in decode.extensions


def is_uri(path: str) -> bool:
    return "://" in path


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in _GLOB_CHARS)


def check_inputs(inputs: list[str]) -> None:
    """Fail fast, before any work starts, on an INPUT that names nothing."""
    for item in inputs:
        if is_uri(item):
            continue  # remote listing may be slow; a URI that names nothing fails when expanded
        if _has_glob(item):
            if not any(True for _ in glob.iglob(item, recursive=True)):
                raise InputError(f"input {item!r}: the pattern matches nothing")
        elif not os.path.lexists(item):
            raise InputError(f"input {item!r}: no such file or folder")


def iter_uris(
    inputs: list[str], extensions: list[str], uri_column: str = "uri", listing: ListingStats | None = None
) -> Iterator[str]:
    """Every image URI named by `inputs`, in a stable order; `listing` counts what folders skip.

    A URI named twice (a folder and a list file that both name it) comes twice: remembering every URI would grow
    with the inputs, so `hv curate` drops the repeats on the cluster (data_engine/curate_join.ListedFilter).
    """
    exts = tuple(e.lower() for e in extensions)
    listing = listing if listing is not None else ListingStats()
    for item in inputs:
        yield from _expand_one(item, exts, uri_column, listing)


def _expand_one(item: str, exts: tuple[str, ...], uri_column: str, listing: ListingStats) -> Iterator[str]:
    if is_uri(item):
        yield from _expand_remote(item, exts, uri_column, listing)
        return
    if _has_glob(item):
        for match in sorted(glob.iglob(item, recursive=True)):
            if os.path.isdir(match) and not os.path.islink(match):
                yield from _walk(match, exts, listing)
            else:
                yield os.path.abspath(match)
        return
    if os.path.isdir(item):
        yield from _walk(item, exts, listing)
    elif item.lower().endswith(LIST_SUFFIXES) and os.path.isfile(item):
        base = os.path.dirname(os.path.abspath(item))
        with open(item, "rb") as f:
            for entry in _read_list(f, item, uri_column):
                yield entry if is_uri(entry) or os.path.isabs(entry) else os.path.normpath(os.path.join(base, entry))
    else:
        yield os.path.abspath(item)


def _walk(folder: str, exts: tuple[str, ...], listing: ListingStats) -> Iterator[str]:
    for root, dirs, files in os.walk(os.path.abspath(folder), followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(exts):
                yield os.path.join(root, name)
            else:
                listing.skipped_by_extension += 1


def _read_list(stream, name: str, uri_column: str) -> Iterator[str]:
    lower = name.lower()
    if lower.endswith(".txt"):
        for line in io.TextIOWrapper(stream, encoding="utf-8"):
            entry = line.strip()
            if entry and not entry.startswith("#"):
                yield entry
    elif lower.endswith(".csv"):
        reader = csv.DictReader(io.TextIOWrapper(stream, encoding="utf-8", newline=""))
        if reader.fieldnames is None or uri_column not in reader.fieldnames:
            raise InputError(f"list file {name!r} has no {uri_column!r} column (columns: {reader.fieldnames})")
        for record in reader:
            entry = (record.get(uri_column) or "").strip()
            if entry:
                yield entry
    else:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(stream)
        except Exception as e:
            raise InputError(f"list file {name!r} is not a readable Parquet file ({e})") from None
        if uri_column not in parquet.schema_arrow.names:
            raise InputError(f"list file {name!r} has no {uri_column!r} column (columns: {parquet.schema_arrow.names})")
        for batch in parquet.iter_batches(columns=[uri_column], batch_size=10_000):
            for entry in batch.column(0).to_pylist():
                if entry:
                    yield str(entry).strip()


def _expand_remote(item: str, exts: tuple[str, ...], uri_column: str, listing: ListingStats) -> Iterator[str]:
    from pyarrow import fs

    # For a glob, open the folder before its first wildcard and list it recursively.
    first_wildcard = min((item.find(c) for c in _GLOB_CHARS if c in item), default=len(item))
    head = item if first_wildcard == len(item) else item[: item.rfind("/", 0, first_wildcard) + 1]
    try:
        filesystem, inner = fs.FileSystem.from_uri(head)
    except Exception as e:
        raise InputError(f"input {item!r}: pyarrow.fs cannot open it ({e})") from None
    scheme = item.split("://", 1)[0]

    def to_uri(path: str) -> str:
        return f"{scheme}://{path}" if scheme != "file" else f"file://{path}"

    if _has_glob(item):
        pattern = item.split("://", 1)[1]
        base = inner.rstrip("/")
        selector = fs.FileSelector(base, recursive=True, allow_not_found=True)
        found = False
        for info in sorted(filesystem.get_file_info(selector), key=lambda i: i.path):
            if info.type == fs.FileType.File and fnmatch.fnmatch(info.path, pattern):
                found = True
                yield to_uri(info.path)
        if not found:
            raise InputError(f"input {item!r}: the pattern matches nothing")
        return
    info = filesystem.get_file_info(inner)
    if info.type == fs.FileType.NotFound:
        raise InputError(f"input {item!r}: no such file or folder")
    if info.type == fs.FileType.Directory:
        selector = fs.FileSelector(inner, recursive=True)
        for entry in sorted(filesystem.get_file_info(selector), key=lambda i: i.path):
            if entry.type != fs.FileType.File:
                continue
            if entry.base_name.lower().endswith(exts):
                yield to_uri(entry.path)
            else:
                listing.skipped_by_extension += 1
    elif item.lower().endswith(LIST_SUFFIXES):
        base = item.rsplit("/", 1)[0]
        with filesystem.open_input_file(inner) as stream:
            for entry in _read_list(stream, item, uri_column):
                yield entry if is_uri(entry) or entry.startswith("/") else f"{base}/{entry}"
    else:
        yield item
