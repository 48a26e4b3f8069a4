"""Pictures of what a model sees, as pure numpy/Pillow functions: uint8 (H, W, 3) RGB in, uint8 RGB out.

    from eval.visualize import draw_pose, seg_with_legend, colorize_depth, normal_to_rgb, panel
    picture = panel([image, draw_pose(image, [kps], "all")], ["input", "pose"])

- `draw_pose`: skeleton links and keypoints of any named subset, coloured by group (body, feet, hands,
  face, extra), for the 308-point Goliath set or fewer.
- `overlay_seg` / `seg_legend` / `seg_with_legend`: class palette over the image, legend of the classes
  that appear.
- `colorize_depth`: relative depth as a viridis colour map (near = bright), background black.
- `normal_to_rgb`: camera-space normals as ((n + 1) / 2) * 255, background black.
- `panel`: pictures side by side with titles; `png_bytes` encodes one.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_engine import schema

GROUP_COLORS: dict[str, tuple[int, int, int]] = {
    "body": (255, 140, 0),
    "feet": (220, 20, 60),
    "left_hand": (0, 200, 80),
    "right_hand": (30, 144, 255),
    "extra": (186, 85, 211),
    "face": (255, 255, 255),
}
# Viridis sampled at 9 even stops (matplotlib's values), interpolated linearly: close enough to the real
# map for a picture, and no matplotlib import on the prediction path.
_VIRIDIS_STOPS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=np.float64,
)


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
    return image


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def keypoint_colors(keypoint_set: str) -> np.ndarray:
    """(K, 3) uint8 colour of each keypoint of the subset, by its Goliath group."""
    kps = schema.keypoints()
    return np.array([GROUP_COLORS[kps[int(i)].group] for i in schema.subset(keypoint_set)], dtype=np.uint8)


def draw_pose(
    image: np.ndarray,
    persons: Sequence[np.ndarray],
    keypoint_set: str = "all",
    min_score: float = 0.3,
    boxes: Sequence[Sequence[float]] | None = None,
    radius: int | None = None,
) -> np.ndarray:
    """Skeletons over a copy of `image`.

    persons: each (K, 3) [x, y, v-or-score] in pixel coordinates (continuous: pixel (0, 0)'s centre is
        (0.5, 0.5)), K = len(subset(keypoint_set)). A point is drawn when its third value > min_score, so
        COCO visibilities (0/1/2) and heatmap scores both work. A link is drawn when both ends are.
    boxes: optional xyxy person boxes drawn in grey.
    """
    image = _check_image(image)
    k = len(schema.subset(keypoint_set))
    colors = keypoint_colors(keypoint_set)
    links = schema.subset_skeleton(keypoint_set)
    h, w = image.shape[:2]
    radius = radius if radius is not None else max(1, round(min(h, w) / 160))
    width = max(1, radius // 2 + 1)
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    for box in boxes or []:
        draw.rectangle([float(v) for v in box[:4]], outline=(160, 160, 160), width=width)
    for p, person in enumerate(persons):
        kp = np.asarray(person, dtype=np.float64)
        if kp.shape != (k, 3):
            raise ValueError(f"person {p} keypoints have shape {kp.shape}, subset {keypoint_set!r} needs ({k}, 3)")
        # Continuous coordinates -> Pillow's pixel-index coordinates (the centre of pixel 0 is 0 there).
        xy = kp[:, :2] - 0.5
        shown = np.isfinite(kp).all(axis=1) & (kp[:, 2] > min_score)
        for a, b in links:
            if shown[a] and shown[b]:
                draw.line([tuple(xy[a]), tuple(xy[b])], fill=tuple(int(c) for c in colors[a]), width=width)
        # Face points are dense: draw them smaller so the face stays readable at 308 points.
        for i in np.flatnonzero(shown):
            r = max(1, radius // 2) if colors[i].tolist() == list(GROUP_COLORS["face"]) else radius
            x, y = xy[i]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in colors[i]))
    return np.asarray(canvas)


def seg_to_rgb(seg: np.ndarray, vocabulary: str = "goliath28") -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) palette colours; ignore (255) and unknown ids are black."""
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"seg must be an (H, W) class-id map, got shape {seg.shape}")
    lut = np.zeros((256, 3), dtype=np.uint8)
    palette = schema.vocabulary(vocabulary).palette()
    lut[: len(palette)] = palette
    return lut[seg.astype(np.uint8)]


def overlay_seg(image: np.ndarray, seg: np.ndarray, vocabulary: str = "goliath28", alpha: float = 0.6) -> np.ndarray:
    """Blend the class palette over the image; ignore pixels and class 0 (background) keep the image."""
    image = _check_image(image)
    if seg.shape != image.shape[:2]:
        raise ValueError(f"seg has shape {seg.shape}, image {image.shape[:2]}")
    colored = seg_to_rgb(seg, vocabulary).astype(np.float32)
    paint = ((seg != 0) & (seg != schema.IGNORE_INDEX))[..., None]
    out = np.where(paint, (1 - alpha) * image.astype(np.float32) + alpha * colored, image.astype(np.float32))
    return np.rint(out).astype(np.uint8)


def seg_legend(vocabulary: str, class_ids: Sequence[int], height: int | None = None, row: int = 16) -> np.ndarray:
    """A white legend: one colour swatch and name per class id, top to bottom; at least `height` tall."""
    vocab = schema.vocabulary(vocabulary)
    ids = [int(c) for c in class_ids if 0 <= int(c) < len(vocab)]
    font = _font(max(8, row - 4))
    text_width = max([int(font.getlength(vocab.classes[c].name)) for c in ids] or [40])
    w = row + 8 + text_width + 8
    h = max(height or 0, row * len(ids) + 8)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, c in enumerate(ids):
        y = 4 + n * row
        draw.rectangle([4, y + 1, 4 + row - 3, y + row - 2], fill=vocab.classes[c].color, outline=(0, 0, 0))
        draw.text((row + 6, y), vocab.classes[c].name, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def legend_row(height: int, shown_height: int = 384, row: int = 16) -> int:
    """Legend row height for a picture `height` tall that `panel` will show `shown_height` tall: `row` pixels
    once shown (a 1024 px image is reduced ~2.7x, which made a fixed 16 px legend unreadable)."""
    return max(row, round(row * height / shown_height))


def seg_with_legend(
    image: np.ndarray, seg: np.ndarray, vocabulary: str = "goliath28", alpha: float = 0.6
) -> np.ndarray:
    """The overlay with a legend of the classes present (background and ignore left out) to its right, its
    text sized to the image (`legend_row`)."""
    overlay = overlay_seg(image, seg, vocabulary, alpha)
    present = [int(c) for c in np.unique(seg) if c not in (0, schema.IGNORE_INDEX)]
    legend = seg_legend(vocabulary, present, height=overlay.shape[0], row=legend_row(overlay.shape[0]))
    return _hconcat([overlay, legend])


def dense_pictures(
    image: np.ndarray, maps: dict[str, np.ndarray], vocabulary: str = "goliath28"
) -> tuple[list[np.ndarray], list[str]]:
    """Pictures and titles of predicted seg / depth / normal maps. Depth and normals are drawn inside the
    person mask (predicted seg not background) when the model segments, else over the whole frame (said so
    in the title): the background's values are the model's guesses and stretched the colour range."""
    pictures: list[np.ndarray] = []
    titles: list[str] = []
    person = None
    if "seg" in maps:
        seg = np.asarray(maps["seg"])
        person = (seg != 0) & (seg != schema.IGNORE_INDEX)
        pictures.append(seg_with_legend(image, seg, vocabulary))
        titles.append("segmentation")
    where = "person" if person is not None else "whole frame"
    if "depth" in maps:
        pictures.append(colorize_depth(maps["depth"], valid=person if person is not None else None))
        titles.append(f"depth (near = bright), {where}")
    if "normal" in maps:
        normal = np.asarray(maps["normal"])
        pictures.append(normal_to_rgb(normal if person is None else np.where(person[..., None], normal, 0.0)))
        titles.append(f"normals, {where}")
    return pictures, titles


def colorize_depth(depth: np.ndarray, valid: np.ndarray | None = None, near_bright: bool = True) -> np.ndarray:
    """(H, W) depth (any unit, relative is fine) -> (H, W, 3) viridis; invalid pixels black.

    valid: defaults to depth > 0 and finite. The range is the 2nd-98th percentile of the valid pixels so
    one outlier does not flatten the picture. No valid pixel gives an all-black picture, not an error.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    valid = (np.isfinite(depth) & (depth > 0)) if valid is None else (np.asarray(valid, bool) & np.isfinite(depth))
    out = np.zeros((*depth.shape, 3), dtype=np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(depth[valid], [2, 98])
    t = np.clip((depth[valid] - lo) / max(hi - lo, 1e-12), 0, 1)
    if near_bright:
        t = 1.0 - t
    out[valid] = colormap(t)
    return out


def colormap(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (..., 3) uint8 viridis colours."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0, 1)
    stops = np.linspace(0, 1, len(_VIRIDIS_STOPS))
    rgb = np.stack([np.interp(t, stops, _VIRIDIS_STOPS[:, c]) for c in range(3)], axis=-1)
    return np.rint(rgb).astype(np.uint8)


def normal_to_rgb(normal: np.ndarray) -> np.ndarray:
    """(H, W, 3) normals (unit or not) -> (H, W, 3) uint8 ((n / |n| + 1) / 2 * 255); zero vectors black."""
    n = np.asarray(normal, dtype=np.float64)
    if n.ndim != 3 or n.shape[2] != 3:
        raise ValueError(f"normal must be (H, W, 3), got shape {n.shape}")
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    valid = (norm[..., 0] > 1e-12) & np.isfinite(norm[..., 0])
    unit = np.where(valid[..., None], n / np.where(norm > 1e-12, norm, 1.0), 0.0)
    rgb = np.rint((unit + 1.0) * 0.5 * 255.0).clip(0, 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def _hconcat(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    x = 0
    for im in images:
        out[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + gap
    return out


def display_scale(height: int, min_height: int = 256) -> float:
    """How much to enlarge a picture of `height` rows so thin skeletons and legends stay legible (>= 1)."""
    return max(1.0, min_height / max(height, 1))


def enlarge(image: np.ndarray, factor: float) -> np.ndarray:
    """Nearest-neighbour enlargement (pixels stay crisp); draw keypoints after it, scaled by the same factor."""
    if factor == 1.0:
        return image
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((round(w * factor), round(h * factor)), Image.NEAREST))


def panel(
    images: Sequence[np.ndarray], titles: Sequence[str] | None = None, max_height: int = 384, min_height: int = 256
) -> np.ndarray:
    """Pictures side by side, each scaled to a common height between min_height and max_height (small inputs are
    enlarged with nearest neighbour, large ones reduced bilinearly), a title above each."""
    if not images:
        raise ValueError("panel needs at least one picture")
    images = [_check_image(im, f"picture {i}") for i, im in enumerate(images)]
    height = max(min_height, min(max_height, max(im.shape[0] for im in images)))
    scaled = []
    for im in images:
        w = max(1, round(im.shape[1] * height / im.shape[0]))
        resample = Image.NEAREST if height > im.shape[0] else Image.BILINEAR
        scaled.append(np.asarray(Image.fromarray(im).resize((w, height), resample)) if im.shape[0] != height else im)
    if titles is None:
        return _hconcat(scaled)
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} pictures")
    bar = 18
    font = _font(12)
    titled = []
    for im, title in zip(scaled, titles, strict=True):
        canvas = Image.new("RGB", (im.shape[1], im.shape[0] + bar), (255, 255, 255))
        canvas.paste(Image.fromarray(im), (0, bar))
        ImageDraw.Draw(canvas).text((2, 2), title, fill=(0, 0, 0), font=font)
        titled.append(np.asarray(canvas))
    return _hconcat(titled)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_check_image(image)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
