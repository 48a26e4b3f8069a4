"""Conversions between our labels and Label Studio results (pure functions, no server).

Coordinates: Label Studio stores a point as percent of the image's width and height, measured from the
image's top-left corner, the same continuous convention as DESIGN.md (the centre of pixel (row 0,
col 0) is (0.5, 0.5)), so the conversion is a plain scale: x_px = x_pct / 100 * W.

Brush masks: Label Studio's own RLE of the RGBA layer (`label_studio_sdk.converter.brush`); a pixel is
painted when its alpha is >= 128 (the editor anti-aliases stroke edges into partial alpha).

Overlapping brush regions (`SegOverlap`): "last" (default) paints regions in result order, so a later
stroke covers an earlier one, as the annotator saw it on screen; "smallest" paints larger regions first,
so a thin part (a hand over the torso) survives a sloppy big stroke. Pixels no region paints are 255.

Keypoints belong to a person box by, in order: a relation drawn between them, else the smallest box
containing the point, else the nearest box. Without any box, all keypoints form one person whose box is
their extent. Problems found on the way are returned as `Problem`s, never dropped silently.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from annotation import labeling
from annotation.rle import decode_rle, encode_mask
from data_engine import schema
from data_engine.sample import PersonPose, Pose

SegOverlap = Literal["last", "smallest"]
POINT_WIDTH_PCT = 0.4  # the drawn size of a keypoint in Label Studio; not a label, only a look
ALPHA_THRESHOLD = 128


@dataclass(frozen=True)
class Problem:
    """One validation finding in one annotation: `kind` is stable for counting, `detail` for people."""

    kind: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


# ---------------------------------------------------------------------------------------- coordinates


def percent_to_pixels(x_pct: float, y_pct: float, width: int, height: int) -> tuple[float, float]:
    return x_pct / 100.0 * width, y_pct / 100.0 * height


def pixels_to_percent(x: float, y: float, width: int, height: int) -> tuple[float, float]:
    return x / width * 100.0, y / height * 100.0


def rectangle_to_bbox(value: dict[str, Any], width: int, height: int) -> tuple[float, float, float, float]:
    """A RectangleLabels value (percent, rotated about its top-left corner) -> axis-aligned xyxy pixels."""
    x0, y0 = percent_to_pixels(float(value["x"]), float(value["y"]), width, height)
    w, h = float(value["width"]) / 100.0 * width, float(value["height"]) / 100.0 * height
    angle = math.radians(float(value.get("rotation", 0.0) or 0.0))
    if angle == 0.0:
        return x0, y0, x0 + w, y0 + h
    c, s = math.cos(angle), math.sin(angle)
    xs = [x0 + dx * c - dy * s for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y0 + dx * s + dy * c for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    return min(xs), min(ys), max(xs), max(ys)


def bbox_to_rectangle(bbox: tuple[float, float, float, float], width: int, height: int) -> dict[str, float]:
    x0, y0, x1, y1 = bbox
    x, y = pixels_to_percent(x0, y0, width, height)
    return {"x": x, "y": y, "width": (x1 - x0) / width * 100.0, "height": (y1 - y0) / height * 100.0, "rotation": 0.0}


# ----------------------------------------------------------------------------------------- pose <-> LS


def _region(region_id: str, from_name: str, kind: str, value: dict, width: int, height: int) -> dict[str, Any]:
    return {
        "id": region_id,
        "from_name": from_name,
        "to_name": labeling.IMAGE,
        "type": kind,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": value,
    }


def pose_to_results(pose: Pose, width: int, height: int) -> list[dict[str, Any]]:
    """Label Studio results for a Pose: a person box per person, a keypoint region per labelled keypoint
    (v > 0), and an `occluded` choice on each v = 1 keypoint. Region ids are p<person>k<index>."""
    kps = schema.keypoints()
    members = schema.subset(pose.keypoint_set)
    control_of = labeling.keypoint_panel_of(pose.keypoint_set)
    results: list[dict[str, Any]] = []
    for p, person in enumerate(pose.persons):
        results.append(
            _region(
                f"p{p}",
                labeling.PERSON,
                "rectanglelabels",
                {**bbox_to_rectangle(person.bbox, width, height), "rectanglelabels": [labeling.PERSON]},
                width,
                height,
            )
        )
        for row, index in enumerate(members):
            x, y, v = (float(t) for t in person.keypoints[row])
            if v <= 0:
                continue
            k = kps[int(index)]
            x_pct, y_pct = pixels_to_percent(x, y, width, height)
            point = {"x": x_pct, "y": y_pct, "width": POINT_WIDTH_PCT}
            region_id = f"p{p}k{int(index)}"
            control = control_of[k.name]
            results.append(
                _region(region_id, control, "keypointlabels", {**point, "keypointlabels": [k.name]}, width, height)
            )
            if v == 1:
                choice = {**point, "choices": [labeling.OCCLUDED]}
                results.append(_region(region_id, labeling.VISIBILITY, "choices", choice, width, height))
    return results


@dataclass
class _Point:
    region_id: str
    name: str
    x: float
    y: float


def results_to_pose(
    results: list[dict[str, Any]], width: int, height: int, keypoint_set: str
) -> tuple[Pose, list[Problem]]:
    """Parse one annotation's results into a Pose over `keypoint_set` (see the module docstring)."""
    problems: list[Problem] = []
    position = {name: i for i, name in enumerate(schema.subset_names(keypoint_set))}
    boxes: dict[str, tuple[float, float, float, float]] = {}
    points: list[_Point] = []
    occluded: set[str] = set()
    relations: list[tuple[str, str]] = []
    for r in results:
        kind = str(r.get("type", "")).lower()
        value = r.get("value") or {}
        try:
            if kind == "rectanglelabels":
                boxes[str(r["id"])] = rectangle_to_bbox(value, width, height)
            elif kind == "keypointlabels":
                for name in value.get("keypointlabels", []):
                    x, y = percent_to_pixels(float(value["x"]), float(value["y"]), width, height)
                    points.append(_Point(str(r["id"]), str(name), x, y))
            elif kind == "choices" and r.get("from_name") == labeling.VISIBILITY:
                if labeling.OCCLUDED in value.get("choices", []):
                    occluded.add(str(r["id"]))
            elif kind == "relation":
                relations.append((str(r["from_id"]), str(r["to_id"])))
        except (KeyError, TypeError, ValueError) as e:
            problems.append(Problem("malformed_region", f"region {r.get('id')!r} of type {kind!r}: {e!r}"))
    linked = {a: b for a, b in relations if b in boxes}
    linked.update({b: a for a, b in relations if a in boxes})

    box_ids = list(boxes)
    assigned: dict[str, list[_Point]] = defaultdict(list)
    for pt in points:
        if pt.name not in position:
            problems.append(Problem("unknown_label", f"keypoint label {pt.name!r} is not in subset {keypoint_set!r}"))
            continue
        if not (0.0 <= pt.x <= width and 0.0 <= pt.y <= height):
            problems.append(
                Problem("outside_image", f"{pt.name} at ({pt.x:.1f}, {pt.y:.1f}) is outside the {width}x{height} image")
            )
        assigned[_owner(pt, boxes, linked) if box_ids else "_"].append(pt)

    persons: list[PersonPose] = []
    owners = box_ids or (["_"] if points else [])
    for owner in owners:
        kp = np.zeros((len(position), 3), dtype=np.float32)
        seen: set[str] = set()
        for pt in assigned.get(owner, []):
            if pt.name in seen:
                problems.append(Problem("duplicate_label", f"{pt.name} is placed twice for person {owner!r}"))
            seen.add(pt.name)
            # A duplicate keeps the later placement: results are in the order the annotator made them.
            kp[position[pt.name]] = (pt.x, pt.y, 1.0 if pt.region_id in occluded else 2.0)
        if owner in boxes:
            bbox = boxes[owner]
            if not seen:
                problems.append(Problem("box_without_keypoints", f"person box {owner!r} has no keypoints"))
        else:
            labelled = kp[kp[:, 2] > 0]
            bbox = (
                float(labelled[:, 0].min()),
                float(labelled[:, 1].min()),
                float(labelled[:, 0].max()),
                float(labelled[:, 1].max()),
            )
        persons.append(PersonPose(bbox=bbox, keypoints=kp))
    return Pose(keypoint_set=keypoint_set, persons=persons), problems


def _owner(pt: _Point, boxes: dict[str, tuple[float, float, float, float]], linked: dict[str, str]) -> str:
    if pt.region_id in linked:
        return linked[pt.region_id]
    containing = [
        (abs((b[2] - b[0]) * (b[3] - b[1])), box_id)
        for box_id, b in boxes.items()
        if b[0] <= pt.x <= b[2] and b[1] <= pt.y <= b[3]
    ]
    if containing:
        return min(containing)[1]

    def distance(b: tuple[float, float, float, float]) -> float:
        dx = max(b[0] - pt.x, 0.0, pt.x - b[2])
        dy = max(b[1] - pt.y, 0.0, pt.y - b[3])
        return math.hypot(dx, dy)

    return min(boxes, key=lambda box_id: distance(boxes[box_id]))


# ------------------------------------------------------------------------------------------ seg <-> LS


def seg_to_results(seg: np.ndarray, vocabulary: str) -> list[dict[str, Any]]:
    """One brush region per class present in `seg` (H, W) uint8; 255 (ignore) is left unpainted."""
    vocab = schema.vocabulary(vocabulary)
    height, width = seg.shape
    results = []
    for class_id in np.unique(seg):
        if class_id == schema.IGNORE_INDEX or class_id >= len(vocab):
            continue
        rle = encode_mask(seg == class_id)
        value = {"format": "rle", "rle": rle, "brushlabels": [vocab.classes[int(class_id)].name]}
        results.append(_region(f"c{int(class_id)}", labeling.SEG, "brushlabels", value, width, height))
    return results


def results_to_seg(
    results: list[dict[str, Any]], width: int, height: int, vocabulary: str, overlap: SegOverlap = "last"
) -> tuple[np.ndarray, list[Problem]]:
    """Decode the brush regions into an (H, W) uint8 class map, 255 where nothing is painted."""
    vocab = schema.vocabulary(vocabulary)
    class_of = {name: i for i, name in enumerate(vocab.names)}
    problems: list[Problem] = []
    layers: list[tuple[int, np.ndarray]] = []
    for r in results:
        if str(r.get("type", "")).lower() != "brushlabels":
            continue
        value = r.get("value") or {}
        names = value.get("brushlabels") or []
        if len(names) != 1 or names[0] not in class_of:
            problems.append(Problem("unknown_label", f"brush region {r.get('id')!r} has labels {names!r}"))
            continue
        if value.get("format", "rle") != "rle" or "rle" not in value:
            problems.append(Problem("malformed_region", f"brush region {r.get('id')!r} has no RLE mask"))
            continue
        try:
            rgba = decode_rle(value["rle"])
        except (ValueError, IndexError) as e:
            problems.append(Problem("malformed_region", f"brush region {r.get('id')!r}: cannot decode RLE ({e})"))
            continue
        if rgba.size != width * height * 4:
            problems.append(
                Problem(
                    "size_mismatch",
                    f"brush region {r.get('id')!r} holds {rgba.size // 4} pixels, the image has {width}x{height}",
                )
            )
            continue
        layers.append((class_of[names[0]], rgba.reshape(height, width, 4)[:, :, 3] >= ALPHA_THRESHOLD))
    if overlap == "smallest":
        layers.sort(key=lambda layer: -int(layer[1].sum()))  # stable: equal areas keep result order
    seg = np.full((height, width), schema.IGNORE_INDEX, dtype=np.uint8)
    for class_id, mask in layers:
        seg[mask] = class_id
    return seg, problems
