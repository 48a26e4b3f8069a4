"""Person detectors behind one interface: reusable by curation, `hv predict` and benchmarks.

    detector = build_detector(cfg.detector)          # HogDetector | OnnxYoloDetector
    boxes = detector.detect([rgb, ...])              # per image: [(x0, y0, x1, y1, score), ...] in its pixels

Backends:
- `hog`: OpenCV's HOG + linear SVM people detector (`cv2.HOGDescriptor_getDefaultPeopleDetector`, present in
  opencv-python-headless < 4.13). Scores are SVM margins. It needs no weights and finds few people: use it to
  get going offline, not for a real corpus.
- `onnx`: a YOLO-style person detector exported to ONNX, run by onnxruntime from a local file. Contract:
  one input `(N, 3, S, S)` float32, RGB scaled to [0, 1], the image letterboxed into S x S (resized to fit,
  centred, padded with grey 114); one output laid out as `detector.onnx_layout` says (see OnnxLayout), boxes
  as centre x, centre y, width, height in input pixels. Class `detector.person_class` is the person. Boxes are
  filtered by score, suppressed by IoU (greedy NMS at `detector.nms_iou`) and mapped back to image pixels.

This module imports only numpy and the detector config at module level (OpenCV / onnxruntime when a detector is
built); the Ray Data stage that runs a detector over curation batches is `data_engine.detect_stage`.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from data_engine.curate_config import DetectorConfig, DetectorName, OnnxLayout

Box = tuple[float, float, float, float, float]  # x0, y0, x1, y1, score
_LETTERBOX_FILL = 114


class DetectorError(RuntimeError):
    """The detector cannot be built or its model does not follow the documented contract (names the file)."""


class PersonDetector(Protocol):
    name: str

    def detect(self, images: list[np.ndarray]) -> list[list[Box]]:
        """(H, W, 3) uint8 RGB images -> per image, person boxes in that image's pixels."""
        ...


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression. boxes (M, 4) xyxy, scores (M,) -> kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return keep


class HogDetector:
    name = "hog"

    def __init__(self, cfg: DetectorConfig) -> None:
        import cv2

        if not hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector"):
            raise DetectorError(
                f"OpenCV {cv2.__version__} has no HOG people detector (removed in 4.13): "
                "install opencv-python-headless<4.13"
            )
        self.cfg = cfg
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def detect(self, images: list[np.ndarray]) -> list[list[Box]]:
        out = []
        stride = (self.cfg.hog_win_stride, self.cfg.hog_win_stride)
        for rgb in images:
            if rgb.shape[0] < 128 or rgb.shape[1] < 64:  # smaller than one detection window
                out.append([])
                continue
            rects, weights = self.hog.detectMultiScale(
                rgb, hitThreshold=-1.0, winStride=stride, padding=(8, 8), scale=self.cfg.hog_scale
            )
            if len(rects) == 0:
                out.append([])
                continue
            xyxy = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
            xyxy[:, 2:] += xyxy[:, :2]
            scores = np.asarray(weights, dtype=np.float64).reshape(-1)
            keep = nms(xyxy, scores, self.cfg.nms_iou)
            out.append([(*map(float, xyxy[i]), float(scores[i])) for i in keep])
        return out


class OnnxYoloDetector:
    name = "onnx"

    def __init__(self, cfg: DetectorConfig) -> None:
        import onnxruntime as ort

        self.cfg = cfg
        path = cfg.weights
        if not os.path.isfile(path):
            raise DetectorError(f"detector.weights {path!r}: no such file (an ONNX person detector is needed)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(cfg.num_cpus))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if cfg.num_gpus > 0 and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as e:
            raise DetectorError(
                f"detector.weights {path!r}: onnxruntime cannot load it ({type(e).__name__}: {e})"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [i.shape for i in inputs]
            raise DetectorError(f"{path}: expected one (N, 3, S, S) input, the model has {shapes}")
        shape = inputs[0].shape
        self.input_name = inputs[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        side = shape[2] if isinstance(shape[2], int) else cfg.onnx_input_size
        if isinstance(shape[3], int) and shape[3] != side:
            raise DetectorError(f"{path}: input must be square (N, 3, S, S), got {shape}")
        self.side = int(side)
        self.output_shape = outputs[0].shape

    def _letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        import cv2

        h, w = rgb.shape[:2]
        r = self.side / max(h, w)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))
        resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA)
        canvas = np.full((self.side, self.side, 3), _LETTERBOX_FILL, dtype=np.uint8)
        pad_x, pad_y = (self.side - nw) / 2, (self.side - nh) / 2
        canvas[int(pad_y) : int(pad_y) + nh, int(pad_x) : int(pad_x) + nw] = resized
        return canvas, r, float(int(pad_x)), float(int(pad_y))

    def detect(self, images: list[np.ndarray]) -> list[list[Box]]:
        if not images:
            return []
        boxed = [self._letterbox(im) for im in images]
        tensor = np.stack([b[0] for b in boxed]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (N, 3, S, S)
        step = self.fixed_batch or len(images)
        outputs = [
            self.session.run(None, {self.input_name: tensor[i : i + step]})[0] for i in range(0, len(images), step)
        ]
        raw = np.concatenate(outputs, axis=0)
        return [self._decode(raw[i], *boxed[i][1:], images[i].shape) for i in range(len(images))]

    def _decode(self, pred: np.ndarray, r: float, pad_x: float, pad_y: float, shape: tuple[int, ...]) -> list[Box]:
        """One image's raw output -> person boxes in the image's pixels."""
        cfg = self.cfg
        pred = np.asarray(pred, dtype=np.float64)
        if pred.ndim != 2:
            raise DetectorError(f"{cfg.weights}: output {self.output_shape} is not (N, A, 5 + C) or (N, 4 + C, A)")
        if cfg.onnx_layout == OnnxLayout.yolov8:
            pred = pred.T  # (4 + C, A) -> (A, 4 + C)
            first_class = 4
            objectness = 1.0
        else:
            first_class = 5
            objectness = pred[:, 4] if pred.shape[1] > 4 else 0.0
        num_classes = pred.shape[1] - first_class
        if num_classes <= cfg.person_class:
            raise DetectorError(
                f"{cfg.weights}: output {self.output_shape} has {max(num_classes, 0)} classes under layout "
                f"{cfg.onnx_layout.value}; detector.person_class={cfg.person_class} is not among them"
            )
        scores = objectness * pred[:, first_class + cfg.person_class]
        _, record_threshold = cfg.thresholds()
        chosen = scores >= record_threshold
        if not chosen.any():
            return []
        cx, cy, bw, bh = (pred[chosen, j] for j in range(4))
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        xyxy[:, [0, 2]] = np.clip((xyxy[:, [0, 2]] - pad_x) / r, 0, shape[1])
        xyxy[:, [1, 3]] = np.clip((xyxy[:, [1, 3]] - pad_y) / r, 0, shape[0])
        chosen_scores = scores[chosen]
        keep = nms(xyxy, chosen_scores, cfg.nms_iou)
        return [(*map(float, xyxy[i]), float(chosen_scores[i])) for i in keep]


def build_detector(cfg: DetectorConfig) -> PersonDetector:
    if cfg.name == DetectorName.hog:
        return HogDetector(cfg)
    if cfg.name == DetectorName.onnx:
        return OnnxYoloDetector(cfg)
    raise DetectorError(f"no detector to build for {cfg.name.value!r}")
