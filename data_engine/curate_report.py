"""The end of a `hv curate` run: the summary it prints."""

from __future__ import annotations

from typing import Any


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
