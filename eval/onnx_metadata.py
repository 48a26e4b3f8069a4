"""What an exported ONNX file says about itself, so that a reader with onnxruntime alone can use it.

`metadata_props` (onnxruntime: `session.get_modelmeta().custom_metadata_map`) hold the contract that the
`FILE.json` sidecar holds, each value a JSON text under a `humanvision.` key:

| key                           | value                                                                   |
|-------------------------------|-------------------------------------------------------------------------|
| `humanvision.tasks`           | output order, e.g. ["pose", "seg", "depth", "normal"]                   |
| `humanvision.input`           | name, shape (["batch", 3, H, W]), dtype, layout                         |
| `humanvision.normalize`       | scale, mean, std: `(pixels * scale - mean) / std`, RGB                  |
| `humanvision.outputs`         | per output: name, shape, stride (input pixels per output pixel), meaning |
| `humanvision.keypoint_set`    | the named subset; `humanvision.keypoint_names` its names in order       |
| `humanvision.seg_vocabulary`  | the vocabulary; `humanvision.seg_classes` its class names by id          |
| `humanvision.contract`        | the whole sidecar (also arch, checkpoint, tolerance, measured difference) |

Each output declares its own dims: `batch` (symbolic) and the fixed channel, height and width it has at the
exported size, with ONNX denotations (DATA_BATCH, DATA_CHANNEL, DATA_FEATURE).
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "humanvision."
MEANING = {
    "pose": "heatmaps, one per keypoint; the peak is the keypoint",
    "seg": "class logits (softmax over channels)",
    "depth": "relative depth, larger is farther",
    "normal": "camera-space normal vectors (OpenCV axes), not yet unit length",
    "pose_keypoints": "[x, y, score] per keypoint in input pixels: heatmap argmax at its pixel centre",
}


def output_entries(names: list[str], shapes: dict[str, list[int]], input_size: tuple[int, int]) -> list[dict]:
    """Per output: name, shape with the batch axis, stride relative to the input, meaning."""
    h, _ = input_size
    entries = []
    for name in names:
        shape = shapes[name]
        stride = h // shape[1] if len(shape) == 3 else 1  # pose_keypoints (K, 3) are in input pixels: 1
        entries.append({"name": name, "shape": ["batch", *shape], "stride": stride, "meaning": MEANING.get(name, "")})
    return entries


def properties(info: dict[str, Any]) -> dict[str, str]:
    """The sidecar dict -> metadata_props (string -> JSON text)."""
    from data_engine import schema

    props = {
        "tasks": info["tasks"],
        "input": info["input"],
        "normalize": info["normalize"],
        "outputs": info["outputs"],
        "contract": info,
    }
    if info.get("keypoint_set"):
        props["keypoint_set"] = info["keypoint_set"]
        props["keypoint_names"] = schema.subset_names(info["keypoint_set"])
    if info.get("seg_vocabulary"):
        props["seg_vocabulary"] = info["seg_vocabulary"]
        props["seg_classes"] = schema.vocabulary(info["seg_vocabulary"]).names
    return {PREFIX + k: json.dumps(v) for k, v in props.items()}


def annotate(path: str, info: dict[str, Any]) -> None:
    """Write metadata_props and per-output dims into the ONNX file at `path` (in place)."""
    import onnx

    model = onnx.load(path)
    del model.metadata_props[:]
    for key, value in properties(info).items():
        model.metadata_props.add(key=key, value=value)
    shapes = {o["name"]: o["shape"] for o in info["outputs"]}
    for output in model.graph.output:
        shape = shapes[output.name]
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for i, size in enumerate(shape):
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = int(size)
            dim.denotation = "DATA_BATCH" if i == 0 else ("DATA_CHANNEL" if i == 1 else "DATA_FEATURE")
    onnx.checker.check_model(model)
    onnx.save(model, path)


def read(metadata: dict[str, str]) -> dict[str, Any]:
    """onnxruntime's `custom_metadata_map` -> the contract (JSON values decoded, prefix dropped)."""
    return {k[len(PREFIX) :]: json.loads(v) for k, v in metadata.items() if k.startswith(PREFIX)}
