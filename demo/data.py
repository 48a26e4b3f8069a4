"""Data movement for the demo: split synthetic shards by subject split, export a few renders as files."""

from __future__ import annotations

import shutil
from pathlib import Path

from data_engine.shards import ShardWriter, iter_members


def split_by_meta(shard_dir: Path, out: Path) -> dict[str, int]:
    """Rewrite the samples of `shard_dir` into `out/<split>/` by their `json.split` (train / heldout).

    The synth stage decides the split per subject (no person in both); this only regroups the members,
    bytes unchanged. Rebuilt from scratch each time, so a re-run after a kill gives the same result.
    """
    import json

    from data_engine.shards import expand

    if out.exists():
        shutil.rmtree(out)
    writers: dict[str, ShardWriter] = {}
    counts: dict[str, int] = {}
    try:
        for path in expand(str(shard_dir)):
            for members in iter_members(path):
                split = json.loads(members["json"]).get("split", "train")
                if split not in writers:
                    writers[split] = ShardWriter(str(out / split / "synth"), max_count=64)
                writers[split].write(members)
                counts[split] = counts.get(split, 0) + 1
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.close()
    return counts


def export_renders(shard_dir: Path, folder: Path, count: int) -> list[Path]:
    """The first `count` rendered images of `shard_dir` as files (the image member's bytes, unchanged)."""
    from data_engine.shards import expand

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    written: list[Path] = []
    for path in expand(str(shard_dir)):
        for members in iter_members(path):
            ext = "jpg" if "jpg" in members else "png"
            target = folder / f"{members['__key__']}.{ext}"
            target.write_bytes(members[ext])
            written.append(target)
            if len(written) >= count:
                return written
    return written
