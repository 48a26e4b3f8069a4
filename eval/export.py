"""Export a fine-tuned model (backbone with each of its heads) to ONNX or TorchScript, checked against eager.

    hv export --checkpoint runs/multi/model.safetensors --format onnx --out model.onnx [--size 1024x768]
    hv export --checkpoint runs/pose --format torchscript --out pose.pt

The exported graph takes `images`: (B, 3, H, W) float32, RGB, ImageNet mean/std normalised (exactly what the
model trained on; `train.transforms.normalize_image`), with a dynamic batch axis, and returns one output per
task in the order of `tasks`: `pose` (B, K, H/4, W/4) heatmaps, `seg` (B, C, H/2, W/2) logits, `depth`
(B, 1, H, W) relative depth, `normal` (B, 3, H/2, W/2) unnormalised vectors. `FILE.json` beside it records
that contract (tasks, output names, shapes and strides, input size, mean/std, keypoint set, class vocabulary)
and the measured difference to the eager model, which must stay within `tolerance` (1e-4 by default) or the command
fails and removes the file. An ONNX file also holds that contract in its own `metadata_props` and declares each
output's dims (see eval.onnx_metadata), so onnxruntime alone is enough to use it.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


class ExportError(RuntimeError):
    """The export ran but does not reproduce the eager model, or could not be written."""


@dataclass
class ExportResult:
    path: str
    format: ExportFormat
    tasks: list[str]
    input_size: tuple[int, int]
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    metadata_path: str = ""


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768) (H x W); each a positive multiple of 16 (the patch size)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r} must be HxW, e.g. 1024x768") from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise ValueError(f"size {text!r}: H and W must be positive multiples of 16 (the ViT patch size)")
    return h, w


def _wrapper(model: Any, with_decode: bool = False):
    import torch
    from torch import nn

    class TaskOutputs(nn.Module):
        """The FinetuneModel with a tuple of outputs in a fixed task order (exporters want no dicts); with
        `with_decode` and a pose head, one more output `pose_keypoints` (B, K, 3): [x, y, score] in input
        pixels, the heatmap argmax at its pixel centre (no sub-pixel refinement: `Predictor` adds DARK)."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.tasks = list(inner.tasks)
            self.decode = with_decode and "pose" in self.tasks
            self.names = self.tasks + (["pose_keypoints"] if self.decode else [])

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.inner(images)
            outputs = tuple(out[t] for t in self.tasks)
            if not self.decode:
                return outputs
            heatmaps = out["pose"]  # (B, K, h, w)
            b, k, h, w = heatmaps.shape
            score, index = heatmaps.reshape(b, k, h * w).max(-1)
            x = ((index % w).to(heatmaps.dtype) + 0.5) * (images.shape[3] / w)
            y = (torch.div(index, w, rounding_mode="floor").to(heatmaps.dtype) + 0.5) * (images.shape[2] / h)
            return (*outputs, torch.stack([x, y, score], -1))

    return TaskOutputs(model).eval()


def export_model(
    model: Any,
    out: str,
    fmt: ExportFormat,
    input_size: tuple[int, int],
    tolerance: float = 1e-4,
    opset: int = 17,
    check_batch: int = 2,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
    with_decode: bool = False,
) -> ExportResult:
    """Export `model` (a FinetuneModel in eval mode, on CPU) and check it on a random batch of `check_batch`
    images against eager: every output within `tolerance` (max abs diff), else ExportError and no file."""
    import torch

    from eval.onnx_metadata import annotate, output_entries

    wrapper = _wrapper(model, with_decode)
    h, w = input_size
    example = torch.zeros(1, 3, h, w)
    check = torch.from_numpy(np.random.default_rng(seed).standard_normal((check_batch, 3, h, w)).astype(np.float32))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    names = list(wrapper.names)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns that shape checks become constants: intended, the graph is made for one H x W.
            # ONNX's "instance_norm ... train=True" is also right: InstanceNorm always uses per-image statistics.
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            expected = [t.numpy() for t in wrapper(check)]
            if fmt == ExportFormat.onnx:
                # The legacy (TorchScript-based) exporter: the dynamo one needs onnxscript, not installed here.
                torch.onnx.export(
                    wrapper,
                    (example,),
                    tmp,
                    input_names=["images"],
                    output_names=names,
                    dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                    opset_version=opset,
                    dynamo=False,
                )
                got = _run_onnx(tmp, check.numpy())
            else:
                traced = torch.jit.trace(wrapper, example, check_trace=False)
                traced.save(tmp)
                got = [t.numpy() for t in torch.jit.load(tmp)(check)]
        diffs = {}
        for name, e, g in zip(names, expected, got, strict=True):
            if e.shape != g.shape:
                raise ExportError(f"{fmt.value} output {name} has shape {g.shape}, eager {e.shape}")
            diffs[name] = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64))))
        worst = max(diffs, key=diffs.get)
        if not diffs[worst] <= tolerance:  # `not <=` also catches NaN
            raise ExportError(
                f"{fmt.value} export differs from eager by {diffs[worst]:.3g} on {worst} (tolerance {tolerance:g}); "
                "nothing written"
            )
        shapes = {n: list(e.shape[1:]) for n, e in zip(names, expected, strict=True)}
        info = {
            "format": fmt.value,
            "input": {"name": "images", "shape": ["batch", 3, h, w], "dtype": "float32", "layout": "RGB, NCHW"},
            "normalize": _normalisation(),
            "outputs": output_entries(names, shapes, (h, w)),
            "tasks": wrapper.tasks,
            "max_abs_diff_vs_eager": diffs,
            "tolerance": tolerance,
            **(metadata or {}),
        }
        if fmt == ExportFormat.onnx:  # the file carries its own contract, for readers without the sidecar
            annotate(tmp, info)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    meta_path = f"{out}.json"
    with open(f"{meta_path}.tmp", "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    os.replace(f"{meta_path}.tmp", meta_path)
    return ExportResult(out, fmt, wrapper.tasks, (h, w), diffs, meta_path)


def _normalisation() -> dict[str, list[float]]:
    from train.transforms import IMAGE_MEAN, IMAGE_STD

    return {"scale": [1 / 255.0], "mean": IMAGE_MEAN.tolist(), "std": IMAGE_STD.tolist()}


def _run_onnx(path: str, images: np.ndarray) -> list[np.ndarray]:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def export_checkpoint(
    checkpoint: str,
    out: str,
    fmt: ExportFormat,
    size: tuple[int, int] | None = None,
    tolerance: float = 1e-4,
    with_decode: bool = False,
) -> ExportResult:
    """Load a fine-tuned checkpoint on CPU and export it (at its training size unless `size` is given)."""
    from train.models.weights import load_finetuned

    loaded = load_finetuned(checkpoint, device="cpu")
    spec = loaded.spec
    metadata = {
        "checkpoint": os.path.abspath(loaded.path),
        "arch": spec.arch,
        "keypoint_set": spec.keypoint_set if "pose" in loaded.tasks else None,
        "seg_vocabulary": spec.vocabulary if "seg" in loaded.tasks else None,
    }
    return export_model(
        loaded.model,
        out,
        fmt,
        size or loaded.image_size,
        tolerance=tolerance,
        metadata=metadata,
        with_decode=with_decode,
    )
