"""The write phase on Ray (data_engine/curate_write.py): the planner cuts shards exactly where the driver-side
ShardWriter did, so the tars are byte-identical; shard tasks run in worker processes; a plan that a kill interrupted
is written again as planned, even when later shards were committed first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from data_engine.analysis import ANALYSIS_SCHEMA, analyse_uri, build_members
from data_engine.curate import run_curate
from data_engine.curate_config import load_config
from data_engine.curate_write import IMAGE_MEMBER, ShardTasks, plan_shards, sizes_batch, write_shard
from data_engine.shards import ShardWriter

ACCEPTED = [
    "astronaut.jpg",
    "grace_hopper.jpg",
    "camera_grey.png",
    "coffee_cmyk.jpg",
    "chelsea_rgba.png",
    "moon_16bit.png",
    "rocket_exif6.jpg",
    "ihc_single.gif",
    "räume und 人 hubble.jpg",
]


def _cfg(inputs: list[Path], out: Path, *settings: str):
    cfg = load_config(None, ["progress=false", *settings], inputs=[str(p) for p in inputs], out=str(out))
    cfg.detector.name = type(cfg.detector.name)("none")
    return cfg


def _records(corpus: Path, cfg) -> pa.Table:
    rows = [analyse_uri(str(corpus / "images" / n), cfg) for n in ACCEPTED]
    assert all(r.get("reason") is None for r in rows)
    return pa.Table.from_pylist(rows, schema=ANALYSIS_SCHEMA)


@pytest.mark.parametrize("max_count, max_bytes", [(2, 1 << 30), (100, 200_000), (3, 400_000)])
def test_planned_shards_are_byte_identical_to_the_driver_writer(corpus, tmp_path, max_count, max_bytes):
    """The reference: every sample through one ShardWriter in the order the planner uses (each chunk's re-encodes
    first). The planner's shards, each written by write_shard, must have the same names, members and bytes."""
    cfg = _cfg([corpus / "images"], tmp_path / "out")
    records = _records(corpus, cfg)
    chunks = [records.slice(i, 4) for i in range(0, records.num_rows, 4)]
    (tmp_path / "ref").mkdir()
    with ShardWriter("curated", max_count, max_bytes, output=_open(tmp_path / "ref")) as writer:
        for chunk in chunks:
            rows = chunk.to_pylist()
            for r in [r for r in rows if r["reencode"]] + [r for r in rows if not r["reencode"]]:
                m = build_members(r, cfg)
                writer.write({"__key__": m["key"], IMAGE_MEMBER: m["image"], "json": m["json"]})
    planned = list(plan_shards(chunks, lambda t: sizes_batch(t, cfg), max_count, max_bytes))
    assert all(not p.errors for p in planned)
    (tmp_path / "new").mkdir()
    for i, shard in enumerate(planned):
        write_shard(str(tmp_path / "new"), f"curated-{i:06d}.tar", shard.records, cfg)
    ref = {p.name: p.read_bytes() for p in sorted((tmp_path / "ref").iterdir())}
    assert len(ref) >= 3  # the limits do cut
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "new").iterdir())} == ref


def _open(folder: Path):
    from data_engine.output_fs import OutputFS

    return OutputFS.open(str(folder))


def test_shard_tasks_run_in_ray_workers(ray_local, corpus, tmp_path):
    cfg = _cfg([corpus / "images"], tmp_path / "out")
    records = _records(corpus, cfg)
    (tmp_path / "shards").mkdir()
    results: list[tuple[str, dict]] = []
    tasks = ShardTasks(str(tmp_path / "shards"), cfg, 1, lambda n, r, e: results.append((n, r)), None)
    tasks.submit("curated-000000.tar", records.slice(0, 2), [])
    tasks.submit("curated-000001.tar", records.slice(2, 2), [])
    tasks.drain()
    assert [n for n, _ in results] == ["curated-000000.tar", "curated-000001.tar"]  # recorded in submission order
    for _, result in results:
        assert result["committed"] and result["pid"] != os.getpid()  # a worker wrote it, not this process
        assert result["node"] == ray_local.get_runtime_context().get_node_id()
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["curated-000000.tar", "curated-000001.tar"]


def test_an_interrupted_plan_is_written_again_as_planned(ray_local, corpus, tmp_path):
    """As a kill -9 can leave it: shard 1 planned but never committed while later shards were, and shard 3
    committed without its written part. The re-run writes shard 1 with its planned members (identical bytes),
    records shard 3 from its tar, and plans nothing new."""
    out = tmp_path / "out"
    settings = ["shard_max_count=2", "images_per_task=2", "checkpoint_rows=4"]
    stats = run_curate(_cfg([corpus / "images"], out, *settings), log=lambda s: None)
    assert sum(stats["this_run"]["shards_per_node"].values()) == stats["shards"] == 5
    shards = {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
    (out / "shards" / "curated-000001.tar").unlink()
    (out / "state" / "written" / "curated-000001.parquet").unlink()
    (out / "state" / "written" / "curated-000003.parquet").unlink()
    (out / "manifest.parquet").unlink()
    plans = sorted(p.name for p in (out / "state" / "plan").iterdir())
    again = run_curate(_cfg([corpus / "images"], out, *settings), log=lambda s: None)
    assert again["this_run"]["written"] == 2 and again["status"] == stats["status"]
    assert {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())} == shards
    assert sorted(p.name for p in (out / "state" / "plan").iterdir()) == plans
    assert (out / "state" / "written" / "curated-000003.parquet").exists()
    shutil.rmtree(out)
