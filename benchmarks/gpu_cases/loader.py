"""The loader case of `benchmarks/gpu_check.py`: real shards of JPEG photos on local disk, read by the pretraining
loader (`train.data_pretrain.pretrain_batches`) with the configured loader workers."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np


def photo(height: int, width: int) -> np.ndarray:
    """A real photo (scikit-image's astronaut, bundled) resized to (height, width, 3) uint8: JPEG sizes and
    decode times of a photo, which noise or flat colours would not give."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)


def write_photo_shards(folder: str, shards: int, per_shard: int, size: tuple[int, int]) -> tuple[str, int]:
    """`shards` shards of `per_shard` distinct JPEG samples of `size` (H, W) with a person box each: (glob, bytes)."""
    from data_engine.sample import Sample, key_from_params
    from data_engine.shards import ShardWriter

    h, w = size
    base = photo(h, w)
    rng = np.random.default_rng(0)
    with ShardWriter(os.path.join(folder, "photos"), max_count=per_shard) as writer:
        for i in range(shards * per_shard):
            # Shifted and tinted copies: every sample is a different JPEG of the same statistics.
            shifted = np.roll(base, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
            image = np.clip(shifted.astype(np.int16) + rng.integers(-30, 30, 3), 0, 255).astype(np.uint8)
            box = [w * 0.25, h * 0.1, w * 0.75, h * 0.95]
            meta = {"persons": [{"bbox": box, "score": 0.99, "detector": "gpu_check"}], "split": "train"}
            writer.write(Sample(key=key_from_params({"gpu_check": i}), image=image, meta=meta, image_format="jpg"))
    total = sum(s.bytes for s in writer.shards)
    return os.path.join(folder, "*.tar"), total


def loader_case(data_cfg: Any, img_size: tuple[int, int], batch: int, timed_batches: int) -> dict[str, Any]:
    """Samples/s of one rank's loader after every worker has delivered its first batch (start-up, first
    shuffle-buffer fill) untimed."""
    from train.data_pretrain import pretrain_batches

    batches = pretrain_batches(data_cfg, img_size, batch, rank=0, world_size=1, seed=0)
    try:
        for _ in range(max(data_cfg.num_workers, 1)):
            next(batches)
        start = time.perf_counter()
        for _ in range(timed_batches):
            images = next(batches)["images"]
        elapsed = time.perf_counter() - start
    finally:
        batches.close()  # stops the DataLoader's worker processes
    return {"samples_per_s": timed_batches * batch / elapsed, "batch_shape": list(images.shape)}
