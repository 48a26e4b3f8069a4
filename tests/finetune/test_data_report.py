"""A training stream's data report over several epochs: each bad sample listed once with the times it was read,
and a key present twice in the shards trains once per epoch (the second copy is listed, not used)."""

from __future__ import annotations

import json

from ft_synthetic import person_sample, write_shards

from data_engine.sample import encode
from data_engine.shards import ShardWriter
from train.data_finetune import ItemReport, LabelSpec, iter_items
from train.finetune import _write_report
from train.transforms.dense import DenseParams
from train.transforms.pose import TopDownParams

SIZE = (64, 48)
SPEC = LabelSpec(tasks=("seg",))


def test_bad_and_duplicate_samples_once_per_run_with_times_seen(tmp_path) -> None:
    samples = [person_sample(i, *SIZE) for i in range(3)]
    write_shards(str(tmp_path / "good"), samples, max_count=3)
    broken = encode(person_sample(7, *SIZE))
    broken["seg.png"] = b"\x89PNG not really"
    with ShardWriter(str(tmp_path / "more")) as writer:
        writer.write(broken)
        writer.write(encode(samples[1]))  # the same key as a sample of good-000000.tar
    report = ItemReport()
    params = TopDownParams(input_size=SIZE), DenseParams(input_size=SIZE)
    rows = list(iter_items(str(tmp_path), SPEC, *params, report=report, epochs=3, augment=False))
    assert sorted(it.key for it in rows) == sorted([s.key for s in samples] * 3)  # samples[1] once per epoch

    _write_report(str(tmp_path / "data_report.json"), report)
    listed = json.loads((tmp_path / "data_report.json").read_text())["bad_samples"]
    assert sorted((b["key"], b["seen"]) for b in listed) == sorted([(broken["__key__"], 3), (samples[1].key, 3)])
    duplicate = next(b for b in listed if b["key"] == samples[1].key)
    assert "duplicate key" in duplicate["reason"] and duplicate["shard"].endswith("more-000000.tar")
