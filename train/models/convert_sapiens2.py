"""Sapiens2 `save_pretrained` folders (transformers; Hugging Face hub `facebook/sapiens2-*`) -> this package's files.

    convert_sapiens2("sapiens2-pose-0.4b/", "pose.safetensors")   # -> one summary line
    load_finetuned("pose.safetensors")                            # a FinetuneModel: backbone + sapiens2 pose head
    hv train finetune --init pretrain.safetensors model.arch=sapiens2_0.4b ...   # a pretrain-only folder

A folder holds `config.json` and `model.safetensors` (or `model.safetensors.index.json` and its shards), its keys
in Meta's original names (what transformers' `save_pretrained` writes and the hub holds) or in transformers' own:
transformers' loader (`from_pretrained`, local files only) reads either, and its module names map to ours:

| transformers                              | ours                      |
|-------------------------------------------|---------------------------|
| [model.]embeddings.*                      | backbone.embeddings.*     |
| [model.]model.layer.N.*                   | backbone.layers.N.*       |
| [model.]norm.weight                       | backbone.norm.weight      |
| decode_head.* (pose / seg / normal)       | heads.{task}.*            |

Any other tensor is refused (ValueError listing it) unless `allow_unused`. The task comes from the config's
`architectures` (Sapiens2ForPoseEstimation, Sapiens2ForSemanticSegmentation, Sapiens2ForNormalEstimation;
Sapiens2Model / Sapiens2Backbone: backbone only). A file with a head carries a `ModelSpec` (`model_spec`
header entry): arch = the zoo name of the config's size (else the generic `sapiens2`), image size from the
config, `backbone_options` = the config's backbone fields (`train.models.sapiens2.BACKBONE_KEYS`),
`head_options[task]` = style "sapiens2" + the config's `head_config`, keypoint set `all` for 308 heatmaps
(else the subset of that size), vocabulary by class count (29: `sapiens2_29`). A backbone-only file has no
spec (it is no predictor) but a `backbone_spec` header entry with the arch and options to fine-tune it with.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SPEC_KEY = "model_spec"
BACKBONE_SPEC_KEY = "backbone_spec"
SOURCE_CONFIG_KEY = "sapiens2_config"

TASK_OF_ARCHITECTURE: dict[str, str | None] = {
    "Sapiens2ForPoseEstimation": "pose",
    "Sapiens2ForSemanticSegmentation": "seg",
    "Sapiens2ForNormalEstimation": "normal",
    "Sapiens2Model": None,
    "Sapiens2Backbone": None,
}
_VOCABULARY_OF_CLASSES = {29: "sapiens2_29", 28: "goliath28", 20: "lip20"}


def is_sapiens2_checkpoint(path: str) -> bool:
    """Whether `path` is a folder whose config.json describes a Sapiens2 model (model_type sapiens2)."""
    config = os.path.join(path, CONFIG_FILE)
    if not (os.path.isdir(path) and os.path.isfile(config)):
        return False
    try:
        with open(config) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and (
        raw.get("model_type") == "sapiens2"
        or any(str(a).startswith("Sapiens2") for a in raw.get("architectures") or [])
    )


def read_config(src: str) -> dict[str, Any]:
    path = os.path.join(src, CONFIG_FILE)
    if not os.path.isdir(src):
        raise ValueError(f"{src}: not a folder (a Sapiens2 save_pretrained folder holds {CONFIG_FILE} + weights)")
    if not os.path.isfile(path):
        raise ValueError(f"{src}: no {CONFIG_FILE} (a Sapiens2 save_pretrained folder holds one)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("model_type") not in ("sapiens2", None):
        raise ValueError(f"{path}: model_type {raw.get('model_type')!r} is not sapiens2")
    return raw


def weight_files(src: str) -> list[str]:
    """The folder's model.safetensors, or the shards its index names; ValueError naming what is missing or
    unreadable (a truncated file fails here, before anything is loaded)."""
    from safetensors import safe_open

    single, index = os.path.join(src, WEIGHTS_FILE), os.path.join(src, INDEX_FILE)
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        files = [os.path.join(src, name) for name in sorted(set(weight_map.values()))]
    else:
        raise ValueError(f"{src}: no {WEIGHTS_FILE} or {INDEX_FILE}")
    for file in files:
        if not os.path.isfile(file):
            raise ValueError(f"{file}: named by {INDEX_FILE} but missing")
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (reading each tensor checks that its bytes are all there)
                    f.get_slice(key)
        except Exception as e:
            raise ValueError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    return files


def load_transformers_state(src: str, task: str | None, allow_unused: bool) -> tuple[dict[str, torch.Tensor], list]:
    """(transformers' own state dict of the folder's model, the tensors it did not use). transformers reads
    both its own key names and Meta's original ones (its conversion mapping), as `from_pretrained` does."""
    import transformers

    cls_name = {None: "Sapiens2Model", "pose": "Sapiens2ForPoseEstimation", "seg": "Sapiens2ForSemanticSegmentation",
                "normal": "Sapiens2ForNormalEstimation"}[task]  # fmt: skip
    try:
        model, info = getattr(transformers, cls_name).from_pretrained(
            src, local_files_only=True, output_loading_info=True, dtype=torch.float32, ignore_mismatched_sizes=True
        )  # mismatched sizes are listed in `info` and refused below, naming the tensors
    except Exception as e:
        raise ValueError(f"{src}: transformers cannot load it as {cls_name} ({type(e).__name__}: {e})") from None
    unused = sorted(info.get("unexpected_keys") or [])
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise ValueError(f"{src}: weights do not fit its config: missing {missing[:6]}, wrong shape {mismatched[:6]}")
    if unused and not allow_unused:
        shown = ", ".join(unused[:8]) + (", ..." if len(unused) > 8 else "")
        raise ValueError(f"{src}: {len(unused)} tensors have no place in the model ({shown}); allow_unused to drop")
    return model.state_dict(), unused


def task_of(config: dict[str, Any], src: str) -> str | None:
    archs = config.get("architectures") or []
    known = [a for a in archs if a in TASK_OF_ARCHITECTURE]
    if not known:
        if archs:
            raise ValueError(
                f"{src}: architectures {archs} is none of {', '.join(TASK_OF_ARCHITECTURE)} (pointmap and "
                "matting heads have no task here)"
            )
        return None  # no architectures: read as a backbone (a head's tensors are then refused as unused)
    return TASK_OF_ARCHITECTURE[known[0]]


def map_key(key: str, task: str | None) -> str | None:
    """Our key for a transformers key, or None when it has no place here."""
    if key.startswith("decode_head."):
        return f"heads.{task}.{key[len('decode_head.') :]}" if task else None
    if key.startswith("model.") and not key.startswith("model.layer."):
        key = key[len("model.") :]  # the task models' base_model_prefix
    renames = (
        ("embeddings.", "backbone.embeddings."),
        ("model.layer.", "backbone.layers."),
        ("norm.", "backbone.norm."),
    )
    for src, dst in renames:
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def arch_of(config: dict[str, Any]) -> str:
    """The zoo name of the config's size (hidden size, layers, heads), else the generic `sapiens2`."""
    from train.models.sapiens2 import ARCHS

    for name, arch in ARCHS.items():
        if arch and all(config.get(k) == arch[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")):
            return name
    return "sapiens2"


def _image_size(config: dict[str, Any]) -> tuple[int, int]:
    size = config.get("image_size", 1024)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return h, w


def _keypoint_set(count: int, src: str) -> str:
    from data_engine import schema

    for name in schema.SUBSET_NAMES:
        if len(schema.subset(name)) == count:
            return name
    raise ValueError(f"{src}: a pose head of {count} heatmaps matches no keypoint subset (308: all)")


def model_spec_of(config: dict[str, Any], task: str | None, src: str):
    """(ModelSpec or None for a backbone, the backbone spec dict) of a Sapiens2 config."""
    from train.models.sapiens2 import BACKBONE_KEYS, head_options
    from train.models.spec import ModelSpec

    arch = arch_of(config)
    backbone_options = {k: config[k] for k in BACKBONE_KEYS if k in config}
    size = _image_size(config)
    backbone = {"arch": arch, "image_size": list(size), "backbone_options": backbone_options}
    if task is None:
        return None, backbone
    labels = int(config.get("num_labels") or len(config.get("id2label") or {}))
    extra: dict[str, Any] = {}
    if task == "pose":
        extra["keypoint_set"] = _keypoint_set(labels, src)
    elif task == "seg":
        if labels not in _VOCABULARY_OF_CLASSES:
            raise ValueError(f"{src}: a seg head of {labels} classes matches no vocabulary (29: sapiens2_29)")
        extra["vocabulary"] = _VOCABULARY_OF_CLASSES[labels]
    elif labels != 3:
        raise ValueError(f"{src}: a normal head must predict 3 channels, this one {labels}")
    head_config = config.get("head_config") or {}
    spec = ModelSpec(
        arch=arch,
        image_size=size,
        tasks=(task,),  # type: ignore[arg-type]
        backbone_options=backbone_options,
        head_options={task: head_options(head_config)},
        **extra,
    )
    return spec, backbone


def convert_sapiens2(src: str, out: str, allow_unused: bool = False) -> str:
    """Convert the save_pretrained folder `src` into our safetensors file `out`; returns a summary line.
    ValueError (naming the file or keys) for a folder that is not a readable Sapiens2 checkpoint, for tensors
    with no place here (unless `allow_unused`) and for weights that do not fit the model the config describes."""
    from safetensors.torch import save_file

    from train.models.multitask import build_model
    from train.models.sapiens2 import build_sapiens2

    config = read_config(src)
    task = task_of(config, src)
    weight_files(src)
    spec, backbone = model_spec_of(config, task, src)
    state, unused = load_transformers_state(src, task, allow_unused)
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = map_key(key, task)
        if name is None:
            raise ValueError(f"{src}: transformers' {key} has no place in our model (a newer transformers layout?)")
        ours[name] = value.float().contiguous()
    # What the spec builds, on the meta device (no memory at any size): every weight must fit it.
    with torch.device("meta"):
        if spec is not None:
            own = build_model(spec).state_dict()
        else:
            bb = build_sapiens2(backbone["arch"], backbone["image_size"], **backbone["backbone_options"])
            own = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    missing = sorted(set(own) - set(ours))
    extra = sorted(set(ours) - set(own))
    wrong = sorted(k for k in set(own) & set(ours) if own[k].shape != ours[k].shape)
    if missing or extra or wrong:
        raise ValueError(
            f"{src}: weights do not fit the model its config describes: missing {missing[:4]}, unexpected "
            f"{extra[:4]}, wrong shape {wrong[:4]}"
        )
    meta = {"format": "humanvision", "source": os.path.abspath(src), SOURCE_CONFIG_KEY: json.dumps(config)}
    if spec is not None:
        meta[SPEC_KEY] = spec.to_json()
    else:
        meta[BACKBONE_SPEC_KEY] = json.dumps(backbone, sort_keys=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    save_file(ours, tmp, metadata=meta)
    os.replace(tmp, out)
    what = f"task {task} head" if task else "backbone only (use it with --init)"
    tail = f"; {len(unused)} unused tensors dropped" if unused else ""
    return (
        f"{src} -> {out}: sapiens2 arch {backbone['arch']} (hidden {config.get('hidden_size')}, "
        f"{config.get('num_hidden_layers')} layers), {what}, {len(ours)} tensors{tail}"
    )


def backbone_spec(file: str) -> dict[str, Any] | None:
    """The `backbone_spec` header entry of a converted backbone-only file (arch, image_size, backbone_options)."""
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        text = (f.metadata() or {}).get(BACKBONE_SPEC_KEY)
    return json.loads(text) if text else None
