"""The shared batch plumbing (train.data_stream) on plain lists: slots read disjoint data that covers the input,
and a stream resumed at step s continues the uninterrupted one, in and out of loader worker processes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from train.data_stream import Slot, make_batches_from, shuffled, split_shards, worker_skip

BATCH = 2


def toy_shards(n_shards: int, per_shard: int) -> dict[str, list[str]]:
    return {f"s{i}": [f"s{i}-{j}" for j in range(per_shard)] for i in range(n_shards)}


def toy_batches(shards: dict[str, list[str]], buffer: int = 4):
    """A task's slot factory over in-memory "shards": split, shuffle, batch, skip, epoch after epoch."""

    def slot_batches(slot: Slot) -> Iterator[list[str]]:
        def samples() -> Iterator[str]:
            epoch = 0
            while True:
                mine, select = split_shards(list(shards), slot.index, slot.count, slot.seed, epoch)
                flat = [x for name in mine for x in shards[name]]
                kept = (x for i, x in enumerate(flat) if select is None or select(i))
                yield from shuffled(kept, buffer, np.random.default_rng([slot.seed, epoch, slot.index]))
                epoch += 1

        it = samples()
        index = 0
        while True:
            batch = [next(it) for _ in range(BATCH)]
            if index >= slot.skip:
                yield batch
            index += 1

    return slot_batches


def take(make, rank: int, world: int, start: int, n: int) -> list[list[str]]:
    it = make(rank, world, 5, start)
    return [list(next(it)) for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("n_shards", [8, 1])  # whole shards per slot; samples split within one shard
def test_two_ranks_read_disjoint_samples_that_cover_the_input(workers: int, n_shards: int) -> None:
    shards = toy_shards(n_shards, 24 // n_shards)
    make = make_batches_from(toy_batches(shards), workers)
    per_rank = 24 // 2 // BATCH  # one epoch of every slot of this rank
    got = [x for rank in (0, 1) for batch in take(make, rank, 2, 0, per_rank) for x in batch]
    assert sorted(got) == sorted(x for xs in shards.values() for x in xs)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_the_uninterrupted_one(workers: int) -> None:
    make = make_batches_from(toy_batches(toy_shards(3, 5)), workers)  # epochs end mid-batch
    whole = take(make, 1, 2, 0, 12)
    assert len({tuple(b) for b in whole}) > 1
    for start in (1, 2, 5):
        assert take(make, 1, 2, start, 12 - start) == whole[start:], start


def test_shuffle_buffer_and_worker_skip() -> None:
    rng = np.random.default_rng(0)
    out = list(shuffled(range(50), 8, rng))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert list(shuffled(range(5), 1, rng)) == list(range(5))
    # 7 batches taken round-robin from 3 workers: worker 0 made batches 0, 3, 6; worker 1: 1, 4; worker 2: 2, 5.
    assert [worker_skip(w, 3, 7) for w in range(3)] == [3, 2, 2]
    assert worker_skip(2, 3, 0) == 0
