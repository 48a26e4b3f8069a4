"""The checkpoint format of fine-tuned models, and every way weights get into a model.

    loaded = load_finetuned("runs/pose")          # strict: the run's model.safetensors, or the file itself
    loaded.model, loaded.spec, loaded.path
    report = load_init(model, "runs/mae")         # --init: a backbone (and the heads that fit) from any source

A fine-tuned checkpoint is one safetensors file of fp32 weights (`RUN/model.safetensors`, written at the end
of `hv train finetune` or by `hv train export-weights`) whose header holds `model_spec` (`ModelSpec` as JSON:
all a consumer needs) and `config` (the run's resolved config, YAML). Files from before `model_spec` existed
have only `config` (or a `config.yaml` beside them); their spec is read from it, so old run folders load.
Nothing here unpickles: foreign torch files go through `train.export.read_torch_state_dict` (weights only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from train.models.multitask import FinetuneModel, build_model
from train.models.spec import ModelSpec, SpecError

SPEC_KEY = "model_spec"  # safetensors metadata entries
CONFIG_KEY = "config"
# Run-folder weight files in order of preference: a fine-tuning export, then `hv train export-weights` outputs.
RUN_WEIGHT_FILES = ("model.safetensors", "weights.safetensors", "encoder.safetensors")
# Where backbone weights sit in the files we know: a bare ViT, MAE (`encoder.`), a fine-tuned model (`backbone.`).
_BACKBONE_PREFIXES = ("backbone.", "encoder.", "")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def resolve_weights_file(path: str) -> str:
    """A .safetensors file, or the export inside a run folder. Raises FileNotFoundError naming what was looked for."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r}: no such weights file or run folder")
    for name in RUN_WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(
        f"{path!r}: no {' / '.join(RUN_WEIGHT_FILES)} in the run folder; export it (hv train export-weights {path})"
    )


def _header(file: str) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(file, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def header_model_spec(file: str) -> ModelSpec | None:
    """The `model_spec` entry of a safetensors header (SpecError when it is malformed); None when there is none."""
    text = _header(file).get(SPEC_KEY)
    return ModelSpec.from_json(text) if text is not None else None


def read_embedded_config(file: str) -> dict[str, Any] | None:
    """The resolved config stored in a safetensors header (`config` metadata) or in a YAML beside it."""
    import yaml

    text = _header(file).get(CONFIG_KEY)
    if text is None:
        for beside in (os.path.splitext(file)[0] + ".yaml", os.path.join(os.path.dirname(file), "config.yaml")):
            if os.path.isfile(beside):
                with open(beside) as fh:
                    text = fh.read()
                break
    return yaml.safe_load(text) if text else None


def read_model_spec(file: str) -> ModelSpec:
    """The ModelSpec of a fine-tuned safetensors file: its `model_spec` entry, else its (older) embedded config."""
    import yaml

    text = _header(file).get(SPEC_KEY)
    try:
        if text is not None:
            return ModelSpec.from_json(text)
        raw = read_embedded_config(file)
    except SpecError as e:
        raise CheckpointError(f"checkpoint {file}: model spec: {e}") from None
    except yaml.YAMLError as e:
        raise CheckpointError(f"checkpoint {file}: its embedded config is not valid YAML ({e})") from None
    if not isinstance(raw, dict) or "model" not in raw:
        raise CheckpointError(
            f"checkpoint {file}: no fine-tuning config inside or beside it; a pretraining export has no heads "
            "(fine-tune it with hv train finetune first)"
        )
    try:
        return ModelSpec.from_config_dict(raw)
    except (SpecError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {file}: embedded config: {e}") from None


def read_safetensors(file: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; CheckpointError naming the file when it is not one."""
    from safetensors.torch import load_file

    if not os.path.isfile(file):
        raise CheckpointError(f"checkpoint {file!r} does not exist")
    try:
        return load_file(file)
    except Exception as e:
        raise CheckpointError(f"checkpoint {file}: not a readable safetensors file ({type(e).__name__}: {e})") from None


@dataclass
class LoadedModel:
    model: FinetuneModel  # in eval mode
    spec: ModelSpec
    path: str  # the safetensors file

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.tasks)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.spec.image_size


def load_finetuned(checkpoint: str, device: str | torch.device = "cpu") -> LoadedModel:
    """The model stored in `checkpoint` (a .safetensors file or a run folder holding one), every weight fitting:
    a model that silently kept random heads would predict garbage. Raises CheckpointError naming the file."""
    if not os.path.exists(checkpoint):
        raise CheckpointError(f"checkpoint {checkpoint!r} does not exist")
    try:
        path = resolve_weights_file(checkpoint)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {checkpoint!r}: {e}") from None
    state = read_safetensors(path)
    spec = read_model_spec(path)
    model = build_model(spec)
    check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    model.eval().to(device)
    return LoadedModel(model=model, spec=spec, path=path)


def check_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """CheckpointError listing (a few of) the missing, unexpected and misshapen entries, if there are any."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if not (missing or unexpected or wrong):
        return
    parts = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            shown = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" if what == "wrong shape" else k
                     for k in names[:4]]  # fmt: skip
            parts.append(f"{len(names)} {what} ({', '.join(shown)}{', ...' if len(names) > 4 else ''})")
    raise CheckpointError(f"checkpoint {source}: weights do not fit the model in its config: " + "; ".join(parts))


# ------------------------------------------------------------------------------------------ initialisation


@dataclass
class InitReport:
    source: str
    loaded: list[str]  # backbone parameter names filled from the file
    missing: list[str]  # backbone parameters the file lacks (left at their random init)
    unexpected: list[str]  # file entries that look like backbone weights but fit no parameter
    ignored: list[str]  # other entries (an MAE decoder, heads of another task)
    resized: list[str]  # position embeddings resampled to this run's token grid

    def summary(self) -> str:
        return (
            f"init from {self.source}: {len(self.loaded)} backbone tensors loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.ignored)} ignored (not backbone), "
            f"{len(self.resized)} resized"
        )


def read_init_state(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, str]:
    """(state dict, the run's config as a dict or None, source name) from a safetensors file, a run folder, or a
    foreign torch file (.pt/.pth/.bin/.ckpt, read tensors-only: nothing in it is unpickled freely).

    A run folder without an export is consolidated in memory from its newest checkpoint (any ZeRO stage).
    """
    import yaml

    from train.export import TORCH_FILE_SUFFIXES, consolidated_state_dict, read_torch_state_dict, read_weights

    try:
        file = resolve_weights_file(path)
    except FileNotFoundError:
        if not os.path.isdir(os.path.join(path, "checkpoints")):
            raise
        config_path = os.path.join(path, "config.yaml")
        config = None
        if os.path.isfile(config_path):
            with open(config_path) as f:
                config = yaml.safe_load(f)
        return consolidated_state_dict(path), config, f"{path} (newest checkpoint)"
    if not file.endswith(TORCH_FILE_SUFFIXES):
        state, _ = read_weights(file)
        return state, read_embedded_config(file), file
    return read_torch_state_dict(file), None, file


def load_init(model: FinetuneModel, path: str, include_heads: bool = True) -> InitReport:
    """Fill the backbone (and, from a fine-tuned file, the heads that fit) from an export or a run folder.

    The backbone is loaded strictly: a missing or misshapen backbone weight raises ValueError naming the source
    and the file's arch (usually a `model.arch` / `model.depth` that differs from the pretraining run's).
    Position embeddings stored for another token grid are resampled (bicubic) to this model's grid.
    """
    from train.models.layers import resize_pos_embed

    state, source_cfg, source = read_init_state(path)
    own = model.backbone.state_dict()
    prefix = max(_BACKBONE_PREFIXES, key=lambda p: sum(k[len(p) :] in own for k in state if k.startswith(p)))
    backbone_state: dict[str, torch.Tensor] = {}
    head_state: dict[str, torch.Tensor] = {}
    ignored, unexpected, resized = [], [], []
    for key, value in state.items():
        in_backbone = key.startswith(prefix) if prefix else not key.startswith(("heads.", "decoder", "mask_token"))
        if in_backbone:
            name = key[len(prefix) :]
            if name in own:
                backbone_state[name] = value
            else:
                unexpected.append(key)
        elif key.startswith("heads.") and include_heads:
            head_state[key[len("heads.") :]] = value
        else:
            ignored.append(key)
    if not backbone_state:
        raise ValueError(f"init {source}: no backbone weights found (looked for keys under {_BACKBONE_PREFIXES})")
    pos = backbone_state.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape:
        grid = _grid_of(pos.shape[1], source_cfg, source)
        backbone_state["pos_embed"] = resize_pos_embed(pos, grid, model.backbone.grid)
        resized.append("pos_embed")
    missing = sorted(set(own) - set(backbone_state))
    misshapen = [n for n, v in backbone_state.items() if v.shape != own[n].shape]
    if missing or unexpected or misshapen:
        arch = (source_cfg or {}).get("model", {})
        raise ValueError(
            f"init {source}: backbone does not match (missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}, misshapen {misshapen[:4]}); the source was arch={arch.get('arch')} "
            f"depth={arch.get('depth')}: set model.arch / model.depth to match"
        )
    model.backbone.load_state_dict(backbone_state, strict=True)
    head_own = model.heads.state_dict()
    fitting = {k: v for k, v in head_state.items() if k in head_own and v.shape == head_own[k].shape}
    ignored += [f"heads.{k}" for k in head_state if k not in fitting]
    if fitting:
        model.heads.load_state_dict(fitting, strict=False)
    return InitReport(source, sorted(backbone_state), missing, unexpected, ignored, resized)


def _grid_of(tokens: int, cfg: dict[str, Any] | None, source: str) -> tuple[int, int]:
    """The token grid a stored position embedding was made for: from the source's config, else square."""
    model_cfg = (cfg or {}).get("model", {}) or {}
    size = model_cfg.get("img_size") or model_cfg.get("image_size")
    if size and (size[0] // 16) * (size[1] // 16) == tokens:
        return size[0] // 16, size[1] // 16
    side = round(tokens**0.5)
    if side * side != tokens:
        raise ValueError(f"init {source}: position embedding of {tokens} tokens has no known grid (not square)")
    return side, side
