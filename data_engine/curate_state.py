"""The checkpoint files of `hv curate` under OUT/state, and the output folder's own checks (the resume rules
are in data_engine/curate.py's docstring)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from data_engine.config import ConfigError
from data_engine.manifest import write_table_atomic

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
    """The checkpoint files under DIR/state (layout in the module docstring)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.analysis = os.path.join(out, "state", "analysis")
        self.decisions = os.path.join(out, "state", "decisions")
        self.written = os.path.join(out, "state", "written")
        self.shards = os.path.join(out, "shards")
        for folder in (self.analysis, self.decisions, self.written, self.shards):
            os.makedirs(folder, exist_ok=True)

    @staticmethod
    def _parts(folder: str) -> list[str]:
        return sorted(os.path.join(folder, p) for p in os.listdir(folder) if p.endswith(".parquet") and p[0] != ".")

    def read(self, folder: str, schema: pa.Schema, columns: list[str] | None = None) -> Iterator[pa.Table]:
        for path in self._parts(folder):
            yield pq.read_table(path, schema=schema, columns=columns)

    def column(self, folder: str, schema: pa.Schema, name: str) -> list:
        return [v for t in self.read(folder, schema, [name]) for v in t.column(name).to_pylist()]

    def next_part(self, folder: str) -> str:
        numbers = [int(os.path.basename(p)[5:11]) for p in self._parts(folder) if os.path.basename(p)[:5] == "part-"]
        return os.path.join(folder, f"part-{max(numbers, default=-1) + 1:06d}.parquet")

    def append(self, folder: str, table: pa.Table) -> None:
        if table.num_rows:
            write_table_atomic(table, self.next_part(folder))

    def shard_part(self, shard_name: str) -> str:
        return os.path.join(self.written, shard_name.replace(".tar", ".parquet"))


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


def written_uris(state: State) -> set[str]:
    return set(state.column(state.written, WRITTEN_SCHEMA, "uri"))


def reconcile_shards(state: State, accepted_by_key: dict[str, str]) -> None:
    """A shard renamed just before a kill has no part in state/written: rebuild it from the tar's keys."""
    from data_engine.shards import iter_members

    for name in sorted(os.listdir(state.shards)):
        if not (name.startswith(f"{SHARD_PREFIX}-") and name.endswith(".tar")) or os.path.exists(
            state.shard_part(name)
        ):
            continue
        rows = []
        for members in iter_members(os.path.join(state.shards, name)):
            raw = members["__key__"]
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            uri = accepted_by_key.get(key)
            if uri is None:
                meta = json.loads(members["json"])
                uri = meta["source"]["uri"]
            rows.append({"uri": uri, "key": key, "shard": f"shards/{name}", "error": None})
        write_table_atomic(pa.Table.from_pylist(rows, schema=WRITTEN_SCHEMA), state.shard_part(name))


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def check_output_folder(out: str, create: bool) -> None:
    """Refuse an output folder that is a file or cannot be written, naming it (ConfigError: exit 2)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out}: is a file, not a folder")
    if not create:
        return
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):  # os.access says yes to root even on a read-only mount: try it
            pass
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e})") from None
