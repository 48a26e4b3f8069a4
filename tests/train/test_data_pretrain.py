"""Pretraining data: person-centred crops, disjoint slots, determinism, resume order, bad shards."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from data_engine.shards import expand
from train.data_pretrain import (
    BadSampleLog,
    PretrainDataConfig,
    crop_window,
    normalise,
    person_boxes,
    pretrain_batches,
    slot_samples,
)

from .conftest import make_sample


def test_crop_window_contains_the_person_centre_and_stays_inside() -> None:
    rng = np.random.default_rng(0)
    box = (300.0, 50.0, 360.0, 190.0)
    for _ in range(200):
        x, y, w, h = crop_window(rng, 400, 240, (64, 64), (0.05, 0.3), (0.75, 1.333), [box])
        assert x >= 0 and y >= 0 and x + w <= 400 and y + h <= 240 and w > 0 and h > 0
        assert x <= 330 <= x + w and y <= 120 <= y + h
    # A thin strip still gets a valid window.
    x, y, w, h = crop_window(rng, 5, 300, (64, 64), (0.9, 1.0), (1.0, 1.0))
    assert 0 < w <= 5 and 0 < h <= 300


def test_person_boxes_from_meta_and_bad_boxes_ignored() -> None:
    s = make_sample(1)
    assert len(person_boxes(s)) == 1
    s.meta["persons"] = [{"bbox": [1, 2, 3]}, {"bbox": [5, 5, 1, 1]}, {"bbox": ["a", 1, 2, 3]}, "junk"]
    assert person_boxes(s) == []


def _slot_keys(paths, slot, slots, n) -> list[str]:
    stream = slot_samples(paths, slot, slots, seed=0, bad=BadSampleLog(None, slot), shuffle_buffer=0)
    return [next(stream)[0].key for _ in range(n)]


@pytest.mark.parametrize("slots", [2, 8])  # 4 shards: whole shards per slot, then samples split across slots
def test_slots_are_disjoint_and_cover_the_data(shards: str, slots: int) -> None:
    paths = expand(shards)
    per_slot = 24 // slots
    keys = [_slot_keys(paths, s, slots, per_slot) for s in range(slots)]
    flat = [k for ks in keys for k in ks]
    assert len(set(flat)) == 24 == len(flat)


def test_batches_are_deterministic_and_resume_continues_the_order(shards: str) -> None:
    cfg = PretrainDataConfig(shards=shards, num_workers=2, shuffle_buffer=5)

    def take(start: int, n: int, seed: int = 0) -> list[torch.Tensor]:
        it = pretrain_batches(cfg, (32, 32), 3, rank=0, world_size=1, seed=seed, start_batch=start)
        return [next(it)["images"] for _ in range(n)]

    full = take(0, 9)
    assert full[0].shape == (3, 3, 32, 32) and full[0].dtype == torch.uint8
    assert all(torch.equal(a, b) for a, b in zip(full, take(0, 9), strict=True))
    for start in (1, 4):
        resumed = take(start, 9 - start)
        assert all(torch.equal(a, b) for a, b in zip(full[start:], resumed, strict=True)), start
    assert not torch.equal(take(0, 1, seed=1)[0], full[0])


def test_bad_samples_are_counted_and_reported_not_fatal(broken_shards, tmp_path) -> None:
    pattern, good = broken_shards
    cfg = PretrainDataConfig(shards=pattern, num_workers=0, shuffle_buffer=0)
    bad_dir = str(tmp_path / "bad")
    it = pretrain_batches(cfg, (32, 32), good, rank=0, world_size=1, seed=0, bad_dir=bad_dir)
    first = next(it)["images"]
    second = next(it)["images"]  # the second epoch: the same good samples, nothing new recorded
    assert first.shape[0] == second.shape[0] == good
    rows = []
    for name in os.listdir(bad_dir):
        with open(os.path.join(bad_dir, name)) as f:
            rows += [json.loads(line) for line in f]
    assert len(rows) == 2
    reasons = {os.path.basename(r["shard"]).split("-")[0]: r for r in rows}
    assert reasons["bad"]["key"] is not None and "png" in reasons["bad"]["reason"]
    assert reasons["cut"]["key"] is None and "not a readable tar" in reasons["cut"]["reason"]


def test_no_readable_sample_fails_naming_the_shards(tmp_path) -> None:
    broken = tmp_path / "only-000000.tar"
    broken.write_bytes(b"this is no tar")
    cfg = PretrainDataConfig(shards=str(broken), num_workers=0)
    with pytest.raises(RuntimeError, match=r"only-000000\.tar"):
        next(pretrain_batches(cfg, (32, 32), 2, 0, 1, 0))
    with pytest.raises(FileNotFoundError, match="no shards match"):
        next(pretrain_batches(PretrainDataConfig(shards=str(tmp_path / "none*.tar")), (32, 32), 2, 0, 1, 0))
    with pytest.raises(FileNotFoundError, match=r"data\.shards"):
        next(pretrain_batches(PretrainDataConfig(shards=""), (32, 32), 2, 0, 1, 0))


def test_normalise_uses_imagenet_statistics() -> None:
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalise(images)
    assert out.dtype == torch.float32
    torch.testing.assert_close(
        out[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )
