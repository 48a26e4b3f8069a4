"""The checkpoint files of `hv curate` under OUT/state, and the output folder's own checks (the resume rules
are in data_engine/curate.py's docstring)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa

from data_engine.config import ConfigError
from data_engine.output_fs import OutputFS, OutputFSError

SHARD_PREFIX = "curated"
DECISION_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("duplicate_of", pa.string()),
    ]
)
WRITTEN_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("shard", pa.string()),  # relative to the output folder; null when `error` is set
        pa.field("error", pa.string()),
    ]
)
KILL_ENV = "HV_CURATE_KILL_AT"  # fault injection for tests: "<point>:<n>" sends SIGKILL to this process
HOLD_ENV = "HV_CURATE_HOLD_AT"  # for tests: "<point>:<file>" waits at <point> until <file> exists (a live job)


class State:
    """The checkpoint files under DIR/state (layout in data_engine/curate.py's docstring), on a local folder or an
    object store: folders are '/'-separated paths relative to DIR, every file written whole or not at all."""

    analysis = "state/analysis"
    decisions = "state/decisions"
    written = "state/written"
    shards = "shards"

    def __init__(self, out: OutputFS) -> None:
        self.out = out
        for folder in (self.analysis, self.decisions, self.written, self.shards):
            out.makedirs(folder)

    def parts(self, folder: str) -> list[str]:
        return [f"{folder}/{p}" for p in self.out.list(folder) if p.endswith(".parquet") and p[0] != "."]

    def read(self, folder: str, schema: pa.Schema, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for path in self.parts(folder):
            yield self.out.read_table(path, schema=schema, columns=columns)

    def column(self, folder: str, schema: pa.Schema, name: str) -> list:
        return [v for t in self.read(folder, schema, [name]) for v in t.column(name).to_pylist()]

    def next_part(self, folder: str) -> str:
        names = [os.path.basename(p) for p in self.parts(folder)]
        numbers = [int(n[5:11]) for n in names if n[:5] == "part-"]
        return f"{folder}/part-{max(numbers, default=-1) + 1:06d}.parquet"

    def append(self, folder: str, table: pa.Table) -> None:
        if table.num_rows:
            self.out.write_table(self.next_part(folder), table)

    def shard_part(self, shard_name: str) -> str:
        return f"{self.written}/{shard_name.replace('.tar', '.parquet')}"

    def shard_names(self) -> list[str]:
        """The complete shards (temporaries are hidden names)."""
        return [n for n in self.out.list(self.shards) if n.startswith(f"{SHARD_PREFIX}-") and n.endswith(".tar")]


def maybe_kill(point: str, counters: Counter) -> None:
    spec = os.environ.get(KILL_ENV, "")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name == point:
        counters[point] += 1
        if counters[point] >= int(n or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def maybe_hold(point: str) -> None:
    name, _, release = os.environ.get(HOLD_ENV, "").partition(":")
    if name == point and release:
        while not os.path.exists(release):
            time.sleep(0.05)


def missing_shard_parts(state: State) -> list[str]:
    """The complete shards without a part in state/written: committed just before a kill."""
    return [name for name in state.shard_names() if not state.out.exists(state.shard_part(name))]


def reconcile_shard(state: State, name: str) -> None:
    """Rebuild the state/written part of the shard `name` from its tar: each sample's key, and its input's URI from
    the sample's own `json` (`source.uri`, the analysis row's URI)."""
    from data_engine.shards import iter_members

    rows = []
    for members in iter_members(state.out.uri(f"{state.shards}/{name}")):
        raw = members["__key__"]
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        uri = json.loads(members["json"])["source"]["uri"]
        rows.append({"uri": uri, "key": key, "shard": f"shards/{name}", "error": None})
    state.out.write_table(state.shard_part(name), pa.Table.from_pylist(rows, schema=WRITTEN_SCHEMA))


def check_output_folder(out: OutputFS, create: bool) -> None:
    """Refuse an output folder that is a file, cannot be reached or written, or names a missing bucket (ConfigError:
    exit 2), naming it."""
    try:
        out.check(create)
    except OutputFSError as e:
        raise ConfigError(f"--out {e}") from None
