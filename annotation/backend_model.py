"""What the ML backend computes: Label Studio tasks in, predictions in our projects' control names out.

The HTTP side is annotation/backend.py. A project is served when its labeling config is one
`hv annotate config` makes (pose over a keypoint subset, seg over a vocabulary, bbox) and the checkpoint has
the head it needs (pose and bbox: the pose head; seg: the seg head over the same vocabulary). Images are read
from the media root that `push` copies them to (`/data/local-files/?d=...` task URLs), never from a URL or
path elsewhere; a task the backend cannot serve fails the request with a `BackendRequestError` naming it.
"""

from __future__ import annotations

import threading
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from annotation import convert, labeling
from annotation.errors import AnnotationError
from annotation.model_predictor import checkpoint_version, load_model, predictor_for
from annotation.predict import prediction_results
from annotation.push import project_kind
from data_engine import schema
from data_engine.sample import Pose, Sample

LOCAL_FILES_PATH = "/data/local-files/"
MAX_PIXELS = 64_000_000  # a task image beyond this is refused before decoding (a decompression bomb)


class BackendRequestError(AnnotationError):
    """A request the backend cannot serve (answered HTTP 400 with this message; the service goes on)."""


def served_config(label_config: str) -> tuple[labeling.TaskType, str]:
    """(kind, keypoint subset for pose and bbox / vocabulary for seg / "" for bbox) of a labeling config."""
    try:
        kind = project_kind(label_config)
        root = ET.fromstring(label_config)
    except (AnnotationError, ET.ParseError) as e:
        raise BackendRequestError(f"label config not served: {e}") from None
    if kind == "pose":
        labels = [lab for control in root.iter("KeyPointLabels") for lab in control.iter("Label")]
        try:
            names = [lab.get("value") for lab in sorted(labels, key=lambda lab: int(lab.get("model_index", "")))]
        except ValueError:
            raise BackendRequestError("label config not served: keypoint labels without model_index") from None
        for subset in schema.SUBSET_NAMES:
            if schema.subset_names(subset) == names:
                return kind, subset
        raise BackendRequestError("label config not served: its keypoints are not a keypoint subset of the schema")
    if kind == "seg":
        names = [lab.get("value") for control in root.iter("BrushLabels") for lab in control.iter("Label")]
        for vocab in schema.VOCABULARY_NAMES:
            if [c.name for c in schema.vocabulary(vocab).classes] == names:
                return kind, vocab
        raise BackendRequestError("label config not served: its brush labels are not a class vocabulary")
    return kind, ""


def image_path(task: dict[str, Any], media_root: Path) -> Path:
    """The file behind a task's `/data/local-files/?d=REL` image, inside `media_root` (no `..` escapes)."""
    data = task.get("data")
    url = data.get(labeling.IMAGE) if isinstance(data, dict) else None
    name = f"task {task.get('id')}"
    if not isinstance(url, str):
        raise BackendRequestError(f"{name}: no `{labeling.IMAGE}` in its data")
    parsed = urllib.parse.urlparse(url)
    relative = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
    if parsed.path != LOCAL_FILES_PATH or not relative:
        raise BackendRequestError(
            f"{name}: image {url[:200]!r} is not a local file (the backend reads {LOCAL_FILES_PATH})"
        )
    root = media_root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise BackendRequestError(f"{name}: image {relative[:200]!r} is outside the media root")
    if not path.is_file():
        raise BackendRequestError(f"{name}: image {relative[:200]!r} not found under the media root {root}")
    return path


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; the header's size is checked against MAX_PIXELS before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise BackendRequestError(f"image {path.name} is {img.width}x{img.height}, over {MAX_PIXELS} pixels")
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise BackendRequestError(f"image {path.name} cannot be decoded ({type(e).__name__})") from None


def task_sample(task: dict[str, Any], media_root: Path) -> Sample:
    data = task["data"]
    persons = data.get("persons") if isinstance(data.get("persons"), list) else []
    boxes = [p for p in persons if isinstance(p, dict) and _is_box(p.get("bbox"))]
    key = str(data.get("key") or f"task{task.get('id')}")
    return Sample(key=key, image=read_image(image_path(task, media_root)), meta={"persons": boxes})


def _is_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)


class BackendModel:
    """One checkpoint serving pose, seg and bbox projects; predictions are serialised (one model, many threads)."""

    def __init__(self, checkpoint: str, media_root: Path, device: str = "cpu", keypoint_threshold: float = 0.3):
        self.model = load_model(checkpoint, device)
        self.device = device
        self.model_version = checkpoint_version(checkpoint)
        self.media_root = media_root
        self.keypoint_threshold = keypoint_threshold
        self._lock = threading.Lock()

    def reload(self, checkpoint: str, model_version: str | None = None) -> None:
        """Serve another checkpoint (a loop cycle's new model); requests in flight finish with the old one."""
        model = load_model(checkpoint, self.device)
        with self._lock:
            self.model = model
            self.model_version = model_version or checkpoint_version(checkpoint)

    def check_served(self, label_config: str) -> tuple[labeling.TaskType, str]:
        kind, spec = served_config(label_config)
        head = "seg" if kind == "seg" else "pose"
        if head not in self.model.tasks:
            raise BackendRequestError(
                f"this checkpoint has no {head} head for a {kind} project (its tasks: {', '.join(self.model.tasks)})"
            )
        if kind == "seg" and list(self.model.class_names) != [c.name for c in schema.vocabulary(spec).classes]:
            raise BackendRequestError(f"the model's classes are not the project's vocabulary {spec}")
        return kind, spec

    def predict(self, tasks: list[dict[str, Any]], label_config: str) -> list[dict[str, Any]]:
        """One prediction per task: {result, score in [0, 1], model_version}."""
        kind, spec = self.check_served(label_config)
        if not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
            raise BackendRequestError("every task must be an object with a `data` object")
        samples = [task_sample(t, self.media_root) for t in tasks]  # every image checked before any inference
        out = []
        with self._lock:  # the model and its version together: `reload` swaps both under this lock
            predictor = predictor_for(self.model, kind, self.keypoint_threshold)
            for sample in samples:
                prediction = predictor(sample)
                if kind == "bbox":
                    assert prediction.pose is not None
                    result = _box_results(prediction.pose, sample)
                else:
                    task_data = {"keypoint_set": spec, "vocabulary": spec}
                    result = prediction_results(prediction, kind, task_data, sample)
                score = min(max(float(prediction.score), 0.0), 1.0)
                out.append({"result": result, "score": score, "model_version": self.model_version})
        return out


def _box_results(pose: Pose, sample: Sample) -> list[dict[str, Any]]:
    """Only the person boxes of a pose (a bbox project has no keypoint controls)."""
    return [r for r in convert.pose_to_results(pose, sample.width, sample.height) if r["from_name"] == labeling.PERSON]
