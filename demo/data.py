"""Data movement for the demo and the benchmarks: split synthetic shards by subject split, strip samples to
their images (unlabelled pretraining pools), export a few renders as files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from data_engine.shards import ShardWriter, iter_members

# The json keys an image-only sample keeps: what the image is, nothing about who or what is in it.
IMAGE_ONLY_META = ("schema_version", "source", "width", "height")


def split_by_meta(
    shard_dir: Path,
    out: Path,
    route: Callable[[dict[str, Any]], str] | None = None,
    image_only: Collection[str] = (),
) -> dict[str, int]:
    """Rewrite the samples of `shard_dir` into `out/<split>/` by their `json.split` (train / heldout), or by
    `route(json)` when given (e.g. a finer split by `json.synth.subject`).

    The synth stage decides the split per subject (no person in both); this only regroups the members,
    bytes unchanged, except in the splits named in `image_only`, whose samples keep only their image
    (`image_only_members`). Rebuilt from scratch each time, so a re-run after a kill gives the same result.
    """
    from data_engine.shards import expand

    if out.exists():
        shutil.rmtree(out)
    writers: dict[str, ShardWriter] = {}
    counts: dict[str, int] = {}
    try:
        for path in expand(str(shard_dir)):
            for members in iter_members(path):
                meta = json.loads(members["json"])
                split = route(meta) if route is not None else meta.get("split", "train")
                if split not in writers:
                    writers[split] = ShardWriter(str(out / split / "synth"), max_count=64)
                writers[split].write(image_only_members(members) if split in image_only else members)
                counts[split] = counts.get(split, 0) + 1
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.close()
    return counts


def image_only_members(members: dict[str, Any]) -> dict[str, Any]:
    """A sample's key, image (bytes unchanged) and a json of `IMAGE_ONLY_META` with no persons: what an
    unlabelled image pool holds. Every label member goes, and so do the json's split, subject, camera and
    person boxes (the pretraining loader would centre its crops on the boxes)."""
    ext = "jpg" if "jpg" in members else "png"
    meta = json.loads(members["json"])
    kept = {k: meta[k] for k in IMAGE_ONLY_META if k in meta}
    return {"__key__": members["__key__"], ext: members[ext], "json": json.dumps({**kept, "persons": []}).encode()}


def copy_image_only(shard_dir: Path, out: Path, prefix: str) -> int:
    """Every sample of `shard_dir` as `image_only_members` into `out/<prefix>-*.tar` (rebuilt from scratch);
    returns the count."""
    from data_engine.shards import expand

    if out.exists():
        shutil.rmtree(out)
    count = 0
    with ShardWriter(str(out / prefix), max_count=64) as writer:
        for path in expand(str(shard_dir)):
            for members in iter_members(path):
                writer.write(image_only_members(members))
                count += 1
    return count


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
