"""The model side of `hv eval TASK --checkpoint` and `hv predict`: a thin adapter over `train.predictor.Predictor`.

    runner = ModelRunner.load("runs/multi/model.safetensors", batch_size=8, flip_test=True)
    keypoints = runner.pose(image, boxes)          # (N, K, 3) [x, y, score] in image pixels
    maps = runner.dense([image])                   # [{"seg": (H, W) uint8, "depth": (H, W), "normal": (H, W, 3)}]

The Predictor (issue 7) owns the inference geometry, the training pipeline's own: top-down crops on the
given boxes with UDP heatmap decoding, dense views that fit the whole image and map back to its pixels,
Sapiens' flip test. Loading goes through `train.models.weights.load_finetuned` first, so a checkpoint whose
weights do not fit its config fails with one clear message before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from train.models.tasks import DENSE_TASKS
from train.models.weights import LoadedModel, load_finetuned


class ModelRunner:
    def __init__(self, loaded: LoadedModel, batch_size: int = 8, flip_test: bool = False, device: str = "cpu") -> None:
        from train.predictor import Predictor

        self.loaded = loaded
        self.spec = loaded.spec
        self.flip_test = flip_test
        self.predictor = Predictor.from_model(
            loaded.model, loaded.spec, device, batch_size=batch_size, flip_test=flip_test
        )
        self.tasks: tuple[str, ...] = tuple(self.predictor.tasks)
        self.input_size = loaded.image_size
        self.keypoint_set: str = self.spec.keypoint_set
        self.vocabulary: str = self.spec.vocabulary

    @classmethod
    def load(cls, checkpoint: str, batch_size: int = 8, flip_test: bool = False, device: str = "cpu") -> ModelRunner:
        return cls(load_finetuned(checkpoint, device="cpu"), batch_size, flip_test, device)

    def pose(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """(N, K, 3) [x, y, score] in the image's continuous pixel coordinates, one row per xyxy box."""
        return self.pose_many([image], [boxes])[0]

    def pose_many(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[Sequence[float]]]) -> list[np.ndarray]:
        """`pose` for several images at once: their crops share forward batches."""
        if "pose" not in self.tasks:
            raise ValueError(f"the model has no pose head (its tasks: {', '.join(self.tasks)})")
        arrays = [np.asarray([[float(v) for v in b[:4]] for b in bs], dtype=np.float64).reshape(-1, 4) for bs in boxes]
        return [
            np.concatenate([p.keypoints, p.scores[..., None]], axis=-1).astype(np.float32)
            for p in self.predictor.pose(list(images), arrays)
        ]

    def dense(self, images: Sequence[np.ndarray], tasks: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
        """Per image {seg: (H, W) uint8 class ids, depth: (H, W) float32 relative, normal: (H, W, 3) float32 unit
        vectors} for the model's dense tasks (or those of `tasks` it has)."""
        wanted = [t for t in (tasks or DENSE_TASKS) if t in self.tasks and t in DENSE_TASKS]
        if not wanted:
            raise ValueError(
                f"the model has no dense head among {list(DENSE_TASKS)} (its tasks: {', '.join(self.tasks)})"
            )
        return [{t: p.maps[t] for t in wanted if t in p.maps} for p in self.predictor.dense(list(images), wanted)]


def map_keypoints(keypoints: np.ndarray, from_set: str, to_set: str) -> np.ndarray:
    """(..., K_from, 3) keypoints of one named subset -> (..., K_to, 3) of another, by keypoint name; points the
    source lacks are (0, 0, 0) = unlabelled."""
    from data_engine import schema

    if from_set == to_set:
        return np.asarray(keypoints)
    position = {name: i for i, name in enumerate(schema.subset_names(from_set))}
    kps = np.asarray(keypoints)
    out = np.zeros((*kps.shape[:-2], len(schema.subset(to_set)), 3), dtype=kps.dtype)
    for j, name in enumerate(schema.subset_names(to_set)):
        if name in position:
            out[..., j, :] = kps[..., position[name], :]
    return out


def describe(runner: ModelRunner) -> dict[str, Any]:
    return {
        "checkpoint": runner.loaded.path,
        "arch": runner.spec.arch,
        "tasks": list(runner.tasks),
        "input_size": list(runner.input_size),
        "flip_test": runner.flip_test,
        "keypoint_set": runner.keypoint_set if "pose" in runner.tasks else None,
        "seg_vocabulary": runner.vocabulary if "seg" in runner.tasks else None,
    }
