"""Fixtures: tiny curated shards made here (coloured images with a person box), good and broken."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from data_engine.sample import Sample, encode, key_from_params
from data_engine.shards import ShardWriter


def make_sample(i: int, h: int = 72, w: int = 96) -> Sample:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:h, 0:w]
    # Smooth gradients plus a bright "person" rectangle: structure an MAE can learn from.
    image = np.stack([(xx * 255 // w), (yy * 255 // h), np.full((h, w), 40 * (i % 6))], -1).astype(np.uint8)
    x0, y0 = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 40))
    image[y0 : y0 + 40, x0 : x0 + 30] = rng.integers(100, 255, 3, dtype=np.uint8)
    meta = {"persons": [{"bbox": [x0, y0, x0 + 30, y0 + 40], "score": 0.99, "detector": "test"}], "split": "train"}
    return Sample(key=key_from_params({"i": i}), image=image, meta=meta)


def write_shards(prefix: str, count: int, per_shard: int, start: int = 0) -> list[str]:
    with ShardWriter(prefix, max_count=per_shard) as writer:
        for i in range(start, start + count):
            writer.write(make_sample(i))
    return [s.path for s in writer.shards]


@pytest.fixture
def shards(tmp_path) -> str:
    """24 good samples in 4 shards; the glob that finds them."""
    write_shards(str(tmp_path / "data" / "curated"), 24, 6)
    return str(tmp_path / "data" / "*.tar")


@pytest.fixture
def broken_shards(tmp_path) -> tuple[str, int]:
    """Good shards plus one sample with a corrupt image and one truncated shard: (glob, good samples readable)."""
    folder = tmp_path / "broken"
    write_shards(str(folder / "good"), 8, 4)
    members = encode(make_sample(100))
    members["png"] = b"not a png at all"
    with ShardWriter(str(folder / "bad"), max_count=10) as writer:
        writer.write(members)
        writer.write(make_sample(101))
    truncated = write_shards(str(folder / "cut"), 4, 4, start=200)[0]
    with tarfile.open(truncated) as tar:
        third_sample = tar.getmembers()[4].offset  # two members (json, png) per sample
    with open(truncated, "r+b") as f:
        f.truncate(third_sample + 512 + 10)  # inside a member: the reader must notice
    return str(folder / "*.tar"), 8 + 1 + 2
