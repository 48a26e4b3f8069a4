"""Brush RLE for `hv annotate pull` / `predict`: annotation.rle against label_studio_sdk.converter.brush.

    .venv/bin/python benchmarks/annotation_rle.py

Same process, same masks: a 768x1024 body-part map split into its 28 class masks (what one seg task
holds), plus a noisy mask (a worst case for run-length coding). Prints seconds and the SDK/ours ratio
(above 1 = ours faster), and checks both give identical bytes and pixels.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from label_studio_sdk.converter.brush import decode_rle as sdk_decode
from label_studio_sdk.converter.brush import mask2rle as sdk_encode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from annotation.rle import decode_rle, encode_mask
from benchmarks.timing import best_of


def body_part_masks(height: int = 768, width: int = 1024, classes: int = 28) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    seg = np.full((height, width), 255, np.uint8)
    for class_id in range(classes):  # overlapping ellipses: smooth boundaries like real parts
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(20, 200), rng.integers(20, 200)
        yy, xx = np.ogrid[:height, :width]
        seg[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = class_id
    return [seg == c for c in range(classes)]


def compare(name: str, masks: list[np.ndarray]) -> None:
    encoded = [encode_mask(m) for m in masks]
    assert encoded == [sdk_encode(m.astype(np.uint8) * 255) for m in masks], "encoders disagree"
    assert all(np.array_equal(decode_rle(r), sdk_decode(r)) for r in encoded), "decoders disagree"
    sdk_enc = best_of(lambda: [sdk_encode(m.astype(np.uint8) * 255) for m in masks])
    our_enc = best_of(lambda: [encode_mask(m) for m in masks])
    sdk_dec = best_of(lambda: [sdk_decode(r) for r in encoded])
    our_dec = best_of(lambda: [decode_rle(r) for r in encoded])
    print(f"{name}: encode sdk {sdk_enc:.3f} s, ours {our_enc:.3f} s, ratio {sdk_enc / our_enc:.1f}x")
    print(f"{name}: decode sdk {sdk_dec:.3f} s, ours {our_dec:.3f} s, ratio {sdk_dec / our_dec:.1f}x")


def main() -> None:
    compare("28 body-part masks 768x1024", body_part_masks())
    noisy = [np.random.default_rng(1).random((256, 256)) > 0.5]
    compare("noisy mask 256x256", noisy)


if __name__ == "__main__":
    main()
