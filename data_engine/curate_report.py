"""The end of a `hv curate` run: the summary it prints, and the in-driver manifest join (the reference for the
cluster one, data_engine/curate_join.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow.parquet as pq

from data_engine import manifest as manifest_lib
from data_engine.analysis import ANALYSIS_SCHEMA
from data_engine.curate_state import DECISION_SCHEMA, WRITTEN_SCHEMA, State
from data_engine.decode import reason_code
from data_engine.manifest import MANIFEST_SCHEMA


def build_manifest(state: State, rel: str) -> dict[str, Any]:
    """Join analysis, decisions and shards into `rel` (manifest.parquet under the output folder; streamed, written
    whole or not at all); returns the counts. Every URI's decision and shard in memory: how `hv curate` built the
    manifest before data_engine/curate_join.manifest_on_cluster, kept as the reference its tests compare with."""
    decisions: dict[str, tuple[str, str | None, str | None]] = {}
    for t in state.read(state.decisions, DECISION_SCHEMA):
        for r in t.to_pylist():
            decisions[r["uri"]] = (r["status"], r["reason"], r["duplicate_of"])
    written: dict[str, tuple[str | None, str | None]] = {}
    for t in state.read(state.written, WRITTEN_SCHEMA):
        for r in t.to_pylist():
            written[r["uri"]] = (r["shard"], r["error"])
    by_status: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    undecided = 0
    seen: set[str] = set()
    with state.out.open_atomic(rel) as stream, pq.ParquetWriter(stream, MANIFEST_SCHEMA) as writer:
        for table in state.read(state.analysis, ANALYSIS_SCHEMA):
            rows = []
            for r in table.to_pylist():
                if r["uri"] in seen:
                    continue
                seen.add(r["uri"])
                decision = decisions.get(r["uri"])
                shard, error = written.get(r["uri"], (None, None))
                if decision is None or (decision[0] == "accepted" and shard is None and error is None):
                    undecided += 1
                    continue
                status, reason, duplicate_of = decision
                if error is not None:
                    status, reason = "rejected", error
                row = {c: r.get(c) for c in manifest_lib.COLUMNS if c in r}
                row.update(status=status, reason=reason, duplicate_of=duplicate_of, shard=shard)
                rows.append(row)
                by_status[status] += 1
                if reason is not None:
                    by_reason[reason_code(reason)] += 1
            if rows:
                writer.write_table(manifest_lib.to_table(rows))
    return {"status": dict(by_status), "reason": dict(sorted(by_reason.items())), "unfinished": undecided}


def summary_text(stats: dict[str, Any], out: str) -> str:
    s, run = stats["status"], stats["this_run"]
    if run["new_inputs"]:
        what = f" ({run['images_per_s']:.1f} images/s)"
    elif run["written"]:
        what = " (resumed: wrote the samples an earlier run had analysed but not yet written)"
    else:
        what = " (nothing new: report only)"
    lines = [
        f"curated {stats['inputs']} inputs into {out}: {s['accepted']} accepted, {s['rejected']} rejected, "
        f"{s['duplicate']} duplicate; {stats['shards']} shards"
        + (f"; {stats['skipped_by_extension']} files skipped by extension" if stats["skipped_by_extension"] else ""),
        f"this run: {run['new_inputs']} new inputs, {run['written']} samples written, {run['seconds']:.1f} s" + what,
    ]
    if stats["reason"]:
        top = sorted(stats["reason"].items(), key=lambda kv: -kv[1])
        lines.append("reasons: " + ", ".join(f"{k} {v}" for k, v in top))
    return "\n".join(lines)
