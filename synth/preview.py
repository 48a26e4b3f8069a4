"""`hv synth preview`: a contact sheet of a few samples, one row each: RGB | depth | normals | seg | keypoints.

hv synth preview runs/synth --out sheet.png --count 6
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from data_engine import schema
from data_engine.sample import Sample
from data_engine.shards import ReadReport, iter_samples

TILE_HEIGHT = 192


def depth_colours(depth: np.ndarray) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8: near bright, far dark, background black (range per image)."""
    valid = depth > 0
    out = np.zeros((*depth.shape, 3), np.uint8)
    if valid.any():
        lo, hi = float(depth[valid].min()), float(depth[valid].max())
        t = 1.0 - (depth - lo) / max(hi - lo, 1e-6)
        import matplotlib

        rgb = matplotlib.colormaps["inferno"](np.clip(0.15 + 0.85 * t, 0, 1))[..., :3]
        out[valid] = np.rint(rgb[valid] * 255).astype(np.uint8)
    return out


def normal_colours(normal: np.ndarray) -> np.ndarray:
    valid = np.any(normal != 0, axis=-1)
    out = np.rint((normal + 1.0) * 0.5 * 255).astype(np.uint8)
    out[~valid] = 0
    return out


def seg_colours(seg: np.ndarray, vocabulary: str) -> np.ndarray:
    palette = np.zeros((256, 3), np.uint8)
    colours = schema.vocabulary(vocabulary).palette()
    palette[: len(colours)] = colours
    palette[schema.IGNORE_INDEX] = 255
    return palette[seg]


def keypoint_overlay(sample: Sample) -> np.ndarray:
    image = Image.fromarray(sample.image.copy())
    if sample.pose is None:
        return np.asarray(image)
    draw = ImageDraw.Draw(image)
    radius = max(1.5, sample.width / 256)
    for person in sample.pose.persons:
        kp = np.asarray(person.keypoints)
        for a, b in schema.subset_skeleton(sample.pose.keypoint_set):
            if kp[a, 2] > 0 and kp[b, 2] > 0:
                draw.line([tuple(kp[a, :2]), tuple(kp[b, :2])], fill=(255, 255, 0), width=max(1, int(radius / 2)))
        for x, y, v in kp:
            if v > 0:
                colour = (0, 255, 0) if v == 2 else (255, 64, 64)  # green seen, red hidden
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        draw.rectangle(list(person.bbox), outline=(0, 200, 255))
    return np.asarray(image)


def sheet_row(sample: Sample) -> np.ndarray:
    h, w = sample.height, sample.width
    blank = np.zeros((h, w, 3), np.uint8)
    tiles = [
        sample.image,
        depth_colours(sample.depth) if sample.depth is not None else blank,
        normal_colours(sample.normal) if sample.normal is not None else blank,
        seg_colours(sample.seg, sample.seg_vocabulary) if sample.seg is not None else blank,
        keypoint_overlay(sample),
    ]
    width = max(1, round(w * TILE_HEIGHT / h))
    resized = [np.asarray(Image.fromarray(t).resize((width, TILE_HEIGHT), Image.Resampling.BILINEAR)) for t in tiles]
    return np.concatenate(resized, axis=1)


def contact_sheet(paths: list[str], out_path: str, count: int = 4) -> tuple[int, ReadReport]:
    """Write a sheet of the first `count` good samples; returns (samples drawn, read report with bad ones)."""
    report = ReadReport()
    rows = []
    for sample in iter_samples(paths, policy="skip", report=report):
        rows.append(sheet_row(sample))
        if len(rows) >= count:
            break
    if not rows:
        return 0, report
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(out_path)
    return len(rows), report
