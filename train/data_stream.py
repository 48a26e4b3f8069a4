"""The batch plumbing every training task shares: slots, the shard/sample split, the shuffle buffer, loader
workers and exact resume. A task only says how one slot makes its batches.

    def slot_batches(slot: Slot) -> Iterator[batch]: ...  # slot.index of slot.count, slot.skip batches done
    make_batches = make_batches_from(slot_batches, num_workers=2)  # the engine's make_batches
    batches = make_batches(rank, world_size, seed, start_step)

Each (rank, loader worker) pair is a slot, index rank * W + worker of world_size * W (W = num_workers; with
W = 0 the rank itself is the slot, index rank of world_size), and slots read disjoint data (`split_shards`).
A slot's stream depends only on (seed, slot), so it can be replayed: the DataLoader takes batches from its
workers round-robin starting at worker 0, and a run resumed after `start_step` batches gives physical worker
w the logical stream (w + start_step) % W with that stream's already consumed batches skipped, which
continues the uninterrupted order exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Slot:
    """One stream of batches: what a task's `slot_batches` needs to make it."""

    rank: int
    worker: int | None  # the logical loader worker; None when batches are made in the training process
    index: int  # rank * W + worker (or rank): which part of the data this stream reads
    count: int  # world_size * W (or world_size): how many streams share the data
    seed: int
    skip: int  # batches of this stream a resumed run already consumed: make and drop them


SlotBatches = Callable[[Slot], Iterator[Any]]


def split_shards(
    paths: Sequence[str], slot: int, slots: int, seed: int | None = None, epoch: int = 0
) -> tuple[list[str], Callable[[int], bool] | None]:
    """This slot's shards of one epoch, and the `select` for `iter_samples` (None: keep every sample).

    With `seed`, the shard order is first permuted by (seed, epoch), the same on every slot. Whole shards per
    slot when there are at least as many shards as slots; else every slot reads all shards and keeps the
    samples whose running index (over the shards' members, decided before decoding) falls to it.
    """
    if seed is not None:
        paths = [paths[i] for i in np.random.default_rng([seed, epoch]).permutation(len(paths))]
    if len(paths) >= slots:
        return list(paths[slot::slots]), None
    return list(paths), lambda index: index % slots == slot


def shuffled(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """`items` mixed through a buffer of `size`: when full, a random held item goes out; at the end the rest in
    random order. size <= 1 passes items through unchanged."""
    if size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            j = int(rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def worker_skip(logical: int, workers: int, start_step: int) -> int:
    """Batches logical worker `logical` produced among the first `start_step` (round-robin from worker 0)."""
    return max(0, -(-(start_step - logical) // workers))


def make_batches_from(slot_batches: SlotBatches, num_workers: int) -> Callable[[int, int, int, int], Iterator[Any]]:
    """The engine's `make_batches(rank, world_size, seed, start_step)` from a task's per-slot batch factory.

    num_workers = 0: the rank's one stream, made in the training process (`slot_batches` is called at once).
    num_workers = W > 0: a DataLoader with W processes per rank, each making one logical stream, taken
    round-robin; resumed as the module docstring says.
    """
    workers = max(num_workers, 0)

    def make_batches(rank: int, world_size: int, seed: int, start_step: int) -> Iterator[Any]:
        if workers == 0:
            return slot_batches(Slot(rank, None, rank, world_size, seed, start_step))
        import torch

        class _Slots(torch.utils.data.IterableDataset):
            def __iter__(self):
                logical = (torch.utils.data.get_worker_info().id + start_step) % workers
                skip = worker_skip(logical, workers, start_step)
                return slot_batches(Slot(rank, logical, rank * workers + logical, world_size * workers, seed, skip))

        loader = torch.utils.data.DataLoader(_Slots(), batch_size=None, num_workers=workers, prefetch_factor=2)
        return iter(loader)

    return make_batches
