"""Load a fine-tuned model for evaluation and export: backbone + heads from one safetensors file.

`hv train finetune` ends by writing `RUN/model.safetensors`: fp32 weights with the resolved fine-tuning
config in the header (`config` metadata). A checkpoint argument is that file or its run folder. Every
weight must fit (strict loading): a model that silently kept random heads would evaluate as garbage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

_MODEL_SECTIONS = ("task", "tasks", "model", "pose", "seg")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


@dataclass
class LoadedModel:
    model: Any  # train.finetune.FinetuneModel, in eval mode
    config: Any  # train.finetune.FinetuneConfig (resolved, as trained)
    path: str  # the safetensors file

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.model.tasks)

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.config.model.image_size
        return int(h), int(w)


def load_finetuned(checkpoint: str, device: str = "cpu") -> LoadedModel:
    """The FinetuneModel stored in `checkpoint` (a .safetensors file or a run folder holding one)."""
    import yaml
    from omegaconf import OmegaConf
    from safetensors import safe_open

    from train.config import ConfigError
    from train.finetune import FinetuneConfig, build_model, read_embedded_config, resolve_weights_file

    if not os.path.exists(checkpoint):
        raise CheckpointError(f"checkpoint {checkpoint!r} does not exist")
    try:
        path = resolve_weights_file(checkpoint)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {checkpoint!r}: {e}") from None
    try:
        with safe_open(path, framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        raw = read_embedded_config(path)
    except yaml.YAMLError as e:
        raise CheckpointError(f"checkpoint {path}: its embedded config is not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"checkpoint {path}: no fine-tuning config inside or beside it; a pretraining export has no heads "
            "(fine-tune it with hv train finetune first)"
        )
    # Only the sections that shape the model and its inputs: the training data, optimiser and DeepSpeed settings
    # of the run do not matter here, and a checkpoint must stay loadable when those sections change shape.
    relevant = {k: raw[k] for k in _MODEL_SECTIONS if k in raw}
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FinetuneConfig), relevant))
        config.validate()
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: embedded config: {e}") from None
    except Exception as e:  # OmegaConf's validation errors: an unknown key or a wrong type
        raise CheckpointError(f"checkpoint {path}: embedded config does not fit ({str(e).splitlines()[0]})") from None
    model = build_model(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if names:
                parts.append(f"{len(names)} {what} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model in its config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    model.eval().to(device)
    return LoadedModel(model=model, config=config, path=path)
