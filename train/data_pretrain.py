"""Pretraining data: curated shards -> person-centred random resized crops + flips -> uint8 image batches.

    batches = pretrain_batches(cfg.data, img_size=(1024, 1024), batch_size=64, rank=0, world_size=8,
                               seed=0, start_batch=0, bad_dir="RUN/bad_samples")
    next(batches)  # {"images": (64, 3, 1024, 1024) uint8}

Slots (a rank's loader workers), the split of shards or samples between them, the shuffle buffer and resume
come from `train.data_stream`. Order, crops and flips depend only on (seed, epoch, slot, index), so a run
resumed at batch N replays the same stream from N (skipped batches are decoded but not augmented).

Bad samples (undecodable members, a broken or missing shard) are skipped, counted and written with their
shard, key and reason to `bad_dir/slot-XXXX.jsonl`; a slot that finds no readable sample at all stops with
an error naming its shards rather than spinning forever.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from data_engine.sample import Sample, decode
from data_engine.shards import ReadReport, expand, iter_samples
from train.data_stream import Slot, make_batches_from, shuffled, split_shards

# ImageNet statistics: what MAE and Sapiens normalise with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PretrainDataConfig:
    shards: str = ""  # shard files, folders or globs (local or pyarrow.fs URIs), comma-separated
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])  # crop area / image area
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])  # crop aspect / output aspect
    person_centred: bool = True  # crops contain the centre of a random detected person when there is one
    flip_prob: float = 0.5
    num_workers: int = 2  # loader processes per rank; 0 = read in the training process
    shuffle_buffer: int = 256  # samples held for shuffling, per slot

    def shard_patterns(self) -> list[str]:
        return [p.strip() for p in self.shards.split(",") if p.strip()]


# ------------------------------------------------------------------------------------------------- crops


def person_boxes(sample: Sample) -> list[tuple[float, float, float, float]]:
    """Person boxes (x0, y0, x1, y1) from the `json` member's detections, else from pose.json; bad ones dropped."""
    raw = [p.get("bbox") for p in sample.meta.get("persons", []) if isinstance(p, dict)]
    if not raw and sample.pose is not None:
        raw = [p.bbox for p in sample.pose.persons]
    boxes = []
    for box in raw:
        try:
            x0, y0, x1, y1 = (float(v) for v in box)
        except (TypeError, ValueError):
            continue
        if all(math.isfinite(v) for v in (x0, y0, x1, y1)) and x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1, y1))
    return boxes


def crop_window(
    rng: np.random.Generator,
    width: int,
    height: int,
    out_hw: tuple[int, int],
    scale: Sequence[float],
    ratio: Sequence[float],
    boxes: Sequence[tuple[float, float, float, float]] = (),
) -> tuple[int, int, int, int]:
    """A random crop (x0, y0, w, h) inside the image: area fraction in `scale`, aspect in `ratio` times the
    output's; when `boxes` are given it contains the centre of one of them, chosen at random."""
    target = out_hw[1] / out_hw[0]
    for _ in range(10):
        area = width * height * rng.uniform(scale[0], scale[1])
        aspect = target * math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            break
    else:  # thin images: the largest window of the output's aspect
        w, h = (
            (width, max(1, round(width / target)))
            if width / height < target
            else (max(1, round(height * target)), height)
        )
        w, h = min(w, width), min(h, height)
    if boxes:
        x0b, y0b, x1b, y1b = boxes[int(rng.integers(len(boxes)))]
        cx = min(max((x0b + x1b) / 2, 0.0), width)
        cy = min(max((y0b + y1b) / 2, 0.0), height)
        x = rng.uniform(max(0.0, cx - w), min(width - w, cx))
        y = rng.uniform(max(0.0, cy - h), min(height - h, cy))
        return int(min(round(x), width - w)), int(min(round(y), height - h)), w, h
    return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h


def augment(
    image: np.ndarray,
    rng: np.random.Generator,
    out_hw: tuple[int, int],
    cfg: PretrainDataConfig,
    boxes: Sequence[tuple[float, float, float, float]] = (),
) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, out_h, out_w) uint8: random resized crop (person-centred) and horizontal flip."""
    import cv2

    h_img, w_img = image.shape[:2]
    x, y, w, h = crop_window(
        rng, w_img, h_img, out_hw, cfg.crop_scale, cfg.crop_ratio, boxes if cfg.person_centred else ()
    )
    crop = image[y : y + h, x : x + w]
    shrink = w > out_hw[1] and h > out_hw[0]
    crop = cv2.resize(crop, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if rng.random() < cfg.flip_prob:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop.transpose(2, 0, 1))


# ------------------------------------------------------------------------------------------------ stream


class BadSampleLog:
    """Each bad (shard, key) once, as a JSON line in `bad_dir/slot-XXXX.jsonl` (no file if none)."""

    def __init__(self, bad_dir: str | None, slot: int) -> None:
        self.path = None if bad_dir is None else os.path.join(bad_dir, f"slot-{slot:04d}.jsonl")
        self.seen: set[tuple[str, str | None]] = set()

    def record(self, shard: str, key: str | None, reason: str) -> None:
        if (shard, key) in self.seen:
            return
        self.seen.add((shard, key))
        if self.path is not None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps({"shard": shard, "key": key, "reason": reason}) + "\n")


def _decode_image_and_boxes(members: dict) -> Sample:
    """MAE reads the image and the person boxes (`person_boxes`), never the dense label maps."""
    return decode(members, labels=("pose.json",))


def slot_samples(
    paths: Sequence[str], slot: int, slots: int, seed: int, bad: BadSampleLog, shuffle_buffer: int = 0
) -> Iterator[tuple[Sample, np.random.Generator]]:
    """This slot's endless stream of (sample, its own augmentation RNG), epoch after epoch."""
    epoch = 0
    while True:
        mine, select = split_shards(paths, slot, slots, seed, epoch)
        read = ReadReport(on_bad=lambda b: bad.record(b.shard, b.key, b.reason))
        samples = iter_samples(mine, policy="skip", report=read, select=select, decoder=_decode_image_and_boxes)
        shuffle_rng = np.random.default_rng([seed, epoch, slot, 1])
        for index, sample in enumerate(shuffled(samples, shuffle_buffer, shuffle_rng)):
            yield sample, np.random.default_rng([seed, epoch, slot, 2, index])
        if read.samples == 0:
            raise RuntimeError(
                f"data slot {slot} of {slots} found no readable sample in {len(mine)} shard(s) "
                f"({', '.join(mine[:3])}{', ...' if len(mine) > 3 else ''}); bad samples: {bad.path}"
            )
        epoch += 1


def batch_stream(
    paths: Sequence[str],
    cfg: PretrainDataConfig,
    img_size: tuple[int, int],
    batch_size: int,
    slot: int,
    slots: int,
    seed: int,
    skip_batches: int = 0,
    bad_dir: str | None = None,
) -> Iterator[dict[str, object]]:
    """One slot's batches {"images": (B, 3, H, W) uint8 tensor}, the first `skip_batches` passed over."""
    import torch

    bad = BadSampleLog(bad_dir, slot)
    samples = slot_samples(paths, slot, slots, seed, bad, cfg.shuffle_buffer)
    for _ in range(skip_batches * batch_size):
        next(samples)
    while True:
        images = []
        for _ in range(batch_size):
            sample, rng = next(samples)
            images.append(augment(sample.image, rng, img_size, cfg, person_boxes(sample)))
        yield {"images": torch.from_numpy(np.stack(images))}


def pretrain_batches(
    cfg: PretrainDataConfig,
    img_size: tuple[int, int],
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    start_batch: int = 0,
    bad_dir: str | None = None,
) -> Iterator[dict[str, object]]:
    """This rank's batches (the engine's make_batches), through `cfg.num_workers` loader processes; slots,
    worker streams and resume as in `train.data_stream`."""
    paths = expand(cfg.shard_patterns()) if cfg.shard_patterns() else []
    if not paths:
        raise FileNotFoundError("data.shards is empty: set data.shards=GLOB")

    def slot_batches(slot: Slot) -> Iterator[dict[str, object]]:
        return batch_stream(paths, cfg, img_size, batch_size, slot.index, slot.count, slot.seed, slot.skip, bad_dir)

    yield from make_batches_from(slot_batches, cfg.num_workers)(rank, world_size, seed, start_batch)


def normalise(images, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """(B, 3, H, W) uint8 tensor -> float32 normalised with ImageNet statistics, on the same device."""
    import torch

    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - m) / s
