"""The optimizer side of training: AdamW parameter groups (no decay on norms, biases, position embeddings and
tokens; optional layer-wise LR decay), the client AdamW, and the per-step LR schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from train.config import OptimConfig, Schedule, TrainConfig


def make_optimizer(
    groups: list[dict[str, Any]], cfg: TrainConfig, lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """The client AdamW, fused where torch has the kernel: on CPU too (torch >= 2.4). The default per-tensor
    loop makes ~10 passes over memory, and ZeRO-1/2's single flat fp32 partition is far larger than the cache,
    so each pass misses (measured on the tiny MAE, CPU time: ZeRO-1 step 1.81x -> 1.69x a plain loop with the
    same optimizer; the plain loop itself 12% faster)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, fused=fused)


def _shape(p: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))  # ZeRO-3 partitions leave p itself empty


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases (all 1-D), position embeddings and learned tokens (cls, mask, registers) are not
    decayed."""
    leaf = name.rsplit(".", 1)[-1]
    return len(_shape(param)) <= 1 or "pos_embed" in leaf or leaf.endswith(("token", "tokens"))


def layer_id_fn(model: nn.Module) -> tuple[Callable[[str], int], int] | None:
    """The model's layer numbering for layer-wise decay: its own `layer_id`, or that of its `.backbone`
    (parameters outside the backbone count as the last layer). None if the model has neither."""
    if hasattr(model, "layer_id") and hasattr(model, "num_layers"):
        return model.layer_id, int(model.num_layers)
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "layer_id"):
        n = int(backbone.num_layers)

        def by_backbone(name: str) -> int:
            return backbone.layer_id(name[len("backbone.") :]) if name.startswith("backbone.") else n - 1

        return by_backbone, n
    return None


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups keyed by (decay or not, layer): each has `weight_decay` and `lr_scale`."""
    numbering = layer_id_fn(model) if optim.layer_decay < 1.0 else None
    if optim.layer_decay < 1.0 and numbering is None:
        raise ValueError(f"layer_decay={optim.layer_decay} needs a model with layer_id()/num_layers or a .backbone")
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip_decay = no_weight_decay(name, p)
        layer, scale = 0, 1.0
        if numbering is not None:
            fn, n = numbering
            layer = fn(name)
            scale = optim.layer_decay ** (n - 1 - layer)
        group = groups.setdefault(
            (skip_decay, layer),
            {"params": [], "weight_decay": 0.0 if skip_decay else optim.weight_decay, "lr_scale": scale},
        )
        group["params"].append(p)
    return list(groups.values())


def lr_schedule(optim: OptimConfig, steps: int, peak_lr: float) -> np.ndarray:
    """The LR of each optimizer step, (steps,): linear warmup from peak * warmup_start_factor, then decay."""
    lrs = np.empty(steps, dtype=np.float64)
    warm = optim.warmup_steps
    decay_steps = multistep_steps(optim, steps) if optim.schedule == Schedule.multistep else []
    for s in range(steps):
        if s < warm:
            f = optim.warmup_start_factor
            lrs[s] = peak_lr * (f + (1 - f) * s / warm)
            continue
        t = (s - warm) / max(steps - warm, 1)  # 0 at the end of warmup, -> 1 at the last step
        if optim.schedule == Schedule.multistep:
            lrs[s] = peak_lr * optim.gamma ** sum(s >= d for d in decay_steps)  # min_lr plays no part
        elif optim.schedule == Schedule.cosine:
            lrs[s] = optim.min_lr + (peak_lr - optim.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        elif optim.schedule == Schedule.poly:
            lrs[s] = optim.min_lr + (peak_lr - optim.min_lr) * (1 - t) ** optim.poly_power
        else:
            lrs[s] = peak_lr
    return lrs


def multistep_steps(optim: OptimConfig, steps: int) -> list[int]:
    """The optimizer steps at which a multistep schedule multiplies the LR by gamma: round(fraction * steps)."""
    return [round(m * steps) for m in optim.milestones]


def peak_lr(cfg: TrainConfig, world_size: int) -> float:
    if cfg.optim.lr is not None:
        return float(cfg.optim.lr)
    return cfg.optim.base_lr * cfg.batch_size * cfg.grad_accum * world_size / 256
