"""The Parquet manifest: one row per input ever seen, with its status and reason.

`accepted + rejected + duplicate == inputs`, always. Parquet files cannot be appended to, so a job
writes its rows as numbered part files (`{dir}/part-000000.parquet`, each written atomically) while it
runs, and `consolidate` merges them into the single `manifest.parquet` readable with
`pyarrow.parquet.read_table(path)`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

Status = Literal["accepted", "rejected", "duplicate"]
STATUSES: tuple[Status, ...] = ("accepted", "rejected", "duplicate")

# One schema for every manifest. Quality and detector figures are null where a stage did not run
# (a file that failed to decode has no blur figure).
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("key", pa.string()),  # null when the bytes could not be read at all
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # null for accepted rows
        pa.field("duplicate_of", pa.string()),  # key of the kept sample, for duplicates
        pa.field("shard", pa.string()),  # shard path, for accepted rows
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bytes", pa.int64()),
        pa.field("phash", pa.string()),  # 64-bit perceptual hash, 16 hex digits
        pa.field("blur", pa.float32()),  # variance of the Laplacian
        pa.field("clipped", pa.float32()),  # fraction of pixels at 0 or 255
        pa.field("contrast", pa.float32()),  # grey-level standard deviation
        pa.field("detector", pa.string()),
        pa.field("num_persons", pa.int32()),
        pa.field("person_score", pa.float32()),  # best person score
        pa.field("person_height", pa.float32()),  # tallest qualifying box, pixels
    ]
)
COLUMNS: tuple[str, ...] = tuple(MANIFEST_SCHEMA.names)


def to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) -> a table of MANIFEST_SCHEMA. Missing columns are null; unknown keys are an error."""
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown manifest columns {sorted(unknown)}; the schema has {list(COLUMNS)}")
        if row.get("status") not in STATUSES:
            raise ValueError(f"manifest row for {row.get('uri')!r} has status {row.get('status')!r}, not {STATUSES}")
    return pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=MANIFEST_SCHEMA)


def write_table_atomic(table: pa.Table, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class ManifestWriter:
    """Append manifest rows as atomically written part files under `folder`.

    A restarted writer continues the part numbering; rows already written stay.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        parts = [p for p in os.listdir(folder) if p.startswith("part-") and p.endswith(".parquet")]
        self.next_part = 1 + max((int(p[5:11]) for p in parts), default=-1)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> str | None:
        table = to_table(rows)
        if table.num_rows == 0:
            return None
        path = os.path.join(self.folder, f"part-{self.next_part:06d}.parquet")
        write_table_atomic(table, path)
        self.next_part += 1
        return path


def read_manifest(path: str) -> pa.Table:
    """Read `manifest.parquet` or a folder of part files as one table of MANIFEST_SCHEMA."""
    if os.path.isdir(path):
        parts = sorted(
            os.path.join(path, p) for p in os.listdir(path) if p.startswith("part-") and p.endswith(".parquet")
        )
        if not parts:
            return MANIFEST_SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(p, schema=MANIFEST_SCHEMA) for p in parts])
    if not os.path.exists(path):
        raise FileNotFoundError(f"no manifest at {path}")
    return pq.read_table(path, schema=MANIFEST_SCHEMA)


def consolidate(parts_folder: str, out_path: str) -> pa.Table:
    """Merge part files into one Parquet file (atomically) and return the table."""
    table = read_manifest(parts_folder)
    write_table_atomic(table, out_path)
    return table


def status_counts(table: pa.Table) -> dict[str, int]:
    counts = {s: 0 for s in STATUSES}
    for status in table.column("status").to_pylist():
        counts[status] += 1
    return counts
