"""Run a fine-tuned model on whole images: top-down pose on given person boxes, dense maps at image size.

    runner = ModelRunner(load_finetuned("runs/multi/model.safetensors"), batch_size=8, flip_test=True)
    keypoints = runner.pose(image, boxes)          # (N, K, 3) [x, y, score] in image pixels
    maps = runner.dense([image])                   # [{"seg": (H, W) uint8, "depth": (H, W), "normal": (H, W, 3)}]

The geometry is the fine-tuning pipeline's own (`train.transforms`), run without augmentation, so what the
model saw in training is what it sees here: pose crops by `crop_matrix` (box padded to the input aspect),
UDP heatmap decoding with DARK refinement; dense views fit the whole image into the input (`dense_matrix`),
and each output is warped back to the image through the inverse of that affine (scaled by the head's
output stride). Flip test: the mirrored input runs too and its output is mirrored back (pose channels
and seg classes swapped left/right, normal x negated) before averaging.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from eval.checkpoint import LoadedModel

DENSE_TASKS = ("seg", "depth", "normal")


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class ModelRunner:
    def __init__(self, loaded: LoadedModel, batch_size: int = 8, flip_test: bool = False, device: str = "cpu") -> None:
        from data_engine import schema

        self.loaded = loaded
        self.model = loaded.model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.flip_test = flip_test
        self.cfg = loaded.config
        self.tasks = loaded.tasks
        self.input_size = loaded.image_size
        self.keypoint_set = self.cfg.pose.keypoint_set
        self.vocabulary = self.cfg.seg.vocabulary
        self._pose_flip = schema.subset_flip_indices(self.keypoint_set)
        self._seg_flip = schema.vocabulary(self.vocabulary).flip_lut()[: len(schema.vocabulary(self.vocabulary))]

    # ---------------------------------------------------------------------------------------------- forward

    def _forward(self, crops: np.ndarray, task: str) -> np.ndarray:
        """(B, 3, H, W) normalised float32 -> the task head's output (B, C, h, w) as float32 numpy."""
        import torch

        outs = []
        for part in _batches(len(crops), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[part])).to(self.device)
            rows = torch.arange(x.shape[0], device=self.device)
            with torch.no_grad():
                outs.append(self.model(x, {task: rows})[task].float().cpu().numpy())
        return np.concatenate(outs)

    # ------------------------------------------------------------------------------------------------- pose

    def pose_params(self):
        from train.transforms.pose import TopDownParams

        return TopDownParams(
            input_size=self.input_size, sigma=self.cfg.pose.sigma, bbox_padding=self.cfg.pose.bbox_padding
        )

    def pose_heatmaps(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(heatmaps (N, K, h, w), crop matrices) for the xyxy boxes of one (H, W, 3) uint8 image."""
        from train.transforms import normalize_image, warp
        from train.transforms.pose import crop_matrix, flip_heatmaps

        if "pose" not in self.tasks:
            raise ValueError(f"the model has no pose head (its tasks: {', '.join(self.tasks)})")
        params = self.pose_params()
        matrices = [crop_matrix(tuple(float(v) for v in box[:4]), params)[0] for box in boxes]  # type: ignore[arg-type]
        crops = np.stack([normalize_image(warp(image, m, self.input_size, "linear")) for m in matrices])
        heatmaps = self._forward(crops, "pose")
        if self.flip_test:
            # A mirrored crop is the crop of the mirror: with UDP the heatmap mirror i -> w - 1 - i needs no shift.
            flipped = self._forward(np.ascontiguousarray(crops[..., ::-1]), "pose")
            heatmaps = 0.5 * (heatmaps + flip_heatmaps(flipped, self._pose_flip))
        return heatmaps, matrices

    def pose(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """(N, K, 3) [x, y, score] in the image's continuous pixel coordinates, one row per box."""

        if len(boxes) == 0:
            return np.zeros((0, len(self._pose_flip), 3), np.float32)
        heatmaps, matrices = self.pose_heatmaps(image, boxes)
        return keypoints_from_heatmaps(heatmaps, matrices, self.pose_params())

    # ------------------------------------------------------------------------------------------------ dense

    def dense(self, images: Sequence[np.ndarray], tasks: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
        """Per image {seg: (H, W) uint8 class ids, depth: (H, W) float32 relative (> 0), normal: (H, W, 3)
        float32 unit vectors} for the model's dense tasks (or `tasks`)."""
        from train.transforms import normalize_image, warp
        from train.transforms.dense import DenseParams, dense_matrix

        tasks = [t for t in (tasks or DENSE_TASKS) if t in self.tasks and t in DENSE_TASKS]
        if not tasks:
            raise ValueError(
                f"the model has no dense head among {list(DENSE_TASKS)} (its tasks: {', '.join(self.tasks)})"
            )
        params = DenseParams(input_size=self.input_size)
        matrices = [dense_matrix(im.shape[0], im.shape[1], params) for im in images]
        views = np.stack(
            [normalize_image(warp(im, m, self.input_size, "linear")) for im, m in zip(images, matrices, strict=True)]
        )
        results: list[dict[str, np.ndarray]] = [{} for _ in images]
        for task in tasks:
            out = self._forward(views, task)  # (B, C, h, w)
            if self.flip_test:
                out = 0.5 * (out + self._unflip(task, self._forward(np.ascontiguousarray(views[..., ::-1]), task)))
            for i, (image, matrix) in enumerate(zip(images, matrices, strict=True)):
                back = output_to_image(out[i], matrix, self.input_size, image.shape[:2])
                results[i][task] = self._finish(task, back)
        return results

    def _unflip(self, task: str, out: np.ndarray) -> np.ndarray:
        out = out[..., ::-1]
        if task == "seg":
            return out[:, self._seg_flip]  # the mirrored image's "left arm" logit is this image's right arm
        if task == "normal":
            out = out.copy()
            out[:, 0] *= -1
        return out

    @staticmethod
    def _finish(task: str, back: np.ndarray) -> np.ndarray:
        if task == "seg":
            return back.argmax(axis=-1).astype(np.uint8)
        if task == "depth":
            return np.maximum(back[..., 0], 1e-6).astype(np.float32)
        norm = np.linalg.norm(back, axis=-1, keepdims=True)
        return (back / np.maximum(norm, 1e-12)).astype(np.float32)


def keypoints_from_heatmaps(heatmaps: np.ndarray, matrices: Sequence[np.ndarray], params) -> np.ndarray:
    """(N, K, h, w) heatmaps of N crops and their image -> crop affines -> (N, K, 3) [x, y, score] in image pixels."""
    from train.transforms.pose import decode_heatmaps, heatmap_to_image

    # Network heatmaps are ragged: smooth with a Gaussian about the target's width before DARK refinement.
    kernel = 2 * max(1, round(params.sigma)) + 1
    points, scores = decode_heatmaps(heatmaps, blur_kernel=kernel)
    out = np.zeros((len(matrices), points.shape[1], 3), np.float32)
    for i, matrix in enumerate(matrices):
        out[i, :, :2] = heatmap_to_image(points[i], matrix, params)
        out[i, :, 2] = scores[i]
    return out


def output_to_image(
    output: np.ndarray, matrix: np.ndarray, input_size: tuple[int, int], image_shape: tuple[int, int]
) -> np.ndarray:
    """A head's (C, h, w) output for the view made by `matrix` (image -> input) -> (H, W, C) on the image grid.

    The head sees the input at stride input_h / h, so image -> output is `matrix / stride` (continuous
    coordinates make that a pure scale); its inverse samples the output at every image pixel, bilinearly.
    """
    from train.transforms import invert_affine, warp

    stride = input_size[0] / output.shape[1]
    return warp(output.transpose(1, 2, 0), invert_affine(matrix / stride), image_shape, "linear")


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
        "arch": runner.cfg.model.arch,
        "tasks": list(runner.tasks),
        "input_size": list(runner.input_size),
        "flip_test": runner.flip_test,
        "keypoint_set": runner.keypoint_set if "pose" in runner.tasks else None,
        "seg_vocabulary": runner.vocabulary if "seg" in runner.tasks else None,
    }
