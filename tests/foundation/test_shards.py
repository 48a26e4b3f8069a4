"""Shards: round trip, readable by other tools, atomic under kill, restart-safe, and `hv shards inspect`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_engine import manifest
from data_engine.sample import Sample, SampleError, decode, encode, key_from_bytes
from data_engine.shards import ReadReport, ShardError, ShardWriter, expand, iter_samples


def make_samples(n: int, size: int = 16) -> list[Sample]:
    rng = np.random.default_rng(n)
    out = []
    for _ in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        depth = rng.uniform(1, 2, (size, size)).astype(np.float32)
        out.append(Sample(key=key_from_bytes(image.tobytes()), image=image, depth=depth, meta={"split": "train"}))
    return out


def write(tmp: Path, samples: list[Sample], **kw) -> list[Path]:
    with ShardWriter(str(tmp / "shards" / "test"), **kw) as writer:
        for s in samples:
            writer.write(s)
    return sorted((tmp / "shards").glob("*.tar"))


def test_round_trip_and_limits(tmp_path: Path) -> None:
    samples = make_samples(7)
    paths = write(tmp_path, samples, max_count=3)
    assert [p.name for p in paths] == ["test-000000.tar", "test-000001.tar", "test-000002.tar"]
    back = list(iter_samples(str(tmp_path / "shards" / "*.tar")))
    assert [s.key for s in back] == [s.key for s in samples]
    for a, b in zip(samples, back, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert np.abs(a.depth - b.depth).max() <= 0.0005 + 1e-6
    # A byte limit closes shards too: every sample here is far over 100 bytes.
    paths = write(tmp_path / "b", samples[:3], max_bytes=100)
    assert len(paths) == 3


def test_readable_by_tarfile_and_webdataset(tmp_path: Path) -> None:
    import webdataset as wds

    samples = make_samples(4)
    paths = write(tmp_path, samples)
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
    assert f"{samples[0].key}.png" in names and f"{samples[0].key}.json" in names
    assert f"{samples[0].key}.depth.png" in names
    dataset = wds.WebDataset([str(p) for p in paths], shardshuffle=False)
    got = list(dataset)
    assert [g["__key__"] for g in got] == [s.key for s in samples]
    # Plain webdataset dicts decode with our decoder as-is.
    assert decode(got[0]).key == samples[0].key
    meta = json.loads(got[0]["json"])
    assert meta["width"] == 16 and meta["schema_version"] == 1


def test_exception_inside_writer_leaves_no_partial_shard(tmp_path: Path) -> None:
    samples = make_samples(5)
    with pytest.raises(RuntimeError), ShardWriter(str(tmp_path / "s" / "x"), max_count=2) as writer:
        for i, s in enumerate(samples):
            if i == 3:
                raise RuntimeError("disk full")
            writer.write(s)
    names = sorted(os.listdir(tmp_path / "s"))
    assert names == ["x-000000.tar"]  # the complete one; the half-written second shard is gone
    assert len(list(iter_samples(str(tmp_path / "s")))) == 2


def test_failing_stream_mid_write_leaves_no_final_name(tmp_path: Path) -> None:
    """A write that fails inside the tar stream (as a full disk would) names no shard."""
    writer = ShardWriter(str(tmp_path / "y"), max_count=100)
    writer.write(make_samples(1)[0])

    def broken_write(data: bytes) -> int:
        raise OSError(28, "No space left on device")

    writer._file.stream.write = broken_write  # the file object under the tar writer
    with pytest.raises(OSError, match="No space"):
        writer.write(make_samples(2)[1])
    writer.abort()
    assert not list(tmp_path.glob("*.tar")) and not [p for p in os.listdir(tmp_path) if "tmp" in p]


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from data_engine.sample import Sample, key_from_bytes
    from data_engine.shards import ShardWriter
    rng = np.random.default_rng(0)
    with ShardWriter(sys.argv[1], max_count=4) as writer:
        for i in range(10_000):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            writer.write(Sample(key=key_from_bytes(image.tobytes()), image=image))
            if i == 5:  # one complete shard, two samples into the next: killed here
                print("ready", flush=True)
                time.sleep(60)
    """
)


def test_killed_writer_leaves_no_half_shard_and_restart_continues(tmp_path: Path) -> None:
    prefix = str(tmp_path / "k" / "shard")
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, prefix], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    names = os.listdir(tmp_path / "k")
    finals = sorted(n for n in names if n.endswith(".tar") and not n.startswith("."))
    assert finals, "some shards completed before the kill"
    report = ReadReport()
    count = sum(1 for _ in iter_samples(str(tmp_path / "k"), policy="skip", report=report))
    assert report.bad == [] and count == 4 * len(finals)  # every final-named shard is complete
    assert any(n.startswith(".") for n in names)  # the in-flight temporary
    # A restarted writer removes the stale temporary and numbers after the complete shards.
    with ShardWriter(prefix, max_count=4) as writer:
        writer.write(make_samples(1)[0])
    after = sorted(os.listdir(tmp_path / "k"))
    assert not [n for n in after if n.startswith(".")]
    assert after[-1] == f"shard-{len(finals):06d}.tar"


def test_bad_sample_policy(tmp_path: Path) -> None:
    samples = make_samples(3)
    members = [encode(s) for s in samples]
    members[1]["json"] = b"{not json"
    with ShardWriter(str(tmp_path / "p" / "bad")) as writer:
        for m in members:
            writer.write(m)
    with pytest.raises(SampleError, match=samples[1].key):
        list(iter_samples(str(tmp_path / "p")))
    report = ReadReport()
    good = list(iter_samples(str(tmp_path / "p"), policy="skip", report=report))
    assert [s.key for s in good] == [samples[0].key, samples[2].key]
    assert len(report.bad) == 1 and report.bad[0].key == samples[1].key and "json" in report.bad[0].reason


def test_truncated_shard_named(tmp_path: Path) -> None:
    paths = write(tmp_path, make_samples(4))
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardError, match=paths[0].name):
        list(iter_samples(str(paths[0])))
    report = ReadReport()
    got = list(iter_samples(str(paths[0]), policy="skip", report=report))
    assert len(got) < 4 and report.bad and report.bad[0].key is None


def test_expand_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no shards match"):
        expand(str(tmp_path / "nothing-*.tar"))


def test_manifest_parts_and_consolidation(tmp_path: Path) -> None:
    writer = manifest.ManifestWriter(str(tmp_path / "parts"))
    writer.append([{"uri": "a.jpg", "key": "ab", "status": "accepted", "shard": "s-000000.tar", "width": 4}])
    writer.append([{"uri": "b.jpg", "key": None, "status": "rejected", "reason": "empty file"}])
    # A restarted writer continues numbering instead of overwriting part 0.
    manifest.ManifestWriter(str(tmp_path / "parts")).append(
        [{"uri": "c.jpg", "key": "ab", "status": "duplicate", "duplicate_of": "ab"}]
    )
    table = manifest.consolidate(str(tmp_path / "parts"), str(tmp_path / "manifest.parquet"))
    assert table.num_rows == 3
    plain = pq.read_table(tmp_path / "manifest.parquet")
    assert plain.schema.equals(manifest.MANIFEST_SCHEMA)
    assert manifest.status_counts(plain) == {"accepted": 1, "rejected": 1, "duplicate": 1}
    with pytest.raises(ValueError, match="unknown manifest columns"):
        manifest.to_table([{"uri": "x", "status": "accepted", "colour": 1}])
    with pytest.raises(ValueError, match="status"):
        manifest.to_table([{"uri": "x", "status": "maybe"}])


def run_hv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import humanvision_cli; humanvision_cli.main()", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_hv_shards_inspect_good_truncated_corrupt(tmp_path: Path) -> None:
    samples = make_samples(5)
    paths = write(tmp_path, samples, max_count=2)
    out = run_hv("shards", "inspect", str(tmp_path / "shards" / "*.tar"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["samples"] == 5 and [s["samples"] for s in report["shards"]] == [2, 2, 1]
    assert report["shards"][0]["members"]["depth.png"]["count"] == 2

    # A corrupt member inside an intact tar: the key and reason are listed, exit non-zero.
    members = encode(samples[0])
    members["depth.png"] = b"\x89PNG garbage"
    with ShardWriter(str(tmp_path / "corrupt" / "c")) as writer:
        writer.write(members)
    out = run_hv("shards", "inspect", str(tmp_path / "corrupt"))
    assert out.returncode == 1
    assert samples[0].key in out.stderr and "depth.png" in out.stderr

    # A truncated tar: the shard is named.
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:700])
    out = run_hv("shards", "inspect", str(paths[1]))
    assert out.returncode == 1 and paths[1].name in out.stderr

    # Not a tar at all, and nothing matching.
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"hello world" * 100)
    assert run_hv("shards", "inspect", str(junk)).returncode == 1
    out = run_hv("shards", "inspect", str(tmp_path / "none-*.tar"))
    assert out.returncode == 1 and "no shards match" in out.stderr


def test_cut_at_a_header_boundary_is_reported(tmp_path: Path) -> None:
    """tarfile's stream mode ends quietly when a file is cut exactly between members: we must not."""
    samples = make_samples(4)
    paths = write(tmp_path, samples)
    with tarfile.open(paths[0]) as tar:
        members = tar.getmembers()
    # Cut right before the header of the first member of the third sample.
    third = next(m for m in members if m.name.startswith(samples[2].key))
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: third.offset])
    report = ReadReport()
    got = list(iter_samples(str(paths[0]), policy="skip", report=report))
    assert [s.key for s in got] == [s.key for s in samples[:1]]  # the second sample may be incomplete: withheld
    assert len(report.bad) == 1 and "truncated" in report.bad[0].reason


def test_select_splits_a_stream_before_decoding_and_bad_samples_reach_on_bad(tmp_path: Path) -> None:
    samples = make_samples(7)
    members = [encode(s) for s in samples]
    members[4]["json"] = b"{broken"
    with ShardWriter(str(tmp_path / "sel" / "s"), max_count=3) as writer:
        for m in members:
            writer.write(m)
    seen: list = []
    halves = []
    for worker in (0, 1):
        report = ReadReport(on_bad=seen.append)
        got = iter_samples(str(tmp_path / "sel"), policy="skip", report=report, select=lambda i, w=worker: i % 2 == w)
        halves.append([s.key for s in got])
    # Disjoint halves that together hold every good sample, in order; the broken one (index 4, worker 0's) is
    # reported once, through the callback too, and never decoded by worker 1.
    assert halves[0] == [samples[i].key for i in (0, 2, 6)]
    assert halves[1] == [samples[i].key for i in (1, 3, 5)]
    assert [b.key for b in seen] == [samples[4].key]
