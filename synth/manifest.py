"""The synth manifest: one row per scan or body ever seen, with its status, reason and views written.

    pyarrow.parquet.read_table("runs/synth/manifest.parquet")

Rows are appended as atomically written part files under `{out}/manifest/` while the job runs (a killed
job keeps every finished subject) and merged into `{out}/manifest.parquet` at the end, keeping the
latest row per subject. Status: `done` (all views written), `rejected` (bad input, with the reason; the
same unchanged file is not retried), `failed` (an unexpected error; retried by the next run).
"""

from __future__ import annotations

import os
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from data_engine.manifest import write_table_atomic

SubjectStatus = Literal["done", "rejected", "failed"]
FINAL_STATUSES: tuple[str, ...] = ("done", "rejected")

SYNTH_MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("subject", pa.string(), nullable=False),  # shard prefix: scan-<sha256[:16]> or body-<seed>-<i>
        pa.field("kind", pa.string(), nullable=False),  # scan / body
        pa.field("uri", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string()),  # size:mtime of a scan file, to skip re-hashing unchanged files
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # why rejected or failed
        pa.field("warnings", pa.string()),  # e.g. a missing texture rendered flat
        pa.field("split", pa.string()),
        pa.field("views_requested", pa.int32()),
        pa.field("views_written", pa.int32()),
        pa.field("shards", pa.list_(pa.string())),
        pa.field("keys", pa.list_(pa.string())),
        pa.field("seconds", pa.float32()),
    ]
)
COLUMNS = tuple(SYNTH_MANIFEST_SCHEMA.names)


def to_table(rows: list[dict]) -> pa.Table:
    for row in rows:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown synth manifest columns {sorted(unknown)}")
        if row.get("status") not in ("done", "rejected", "failed"):
            raise ValueError(f"synth manifest row {row.get('subject')!r} has status {row.get('status')!r}")
    return pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=SYNTH_MANIFEST_SCHEMA)


class SynthManifestWriter:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        parts = [p for p in os.listdir(folder) if p.startswith("part-") and p.endswith(".parquet")]
        self.next_part = 1 + max((int(p[5:11]) for p in parts), default=-1)

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        write_table_atomic(to_table(rows), os.path.join(self.folder, f"part-{self.next_part:06d}.parquet"))
        self.next_part += 1


def read_rows(folder: str) -> list[dict]:
    """Every row of the part files, oldest first (empty when the folder does not exist yet)."""
    if not os.path.isdir(folder):
        return []
    parts = sorted(p for p in os.listdir(folder) if p.startswith("part-") and p.endswith(".parquet"))
    rows: list[dict] = []
    for part in parts:
        rows.extend(pq.read_table(os.path.join(folder, part), schema=SYNTH_MANIFEST_SCHEMA).to_pylist())
    return rows


def latest(rows: list[dict]) -> dict[str, dict]:
    """subject -> its latest row."""
    out: dict[str, dict] = {}
    for row in rows:
        out[row["subject"]] = row
    return out


def consolidate(folder: str, out_path: str) -> pa.Table:
    rows = list(latest(read_rows(folder)).values())
    table = to_table(rows)
    write_table_atomic(table, out_path)
    return table
