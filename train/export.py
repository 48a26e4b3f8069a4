"""Consolidate a training run's checkpoint (any ZeRO stage, any world size) into one fp32 safetensors file.

    hv train export-weights runs/mae                       # -> runs/mae/weights.safetensors (+ .yaml)
    hv train export-weights runs/mae --part encoder --out vit.safetensors

The file holds the model's state dict in fp32 and, in its metadata, the run's resolved config (also
written beside it as YAML), so `load_vit(path)` / `load_into(model, path)` rebuild and fill a plain
PyTorch model with no DeepSpeed.

Checkpoints are never unpickled freely: every `torch.load` here (DeepSpeed's own `zero_to_fp32` included) runs
with `weights_only=True` and allows only the few DeepSpeed classes its checkpoints hold, so a crafted `.pt`
file (a `__reduce__` that runs code) is refused with `UnsafeCheckpointError` instead of executed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pickle
import re
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

Part = Literal["full", "encoder"]
ENCODER_PREFIX = "encoder."


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holding objects other than tensors and DeepSpeed's checkpoint records."""


def _deepspeed_checkpoint_globals() -> list[Any]:
    """The classes DeepSpeed's ZeRO checkpoints pickle besides tensors (found by loading real stage 0-3
    checkpoints with `weights_only=True`): plain records, restored by setting attributes, with no code run."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _refusal(path: str, error: Exception) -> UnsafeCheckpointError:
    # torch's message is a page of advice; the name of the global it refused is what tells a user what is inside.
    found = re.search(r"GLOBAL ([\w.]+)", str(error)) or re.search(r"WeightsUnpickler error: ([^\n]+)", str(error))
    detail = f"it needs {found.group(1)}" if found else type(error).__name__
    return UnsafeCheckpointError(
        f"{path}: refused to load: it holds objects other than tensors and DeepSpeed's checkpoint records, and "
        f"unpickling them could run code ({detail}). If you made this checkpoint and trust it, consolidate it "
        "from that trusted copy with DeepSpeed's zero_to_fp32.py and pass the result as a .safetensors file"
    )


def safe_torch_load(path: str, **kwargs: Any) -> Any:
    """`torch.load` with `weights_only=True` and DeepSpeed's checkpoint classes allowed; a file that needs
    anything else raises UnsafeCheckpointError naming it (nothing in it is executed)."""
    kwargs["weights_only"] = True
    kwargs.setdefault("map_location", "cpu")
    with torch.serialization.safe_globals(_deepspeed_checkpoint_globals()):
        try:
            return torch.load(path, **kwargs)
        except pickle.UnpicklingError as e:
            raise _refusal(str(path), e) from None


# A foreign checkpoint (e.g. a plain `torch.save(model.state_dict())`) that `--init` accepts besides safetensors.
TORCH_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_torch_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a torch file, loaded weights-only: the file's top level, or its 'state_dict' / 'module' /
    'model' entry. Raises UnsafeCheckpointError for a file that would need a free unpickling."""
    obj = safe_torch_load(path)
    nested = [obj.get(k) for k in ("state_dict", "module", "model")] if isinstance(obj, dict) else []
    for candidate in (obj, *nested):
        if isinstance(candidate, dict) and candidate and all(isinstance(v, torch.Tensor) for v in candidate.values()):
            return dict(candidate)
    raise ValueError(f"{path}: no state dict of tensors (looked at the top level, 'state_dict', 'module', 'model')")


class _WeightsOnlyTorch:
    """The `torch` module as DeepSpeed's zero_to_fp32 sees it during a consolidation: the same, except that
    `load` is `safe_torch_load` (zero_to_fp32 passes `weights_only=False` itself, which would run any pickle)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f: Any, **kwargs: Any) -> Any:  # zero_to_fp32 passes map_location, mmap, weights_only by keyword
        kwargs.pop("weights_only", None)
        return safe_torch_load(f, **kwargs)


@contextlib.contextmanager
def _zero_to_fp32_weights_only() -> Iterator[Any]:
    from deepspeed.utils import zero_to_fp32

    original = zero_to_fp32.torch
    zero_to_fp32.torch = _WeightsOnlyTorch()
    try:
        yield zero_to_fp32
    finally:
        zero_to_fp32.torch = original


def checkpoint_tag(run_dir: str, tag: str | None = None) -> tuple[str, str]:
    """(checkpoints folder, tag): the newest checkpoint unless `tag` is given. Raises naming what is missing."""
    root = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{run_dir}: no checkpoints/ folder (is this a training run?)")
    if tag is None:
        latest = os.path.join(root, "latest")
        if not os.path.isfile(latest):
            raise FileNotFoundError(f"{root}: no 'latest' file, so no complete checkpoint")
        with open(latest) as f:
            tag = f.read().strip()
    if not os.path.isdir(os.path.join(root, tag)):
        raise FileNotFoundError(f"{root}: checkpoint {tag!r} does not exist")
    return root, tag


def consolidated_state_dict(run_dir: str, tag: str | None = None) -> dict[str, torch.Tensor]:
    """The fp32 weights of a checkpoint: ZeRO partitions merged; the plain module state without ZeRO."""
    root, tag = checkpoint_tag(run_dir, tag)
    folder = os.path.join(root, tag)
    if glob.glob(os.path.join(folder, "*optim_states.pt")):
        with _zero_to_fp32_weights_only() as zero_to_fp32:
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
        # ZeRO-1 records no frozen parameters beside the optimizer's partitions (stages 2 and 3 do), so
        # zero_to_fp32 leaves them out (the MAE's fixed position table): rank 0's module state holds them whole.
        # (ZeRO-3 names its module states per rank and keeps only placeholders there.)
        if os.path.isfile(os.path.join(folder, "mp_rank_00_model_states.pt")):
            for key, value in _module_state(folder).items():
                if key not in state and value.numel() > 0:
                    state[key] = value
    else:  # ZeRO stage 0: the module is saved whole (in the training dtype) by rank 0
        state = _module_state(folder)
    return {k: v.detach().float().contiguous().clone() for k, v in state.items()}


def _module_state(folder: str) -> dict[str, torch.Tensor]:
    """Rank 0's `module` state of a DeepSpeed checkpoint folder (loaded weights-only)."""
    path = os.path.join(folder, "mp_rank_00_model_states.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: neither ZeRO optimizer shards nor mp_rank_00_model_states.pt")
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("module"), dict):
        raise ValueError(f"{path}: not a DeepSpeed model checkpoint (no 'module' state dict)")
    return checkpoint["module"]


def export_weights(run_dir: str, out: str | None = None, tag: str | None = None, part: Part = "full") -> str:
    """Write the weights (+ config) of a run; returns the safetensors path."""
    from safetensors.torch import save_file

    state = consolidated_state_dict(run_dir, tag)
    if part == "encoder":
        state = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
        if not state:
            raise ValueError(f"{run_dir}: the checkpoint has no '{ENCODER_PREFIX}*' weights to export")
    config_path = os.path.join(run_dir, "config.yaml")
    config_text = ""
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config_text = f.read()
    out = out or os.path.join(run_dir, "weights.safetensors" if part == "full" else "encoder.safetensors")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    meta = {"format": "humanvision", "part": part, "config": config_text, "source": os.path.abspath(run_dir)}
    spec = _finetune_spec(config_text) if part == "full" else None
    if spec is not None:
        meta["model_spec"] = spec  # what train.models.weights.load_finetuned reads first
    tmp = f"{out}.tmp-{os.getpid()}"
    save_file(state, tmp, metadata=meta)
    os.replace(tmp, out)
    if config_text:
        with open(os.path.splitext(out)[0] + ".yaml", "w") as f:
            f.write(config_text)
    return out


def _finetune_spec(config_text: str) -> str | None:
    """The ModelSpec JSON of a fine-tuning run's config (it has a `task`); None for other runs (pretraining)."""
    import yaml

    from train.models.spec import ModelSpec

    raw = yaml.safe_load(config_text) if config_text else None
    if not isinstance(raw, dict) or "task" not in raw:
        return None
    return ModelSpec.from_config_dict(raw).to_json()


def read_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except Exception as e:  # truncated or not a safetensors file
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def load_into(model: nn.Module, path: str) -> None:
    """Load a weights file into a model strictly: a backbone-only file goes into `model.encoder` or
    `model.backbone` when the model has one; a full file must match the model's keys exactly."""
    state, _ = read_weights(path)
    target: nn.Module = model
    own = set(model.state_dict())
    if not own & set(state):
        for prefix in ("backbone.", "encoder."):  # a backbone file in a model's layout (a converted Sapiens2 one)
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                break
        for attr in ("encoder", "backbone"):
            sub = getattr(model, attr, None)
            if isinstance(sub, nn.Module) and set(sub.state_dict()) & set(state):
                target = sub
                break
    _fit_pos_embed(target, state)
    target.load_state_dict(state, strict=True)


def _fit_pos_embed(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resample stored ViT position embeddings to the model's grid (e.g. 1024x1024 pretraining -> 1024x768)."""
    from train.models.layers import resize_pos_embed

    for key, value in list(state.items()):
        if not key.endswith("pos_embed") or key not in model.state_dict():
            continue
        owner = model.get_submodule(key.rsplit(".", 1)[0]) if "." in key else model
        grid = getattr(owner, "grid", None)
        want = model.state_dict()[key].shape
        if grid is None or value.shape == want:
            continue
        n = value.shape[1]
        side = round(n**0.5)
        if side * side != n:
            raise ValueError(f"{key}: stored {tuple(value.shape)} is not a square grid; cannot resample to {want}")
        state[key] = resize_pos_embed(value, (side, side), grid)


def load_vit(path: str, img_size: tuple[int, int] | None = None):
    """A plain ViT from an exported file: the arch comes from the config in its metadata."""
    from omegaconf import OmegaConf

    from train.models.vit import build_vit

    _, meta = read_weights(path)
    if not meta.get("config"):
        raise ValueError(f"{path}: no config in the metadata; build the model yourself and use load_into()")
    model_cfg = OmegaConf.create(meta["config"]).model
    overrides = {"depth": int(model_cfg.depth)} if model_cfg.get("depth") else {}
    vit = build_vit(str(model_cfg.arch), img_size=img_size or tuple(model_cfg.img_size), **overrides)
    load_into(vit, path)
    return vit


def summary(path: str) -> str:
    state, meta = read_weights(path)
    params = sum(v.numel() for v in state.values())
    return json.dumps({"path": path, "tensors": len(state), "params": params, "part": meta.get("part")})
