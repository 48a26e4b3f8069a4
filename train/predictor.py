"""Predictions from a fine-tuned checkpoint, for other packages (eval, annotation pre-labels, the demo).

    from train.predictor import Predictor
    predictor = Predictor("runs/pose/model.safetensors")          # or the run folder; device="cuda"
    poses = predictor.pose(images, boxes)     # images: list of (H, W, 3) uint8 RGB; boxes: list of (N_i, 4) xyxy
    poses[0].keypoints, poses[0].scores       # (N_0, K, 2) image pixels, (N_0, K) heatmap peaks in [0, ~1]
    dense = predictor.dense(images)           # one DensePrediction per image, at the image's own size:
    dense[0].seg, dense[0].depth, dense[0].normal   # (H, W) uint8 class ids, (H, W) float32, (H, W, 3) float32
    predictor.keypoint_names, predictor.class_names, predictor.tasks

The checkpoint is the `model.safetensors` a fine-tuning run writes (or `hv train export-weights RUN`): fp32
weights with the resolved config in the header, so it needs no other file. Images of any size: pose crops
each box to the model's input (as in training, without augmentation); dense tasks fit the whole image into
the input and map every output back to the original pixels. `flip_test=True` also predicts the mirrored
input and averages the un-mirrored result (Sapiens' test-time flip). Coordinates are continuous pixels, the
centre of the top-left pixel at (0.5, 0.5) (DESIGN.md). Depth is relative (larger = farther, about [0, 1]
over the person): align it to metric depth with a least-squares scale and shift where one is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from data_engine import schema
from train.models.multitask import FinetuneModel
from train.models.spec import ModelSpec
from train.models.tasks import DENSE_TASKS, TASKS
from train.models.weights import load_finetuned
from train.transforms import invert_affine, normalize_image, warp
from train.transforms.dense import DenseParams, dense_matrix
from train.transforms.pose import TopDownAugment, TopDownParams, crop_matrix, decode_heatmaps, heatmap_to_image


@dataclass
class PosePrediction:
    """One image's people. keypoints (N, K, 2) float32 image pixels; scores (N, K) float32; boxes (N, 4)."""

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


@dataclass
class DensePrediction:
    """One image's dense maps at its own (H, W), by name (`TaskDef.to_image`); a task the model lacks (or was not
    asked for) has none. The four tasks' maps:

    seg: (H, W) uint8 class ids; seg_probs: (H, W) float32 probability of the chosen class;
    depth: (H, W) float32 relative depth; normal: (H, W, 3) float32 unit camera-space normals (OpenCV axes).
    """

    maps: dict[str, np.ndarray] = field(default_factory=dict)

    def __getattr__(self, name: str) -> np.ndarray | None:
        if name.startswith("_") or name == "maps":
            raise AttributeError(name)
        return self.maps.get(name)


class Predictor:
    """Batched inference of a fine-tuned model; see the module docstring."""

    def __init__(
        self,
        checkpoint: str,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        flip_test: bool = False,
        heatmap_blur: int | None = None,
    ) -> None:
        loaded = load_finetuned(checkpoint)
        self._setup(loaded.model, loaded.spec, device, batch_size, flip_test, heatmap_blur)
        self.checkpoint = loaded.path

    @classmethod
    def from_model(
        cls,
        model: FinetuneModel,
        spec: ModelSpec,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        flip_test: bool = False,
        heatmap_blur: int | None = None,
    ) -> Predictor:
        """A Predictor around a model in memory (no file)."""
        self = cls.__new__(cls)
        self._setup(model, spec, device, batch_size, flip_test, heatmap_blur)
        self.checkpoint = None
        return self

    def _setup(self, model, spec: ModelSpec, device, batch_size: int, flip_test: bool, heatmap_blur: int | None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.flip_test = flip_test
        self.input_size = spec.image_size
        # Inference crops and views: the model's geometry, no augmentation (rng None everywhere below).
        self.pose_params = TopDownParams(self.input_size, TopDownAugment(bbox_padding=spec.bbox_padding))
        self.dense_params = DenseParams(self.input_size)
        # DARK smooths predicted heatmaps before refining (its 11 x 11 kernel suits 64 x 48 maps); a kernel of
        # 2 sigma + 1 keeps small maps' peaks off the borders' influence (measured: 0.8 px vs 2 px at 16 x 12).
        self.heatmap_blur = heatmap_blur if heatmap_blur is not None else 2 * int(np.ceil(spec.pose_sigma)) + 1
        self.tasks: tuple[str, ...] = tuple(model.heads.keys())
        self.keypoint_names = schema.subset_names(spec.keypoint_set) if "pose" in self.tasks else []
        vocab = schema.vocabulary(spec.vocabulary)
        self.class_names = vocab.names if "seg" in self.tasks else []
        # The mirror permutation of each head's channels, for the flip test.
        self._flip = {
            "pose": torch.from_numpy(np.asarray(schema.subset_flip_indices(spec.keypoint_set), dtype=np.int64)),
            "seg": torch.from_numpy(vocab.flip_lut()[: len(vocab)].astype(np.int64)),
        }

    # ------------------------------------------------------------------------------------------------ pose

    def pose(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[PosePrediction]:
        """Keypoints for each person box of each image (top-down)."""
        if "pose" not in self.tasks:
            raise ValueError(f"this checkpoint has no pose head (tasks: {', '.join(self.tasks)})")
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists: give one (N_i, 4) array per image")
        crops, owners = [], []
        for i, (image, image_boxes) in enumerate(zip(images, boxes, strict=True)):
            _check_image(image, i)
            b = np.asarray(image_boxes, dtype=np.float64).reshape(-1, 4) if len(image_boxes) else np.zeros((0, 4))
            if not np.isfinite(b).all() or (b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any():
                raise ValueError(f"image {i}: boxes must be finite [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
            for box in b:
                matrix, _ = crop_matrix(tuple(box), self.pose_params)
                crops.append((warp(image, matrix, self.input_size, "linear"), matrix, box))
                owners.append(i)
        points, scores = [], []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            batch = np.stack([normalize_image(c[0]) for c in chunk])
            heatmaps = self._heatmaps(batch)
            pts, sc = decode_heatmaps(heatmaps, self.heatmap_blur)
            # Heatmap units -> the 1/4-input units `heatmap_to_image` reads (a head of another stride, e.g. a
            # converted Sapiens head with three deconvolutions, would otherwise land at the wrong scale).
            expected_h, expected_w = self.pose_params.heatmap_size
            pts = pts * np.array([expected_w / heatmaps.shape[-1], expected_h / heatmaps.shape[-2]])
            for (_, matrix, _), p in zip(chunk, pts, strict=True):
                points.append(heatmap_to_image(p, matrix, self.pose_params).astype(np.float32))
            scores.extend(sc)
        k = len(self.keypoint_names)
        out = []
        for i in range(len(images)):
            idx = [j for j, o in enumerate(owners) if o == i]
            out.append(
                PosePrediction(
                    keypoints=np.stack([points[j] for j in idx]) if idx else np.zeros((0, k, 2), np.float32),
                    scores=np.stack([scores[j] for j in idx]).astype(np.float32)
                    if idx
                    else np.zeros((0, k), np.float32),
                    boxes=np.stack([crops[j][2] for j in idx]).astype(np.float32)
                    if idx
                    else np.zeros((0, 4), np.float32),
                )
            )
        return out

    @torch.no_grad()
    def _heatmaps(self, batch: np.ndarray) -> np.ndarray:
        return self._run(torch.from_numpy(batch).to(self.device), ["pose"])["pose"].cpu().numpy()

    @torch.no_grad()
    def _run(self, x: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
        """Each task's activated fp32 output on the batch `x`; with the flip test, averaged with the un-mirrored
        output of the mirrored batch (`TaskDef.activate` / `TaskDef.unflip`)."""
        rows = torch.arange(len(x), device=self.device)
        out = {t: TASKS[t].activate(v.float()) for t, v in self.model(x, {t: rows for t in tasks}).items()}
        if self.flip_test:
            mirrored = self.model(x.flip(-1), {t: rows for t in tasks})
            for t in tasks:
                task = TASKS[t]  # type: ignore[index]
                out[t] = task.combine(out[t], task.unflip(task.activate(mirrored[t].float()), self._flip.get(t)))
        return out

    # ----------------------------------------------------------------------------------------------- dense

    def dense(self, images: Sequence[np.ndarray], tasks: Sequence[str] | None = None) -> list[DensePrediction]:
        """Seg / depth / normal maps at each image's own size (default: every dense task of the model)."""
        wanted = [t for t in DENSE_TASKS if t in self.tasks and (tasks is None or t in tasks)]
        if tasks is not None and (missing := sorted(set(tasks) - set(wanted))):
            raise ValueError(f"this checkpoint has no {missing} head (tasks: {', '.join(self.tasks)})")
        if not wanted:
            raise ValueError(f"this checkpoint has no dense head (tasks: {', '.join(self.tasks)})")
        results: list[DensePrediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            matrices = []
            inputs = []
            for i, image in enumerate(chunk):
                _check_image(image, start + i)
                matrix = dense_matrix(image.shape[0], image.shape[1], self.dense_params)
                matrices.append(matrix)
                inputs.append(normalize_image(warp(image, matrix, self.input_size, "linear")))
            outputs = self._dense_outputs(np.stack(inputs), wanted)
            for j, image in enumerate(chunk):
                results.append(self._to_image(outputs, j, matrices[j], image.shape[:2]))
        return results

    def _dense_outputs(self, batch: np.ndarray, tasks: list[str]) -> dict[str, torch.Tensor]:
        return self._run(torch.from_numpy(batch).to(self.device), tasks)

    def _to_image(
        self, outputs: dict[str, torch.Tensor], j: int, matrix: np.ndarray, size: tuple[int, int]
    ) -> DensePrediction:
        """Sample each output map at the original image's pixel centres (through the fit affine)."""
        h, w = size
        in_h, in_w = self.input_size
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        q = np.stack([xs, ys], -1) @ matrix[:, :2].T + matrix[:, 2]  # input-image coordinates
        # grid_sample with align_corners=False reads normalised coordinates, the same at every map resolution.
        grid = torch.from_numpy(np.stack([2 * q[..., 0] / in_w - 1, 2 * q[..., 1] / in_h - 1], -1)).float()
        grid = grid[None].to(self.device)
        # The fit affine neither turns nor mirrors, but undo its vector rotation anyway for safety.
        turn = invert_affine(matrix)[:, :2]
        turn = turn / np.sqrt(abs(np.linalg.det(turn)))
        pred = DensePrediction()
        for task, output in outputs.items():
            resampled = F.grid_sample(output[j : j + 1], grid, mode="bilinear", align_corners=False)[0]
            pred.maps |= TASKS[task].to_image(resampled, turn)  # type: ignore[index,misc]
        return pred


# ---------------------------------------------------------------------------------------------- checking


def _check_image(image: np.ndarray, index: int) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        got = f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image).__name__)}"
        raise ValueError(f"image {index}: must be (H, W, 3) uint8 RGB, got {got}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {index}: is empty ({image.shape[0]}x{image.shape[1]})")
