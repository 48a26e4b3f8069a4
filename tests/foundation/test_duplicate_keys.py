"""Duplicate keys and repeated reads: `hv shards inspect` reports a key met twice anywhere in a shard set, readers
use the first copy and list the others, and a report lists a bad sample once however often it is read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_engine.sample import Sample, SampleError, encode
from data_engine.shards import ReadReport, ShardWriter, iter_samples


def sample(key: str, shade: int) -> Sample:
    return Sample(key=key, image=np.full((8, 8, 3), shade, np.uint8), meta={"split": "val"})


def write(folder: Path, name: str, items: list) -> None:
    with ShardWriter(str(folder / name)) as writer:
        for item in items:
            writer.write(item)


@pytest.fixture
def shard_set(tmp_path: Path) -> Path:
    """Key a1 in x and y (a different image each time), b2 in x and twice in a row in z, c3 broken (in zz)."""
    broken = encode(sample("c3", 9))
    broken["png"] = b"not a png"
    write(tmp_path / "set", "x", [sample("a1", 10), sample("b2", 20)])
    write(tmp_path / "set", "zz", [broken])
    b2_again = encode(sample("b2", 21))
    write(tmp_path / "set", "y", [sample("d4", 30), sample("a1", 11)])
    # Appending b2's members right after another b2 in the same shard: one tar, two copies of one key.
    with ShardWriter(str(tmp_path / "set" / "z")) as writer:
        writer.write(encode(sample("b2", 22)))
        writer.write(b2_again)
    return tmp_path / "set"


def test_inspect_reports_duplicates_across_the_set(shard_set: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import humanvision_cli; humanvision_cli.main()", "shards", "inspect",
         str(shard_set), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 1
    report = json.loads(out.stdout)
    duplicates = sorted((b["key"], Path(b["shard"]).name) for b in report["bad"] if "duplicate key" in b["reason"])
    # a1 again in y; b2 again in z, twice (z holds two copies, and x had the first).
    assert duplicates == [("a1", "y-000000.tar"), ("b2", "z-000000.tar"), ("b2", "z-000000.tar")]
    assert report["duplicate_keys"] == 3
    assert "first in" in out.stderr and "x-000000.tar" in out.stderr


def test_readers_use_the_first_copy_and_list_the_others(shard_set: Path) -> None:
    report = ReadReport()
    got = list(iter_samples(str(shard_set), policy="skip", report=report))
    assert [s.key for s in got] == ["a1", "b2", "d4"]
    assert int(got[0].image[0, 0, 0]) == 10  # the first a1, not y's
    listed = sorted((b.key, "duplicate key" in b.reason, b.seen) for b in report.bad)
    assert listed == [("a1", True, 1), ("b2", True, 2), ("c3", False, 1)]  # z's two b2 copies: one entry, seen 2
    with pytest.raises(SampleError, match=r"y-000000\.tar: a1: duplicate key"):
        list(iter_samples([str(shard_set / "x-000000.tar"), str(shard_set / "y-000000.tar")], policy="raise"))
    # Split between two loader workers: together they still read each key once, and a copy is reported once.
    keys, bad = [], []
    for worker in (0, 1):
        r = ReadReport()
        keys += [s.key for s in iter_samples(str(shard_set), "skip", r, select=lambda i, w=worker: i % 2 == w)]
        bad += [b.key for b in r.bad if "duplicate" in b.reason]
    assert sorted(keys) == ["a1", "b2", "d4"] and sorted(bad) == ["a1", "b2", "b2"]


def test_a_report_lists_each_bad_sample_once_with_times_seen(shard_set: Path) -> None:
    """A training stream reads its shards once per epoch into one report: three epochs, one entry each."""
    seen = []
    report = ReadReport(on_bad=seen.append)
    for _epoch in range(3):
        list(iter_samples(str(shard_set), policy="skip", report=report))
    assert sorted((b.key, b.seen) for b in report.bad) == [("a1", 3), ("b2", 6), ("c3", 3)]
    assert len(seen) == 3  # on_bad fires once per bad sample
