"""COCO and COCO-WholeBody keypoint sets -> contract shards, every image accounted for in a manifest.

    hv import coco person_keypoints_val2017.json val2017/ --out coco_shards

Keypoints are mapped by name into the 308 Goliath points (`keypoint_set` "all"); a point whose name has no
Goliath counterpart (the 68 WholeBody face points, which follow another definition) stays unlabelled.
COCO-WholeBody's extra arrays (`foot_kpts`, `lefthand_kpts`, `righthand_kpts`, `face_kpts`) carry no names in
the file: they get the names of the published WholeBody definition. Every person annotation (not crowd)
becomes a person with its box; its `segmentation`, where given, is drawn into `mask.png` (all persons of
the image together). Coordinates are used as given (COCO's and ours both put the image's top-left corner at
0, 0). Images are stored as received under the one image member `jpg` (see data_engine.curate).

Outputs: `OUT/shards/coco-000000.tar...` and `OUT/manifest.parquet`, one row per image of the file:
accepted (with its shard) or rejected with the reason (file missing, unreadable, size differs from the
file's `width`/`height`, no person annotation).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from data_engine import schema
from data_engine.manifest import status_counts, to_table, write_table_atomic
from data_engine.sample import PersonPose, Pose, Sample, SampleError, key_from_bytes
from data_engine.shards import ShardWriter

SHARD_PREFIX = "coco"
_FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")


def _hand_names(side: str) -> list[str]:
    """COCO-WholeBody's 21 hand points: the root (wrist), then four joints per finger from the palm out."""
    return [f"{side}_hand_root"] + [f"{side}_{finger}{j}" for finger in _FINGERS for j in range(1, 5)]


# COCO-WholeBody's extra keypoint arrays, in the order of its published definition (mmpose's dataset info).
WHOLEBODY_PARTS: tuple[tuple[str, list[str]], ...] = (
    ("foot_kpts", ["left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"]),
    ("face_kpts", [f"face-{i}" for i in range(68)]),
    ("lefthand_kpts", _hand_names("left")),
    ("righthand_kpts", _hand_names("right")),
)


def goliath_index(name: str) -> int | None:
    """The Goliath index of a COCO/WholeBody keypoint name, or None when Goliath has no such point.

    WholeBody counts finger joints from the palm (`thumb1` .. `thumb4` = tip); Goliath names the first
    `thumb_third_joint` and the rest `thumb2` .. `thumb4`. The hand root is the wrist.
    """
    index = schema.keypoint_index()
    for side in ("left", "right"):
        if name == f"{side}_hand_root":
            return index[f"{side}_wrist"]
        for finger in _FINGERS:
            if name == f"{side}_{finger}1":
                return index[f"{side}_{finger}_third_joint"]
    return index.get(name)


class CocoError(ValueError):
    """An annotation file that is not a COCO keypoint set. The message names the file and the field."""


@dataclass
class ImportReport:
    rows: list[dict[str, Any]] = field(default_factory=list)
    unmapped: set[str] = field(default_factory=set)  # keypoint names with no Goliath counterpart
    written: dict[str, str] = field(default_factory=dict)  # key -> the image path it came from
    shards: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return status_counts(to_table(self.rows))


def _person_keypoints(ann: dict[str, Any], body_names: list[str], unmapped: set[str]) -> np.ndarray:
    """One annotation's keypoints -> (308, 3) float32 [x, y, v]; unlabelled points are 0."""
    out = np.zeros((schema.NUM_KEYPOINTS, 3), np.float32)
    arrays = [("keypoints", body_names), *WHOLEBODY_PARTS]
    for field_name, names in arrays:
        values = ann.get(field_name)
        if not values:
            continue
        triplets = np.asarray(values, np.float64).reshape(-1, 3)
        if len(triplets) != len(names):
            got = f"{field_name} has {len(triplets)} points, expected {len(names)}"
            raise CocoError(f"annotation {ann.get('id')}: {got}")
        for name, (x, y, v) in zip(names, triplets, strict=True):
            index = goliath_index(name)
            if index is None:
                unmapped.add(name)
                continue
            if v > 0 and out[index, 2] == 0:  # the body's wrist wins over the hand root when both are given
                out[index] = (x, y, min(int(v), 2))
    return out


def _mask(anns: list[dict[str, Any]], height: int, width: int) -> np.ndarray | None:
    """Union of the persons' segmentations (polygons or RLE), or None when none is given."""
    from pycocotools import mask as mask_utils

    union = np.zeros((height, width), bool)
    found = False
    for ann in anns:
        seg = ann.get("segmentation")
        if not seg:
            continue
        try:
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = seg
            union |= mask_utils.decode(rle).astype(bool)
        except Exception as e:  # pycocotools raises a bare Exception for input it does not take
            raise CocoError(f"annotation {ann.get('id')}: segmentation is neither polygons nor RLE ({e})") from None
        found = True
    return union if found else None


def _load(path: str) -> dict[str, Any]:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CocoError(f"{path}: no such annotation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise CocoError(f"{path}: a COCO file is an object with images, annotations and categories")
    for name in ("images", "annotations", "categories"):
        if not isinstance(data.get(name), list):
            raise CocoError(f"{path}: missing the {name!r} list")
    return data


def _person_category(data: dict[str, Any], path: str) -> tuple[int, list[str]]:
    people = [c for c in data["categories"] if c.get("name") == "person"] or data["categories"][:1]
    if not people:
        raise CocoError(f"{path}: no categories")
    names = list(people[0].get("keypoints") or schema.COCO17_NAMES)
    return people[0].get("id"), names


def import_coco(
    annotations: str, images_dir: str, out: str, max_count: int = 1000, log: Callable[[str], None] = print
) -> ImportReport:
    """Write the keypoint set into `out/shards` and `out/manifest.parquet`; returns the report."""
    data = _load(annotations)
    category_id, body_names = _person_category(data, annotations)
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        if ann.get("category_id", category_id) == category_id:
            by_image[ann.get("image_id")].append(ann)
    report = ImportReport()
    with ShardWriter(os.path.join(out, "shards", SHARD_PREFIX), max_count=max_count) as writer:
        for entry in data["images"]:
            row = _import_image(entry, by_image.get(entry.get("id"), []), images_dir, body_names, writer, report)
            report.rows.append(row)
    report.shards = [s.path for s in writer.shards]
    write_table_atomic(to_table(report.rows), os.path.join(out, "manifest.parquet"))
    counts = report.counts()
    log(f"import coco: {len(report.rows)} images: {counts['accepted']} accepted, {counts['rejected']} rejected")
    if report.unmapped:
        log(f"import coco: {len(report.unmapped)} keypoint names have no Goliath point and stay unlabelled")
    return report


def _import_image(
    entry: dict[str, Any],
    anns: list[dict[str, Any]],
    images_dir: str,
    body_names: list[str],
    writer: ShardWriter,
    report: ImportReport,
) -> dict[str, Any]:
    path = os.path.join(images_dir, str(entry.get("file_name", "")))
    row: dict[str, Any] = {"uri": path, "status": "rejected"}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return {**row, "reason": f"cannot read the image: {e.strerror or e}"}
    row["key"], row["bytes"] = key_from_bytes(data), len(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            image_format = img.format
            rgb = np.asarray(img.convert("RGB"))
    except Exception as e:  # Pillow raises several types for broken files
        return {**row, "reason": f"unreadable image: {type(e).__name__}: {e}"}
    height, width = rgb.shape[:2]
    row["width"], row["height"] = width, height
    if (entry.get("width"), entry.get("height")) != (width, height):
        return {**row, "reason": f"image is {width}x{height}, the file says {entry.get('width')}x{entry.get('height')}"}
    persons = [a for a in anns if not a.get("iscrowd")]
    if not persons:
        return {**row, "reason": "no person annotation"}
    try:
        pose = Pose("all", [_pose_person(a, body_names, report.unmapped) for a in persons])
        mask = _mask(persons, height, width)
    except CocoError as e:
        return {**row, "reason": str(e)}
    except (ValueError, TypeError, KeyError) as e:  # non-numeric points, broken polygons or RLE
        ids = [a.get("id") for a in persons]
        return {**row, "reason": f"annotations {ids}: unusable ({type(e).__name__}: {e})"}
    sample = Sample(
        key=row["key"],
        image=rgb,
        meta={
            "source": {"uri": path, "sha256": hashlib.sha256(data).hexdigest(), "coco_image_id": entry.get("id")},
            "persons": [{"bbox": list(p.bbox), "score": 1.0, "detector": "coco"} for p in pose.persons],
        },
        pose=pose,
        mask=mask,
        image_bytes=data if image_format in ("JPEG", "PNG") else None,
        image_format="jpg",  # data_engine.curate_write.IMAGE_MEMBER: one image member name for every sample
    )
    if sample.image_bytes is None:  # another format: stored as PNG, under the same member name
        sample.image_bytes = _png(rgb)
    if row["key"] in report.written:  # the same bytes under two entries: one sample, the other says so
        first = report.written[row["key"]]
        return {**row, "status": "duplicate", "reason": f"same bytes as {first}", "duplicate_of": row["key"]}
    try:
        shard = writer.write(sample)
    except SampleError as e:  # non-finite points, a box of NaN, ...: the contract's own check
        return {**row, "reason": str(e)}
    report.written[row["key"]] = path
    return {**row, "status": "accepted", "shard": shard, "num_persons": len(persons), "detector": "coco"}


def _pose_person(ann: dict[str, Any], body_names: list[str], unmapped: set[str]) -> PersonPose:
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise CocoError(f"annotation {ann.get('id')}: bbox must be [x, y, w, h]")
    x, y, w, h = (float(v) for v in bbox)
    return PersonPose(bbox=(x, y, x + w, y + h), keypoints=_person_keypoints(ann, body_names, unmapped))


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------- COCO ground truth out


def gt_category(keypoint_set: str) -> dict[str, Any]:
    """The COCO `person` category of a keypoint subset, with its skeleton (COCO links count from 1)."""
    return {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": schema.subset_names(keypoint_set),
        "skeleton": [[a + 1, b + 1] for a, b in schema.subset_skeleton(keypoint_set)],
    }


def gt_annotation(
    annotation_id: int,
    image_id: int,
    bbox: tuple[float, ...],
    keypoints: np.ndarray,
    area: float | None = None,
    area_source: str = "box",
) -> dict[str, Any]:
    """One person as a COCO keypoint annotation; `keypoints` (K, 3) of the category's subset, unlabelled = 0.

    `area` scales the person's OKS (COCO: its segmentation area; `eval.model_eval.person_area` gives the mask
    pixels in the box); None: the box area. `area_source` ("mask" or "box") is ours: pycocotools ignores it,
    `eval.metrics.pose.pose_metrics` reports it as `oks_area`."""
    kps = np.asarray(keypoints, np.float64).copy()
    kps[kps[:, 2] == 0, :2] = 0  # COCO: unlabelled points are (0, 0, 0)
    x0, y0, x1, y1 = (float(v) for v in bbox)
    if area is None:
        area, area_source = max(x1 - x0, 0.0) * max(y1 - y0, 0.0), "box"
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "keypoints": kps.reshape(-1).tolist(),
        "num_keypoints": int((kps[:, 2] > 0).sum()),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": area,
        "area_source": area_source,
        "iscrowd": 0,
    }
