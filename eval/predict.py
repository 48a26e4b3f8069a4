"""`hv predict`: run a fine-tuned model on images or shards and draw what it sees.

    hv predict --checkpoint runs/multi/model.safetensors photos/ more.jpg 'val/*.tar' --out preds/
    hv predict --checkpoint runs/pose --boxes boxes.json photos/ --out preds/ flip_test=true
    hv predict --checkpoint runs/pose photos/ --out preds/ box_source=detector detector.name=onnx \\
        detector.weights=yolo.onnx

Inputs are image files, folders of images, or shards (a .tar file, a folder of them is given as a glob).
Person boxes for pose come from `--boxes` (JSON: {image file name, stem or shard key: [[x0, y0, x1, y1(,
score)], ...]}, or COCO detection results [{image_id, bbox: [x, y, w, h], score}], matched by the number in the
file name), else a shard's `json.persons` (what the curation detector recorded), else the whole image;
or from the curation detector itself (`box_source=detector`). OUT gets, per input NAME:

- `pictures/NAME.png`: the image, the skeletons (coloured by keypoint group), the seg overlay with legend, the
  depth colour map and the normal map, side by side;
- `pose/NAME.json`: `keypoint_set`, `persons: [{bbox, keypoints: K x [x, y, score], score, box_source}]`;
- `seg/NAME.png`, `depth/NAME.png`, `normal/NAME.png` in the sample-contract encodings (depth: relative values
  written as if metres, so `hv eval depth`, which aligns scale and shift, reads them directly);
- `coco_results.json` (pose): COCO keypoint results [{image_id, category_id, keypoints, score}] for pycocotools
  and `hv eval pose --pred`; image_id is the number in the file name, else the input's position (index.json);
- `index.json`: every input with its name, and every input that failed with the reason (nothing is dropped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_engine.shards import BadSamplePolicy
from eval.config import BoxSource, PredictConfig, resolve_device

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class PredictInputError(ValueError):
    """An input path, boxes file or config that cannot be used; the message names it."""


@dataclass
class InputImage:
    name: str  # unique output name
    source: str  # file path, or shard path + key
    image: np.ndarray | None  # (H, W, 3) uint8; None when it failed to load
    persons: list[list[float]] | None = None  # boxes the sample carries (json.persons), if any
    error: str | None = None
    key: str | None = None  # shard key


def collect_inputs(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """(image files, shard files) from files, folders (images and shards inside, sorted) and globs."""
    import glob

    images: list[str] = []
    shards: list[str] = []
    for path in paths:
        if any(ch in path for ch in "*?["):
            matches = sorted(glob.glob(path, recursive=True))
        elif os.path.isdir(path):
            matches = sorted(os.path.join(path, n) for n in os.listdir(path) if not n.startswith("."))
        elif os.path.exists(path):
            matches = [path]
        else:
            raise PredictInputError(f"input {path!r} does not exist")
        found = False
        for m in matches:
            if m.lower().endswith(".tar"):
                shards.append(m)
                found = True
            elif m.lower().endswith(IMAGE_SUFFIXES):
                images.append(m)
                found = True
        if not found:
            raise PredictInputError(f"input {path!r} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no .tar shards")
    return images, shards


def read_boxes_file(path: str) -> dict[str, list[list[float]]]:
    """{name: [[x0, y0, x1, y1(, score)], ...]}, validated; errors name the file and the entry."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except OSError as e:
        raise PredictInputError(f"boxes file {path!r}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PredictInputError(f"boxes file {path!r} is not valid JSON: {e}") from None
    if isinstance(obj, list) and all(isinstance(d, dict) for d in obj):  # COCO detection results
        from eval.coco_results import CocoResultsError, detections_by_image

        try:
            return detections_by_image(path, obj)
        except CocoResultsError as e:
            raise PredictInputError(str(e)) from None
    if not isinstance(obj, dict):
        raise PredictInputError(
            f"boxes file {path!r} must be an object {{image name: [[x0, y0, x1, y1], ...]}} "
            "or COCO detection results [{image_id, bbox, score}, ...]"
        )
    for name, boxes in obj.items():
        if not isinstance(boxes, list) or not all(
            isinstance(b, list) and len(b) in (4, 5) and all(isinstance(v, (int, float)) for v in b) for b in boxes
        ):
            raise PredictInputError(f"boxes file {path!r}: entry {name!r} must be a list of [x0, y0, x1, y1(, score)]")
        for b in boxes:
            if not (b[2] > b[0] and b[3] > b[1]):
                raise PredictInputError(
                    f"boxes file {path!r}: entry {name!r} has an empty box {b} (needs x1 > x0, y1 > y0)"
                )
    return obj


def _iter_inputs(images: list[str], shards: list[str], policy: BadSamplePolicy) -> Iterator[InputImage]:
    from data_engine import shards as shard_io
    from data_engine.sample import SampleError, decode_image

    used: set[str] = set()

    def unique(name: str) -> str:
        base, n = name, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        return name

    for path in images:
        name = unique(os.path.splitext(os.path.basename(path))[0])
        try:
            with open(path, "rb") as f:
                image = decode_image(f.read())
            yield InputImage(name, path, image)
        except Exception as e:  # Pillow raises several types for truncated or non-image files
            if policy == BadSamplePolicy.raise_:
                raise PredictInputError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
            yield InputImage(name, path, None, error=f"not a readable image ({type(e).__name__}: {e})")
    for shard in shards:
        report = shard_io.ReadReport()
        try:
            for sample in shard_io.iter_samples([shard], policy=policy, report=report):
                persons = [p["bbox"] for p in sample.meta.get("persons", []) if isinstance(p, dict) and "bbox" in p]
                yield InputImage(unique(sample.key), f"{shard}#{sample.key}", sample.image, persons, key=sample.key)
        except (SampleError, shard_io.ShardError) as e:
            raise PredictInputError(str(e)) from None
        for bad in report.bad:
            name = unique(bad.key or os.path.basename(bad.shard))
            yield InputImage(name, f"{bad.shard}#{bad.key or ''}", None, error=bad.reason)


class _Boxes:
    """Person boxes for one image, by the configured source; returns (boxes xyxy+score, where they came from)."""

    def __init__(self, cfg: PredictConfig, boxes_file: str | None) -> None:
        self.cfg = cfg
        self.table = read_boxes_file(boxes_file) if boxes_file else {}
        self.detector = None
        if cfg.box_source == BoxSource.detector:
            from data_engine.detect import build_detector

            self.detector = build_detector(cfg.detector)
            self.record_threshold = cfg.detector.thresholds()[1]

    def __call__(self, item: InputImage) -> tuple[list[list[float]], str]:
        assert item.image is not None
        h, w = item.image.shape[:2]
        whole = [[0.0, 0.0, float(w), float(h), 1.0]]
        if self.cfg.box_source == BoxSource.image:
            return whole, "image"
        if self.detector is not None:
            found = [list(b) for b in self.detector.detect([item.image])[0] if b[4] >= self.record_threshold]
            return (found, "detector") if found else (whole, "image (detector found nobody)")
        # COCO detection results are keyed by image id: the number in the file name.
        coco_id = str(int(item.name)) if item.name.isdigit() else None
        for name in (os.path.basename(item.source), item.name, item.key, coco_id):
            if name and name in self.table:
                return [[float(v) for v in b] + ([1.0] if len(b) == 4 else []) for b in self.table[name]], "file"
        if item.persons:
            return [[float(v) for v in b[:4]] + [1.0] for b in item.persons], "shard json.persons"
        return whole, "image"


def predict(
    checkpoint: str, inputs: Sequence[str], out_dir: str, cfg: PredictConfig, boxes_file: str | None = None
) -> dict[str, Any]:
    """Predict every input (see the module doc); returns the index written to OUT/index.json."""
    from tqdm import tqdm

    from eval.coco_results import image_id as coco_image_id
    from eval.coco_results import keypoint_result
    from eval.inference import DENSE_TASKS, ModelRunner, describe
    from train.models.weights import load_finetuned

    images, shards = collect_inputs(inputs)
    boxes = _Boxes(cfg, boxes_file)
    loaded = load_finetuned(checkpoint, device="cpu")
    tasks = [t for t in (cfg.tasks or loaded.tasks) if t in loaded.tasks]
    missing = [t for t in cfg.tasks if t not in loaded.tasks]
    if missing:
        raise PredictInputError(f"the model has no {', '.join(missing)} head (its tasks: {', '.join(loaded.tasks)})")
    runner = ModelRunner(loaded, cfg.batch_size, cfg.flip_test, resolve_device(cfg.device))
    dense_tasks = [t for t in tasks if t in DENSE_TASKS]
    os.makedirs(out_dir, exist_ok=True)
    index: dict[str, Any] = {"model": describe(runner), "tasks": tasks, "predicted": [], "failed": []}
    coco_results: list[dict[str, Any]] = []
    batch: list[InputImage] = []

    def run_batch() -> None:
        dense = runner.dense([b.image for b in batch], dense_tasks) if dense_tasks else [{} for _ in batch]
        for item, maps in zip(batch, dense, strict=True):
            entry = {"name": item.name, "source": item.source}
            if "pose" in tasks:
                person_boxes, source = boxes(item)
                keypoints = runner.pose(item.image, [b[:4] for b in person_boxes])
                persons = _write_pose(out_dir, item.name, runner.keypoint_set, person_boxes, keypoints, source, cfg)
                entry.update(persons=len(person_boxes), box_source=source)
                entry["coco_image_id"] = coco_image_id(item.name, len(index["predicted"]) + 1)
                coco_results.extend(
                    keypoint_result(entry["coco_image_id"], k, p["score"])
                    for k, p in zip(keypoints, persons, strict=True)
                )
            else:
                person_boxes, keypoints = [], None
            _write_outputs(out_dir, item, maps, person_boxes, keypoints, runner, cfg)
            index["predicted"].append(entry)
        batch.clear()

    progress = tqdm(total=None, desc="hv predict", unit="img", disable=None)
    for item in _iter_inputs(images, shards, cfg.bad_samples):
        if item.image is None:
            index["failed"].append({"name": item.name, "source": item.source, "reason": item.error})
            continue
        batch.append(item)
        if len(batch) >= cfg.batch_size:
            progress.update(len(batch))
            run_batch()
    if batch:
        progress.update(len(batch))
        run_batch()
    progress.close()
    if "pose" in tasks:
        _write_bytes(os.path.join(out_dir, "coco_results.json"), json.dumps(coco_results).encode())
    tmp = os.path.join(out_dir, "index.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "index.json"))
    return index


def _write_pose(out_dir, name, keypoint_set, person_boxes, keypoints, source, cfg: PredictConfig) -> list[dict]:
    persons = []
    for box, kps in zip(person_boxes, keypoints, strict=True):
        confident = kps[:, 2][kps[:, 2] > cfg.keypoint_threshold]
        persons.append(
            {
                "bbox": [float(v) for v in box[:4]],
                "box_score": float(box[4]),
                "keypoints": np.round(kps.astype(np.float64), 3).tolist(),
                "score": float(confident.mean()) if confident.size else 0.0,
            }
        )
    _write_bytes(
        os.path.join(out_dir, "pose", f"{name}.json"),
        json.dumps({"keypoint_set": keypoint_set, "box_source": source, "persons": persons}).encode(),
    )
    return persons


def _write_outputs(out_dir, item: InputImage, maps, person_boxes, keypoints, runner, cfg: PredictConfig) -> None:
    from data_engine.sample import MAX_DEPTH_M, encode_depth, encode_normal, encode_seg
    from eval.visualize import dense_pictures, display_scale, draw_pose, enlarge, panel, png_bytes

    pictures, titles = [item.image], ["image"]
    if keypoints is not None:
        f = display_scale(item.image.shape[0])  # draw small images enlarged, so the skeleton stays legible
        boxes = [[v * f for v in b[:4]] for b in person_boxes]
        points = [np.concatenate([k[:, :2] * f, k[:, 2:]], axis=1) for k in keypoints]
        big = enlarge(item.image, f)
        pictures.append(draw_pose(big, points, runner.keypoint_set, cfg.keypoint_threshold, boxes))
        titles.append("pose")
    dense, dense_titles = dense_pictures(item.image, maps, runner.vocabulary)
    pictures += dense
    titles += dense_titles
    _write_bytes(os.path.join(out_dir, "pictures", f"{item.name}.png"), png_bytes(panel(pictures, titles)))
    if not cfg.write_maps:
        return
    if "seg" in maps:
        _write_bytes(os.path.join(out_dir, "seg", f"{item.name}.png"), encode_seg(maps["seg"], runner.vocabulary))
    if "depth" in maps:
        depth = np.clip(maps["depth"], 1e-3, MAX_DEPTH_M)  # relative; > 0 so no pixel reads as "no surface"
        _write_bytes(os.path.join(out_dir, "depth", f"{item.name}.png"), encode_depth(depth))
    if "normal" in maps:
        _write_bytes(os.path.join(out_dir, "normal", f"{item.name}.png"), encode_normal(maps["normal"]))


def _write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
