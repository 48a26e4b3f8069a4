"""DeepSpeed's JSON config for a `TrainConfig`: the file, the `deepspeed:` block, then the typed fields (which win),
with settings that suit the device; and the per-step DeepSpeed work a run does not need, switched off."""

from __future__ import annotations

import json
from typing import Any

import torch

from train.config import Precision, TrainConfig

_OWNED_KEYS = (
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "zero_optimization.stage",
    "bf16.enabled",
)


def use_bf16(precision: Precision, device: torch.device) -> bool:
    if precision == Precision.auto:
        return device.type != "cpu"
    return precision == Precision.bf16


def deepspeed_config(cfg: TrainConfig, bf16: bool) -> tuple[dict[str, Any], list[str]]:
    """DeepSpeed's JSON config: the file, the `deepspeed:` block, then the typed fields (which win).

    Returns the config and notes on file/block values that the typed fields replaced.
    """
    merged: dict[str, Any] = {}
    if cfg.deepspeed_config:
        with open(cfg.deepspeed_config) as f:
            merged = json.load(f)
    merged = _deep_merge(merged, dict(cfg.deepspeed))
    owned = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": float(cfg.optim.clip_grad),
        "zero_optimization.stage": cfg.zero_stage,
        "bf16.enabled": bf16,
    }
    notes = []
    for key in _OWNED_KEYS:
        old = _get_path(merged, key)
        if old is not None and old != owned[key]:
            notes.append(f"deepspeed {key}={old!r} replaced by the config's {owned[key]!r}")
        _set_path(merged, key, owned[key])
    merged.pop("train_batch_size", None)  # derived by DeepSpeed from the micro batch, accumulation and world
    merged.setdefault("steps_per_print", 1 << 30)  # our own metrics replace DeepSpeed's periodic prints
    merged.setdefault("zero_allow_untested_optimizer", True)  # torch AdamW as a client optimizer
    merged.setdefault("zero_force_ds_cpu_optimizer", False)  # ... also with optimizer offload
    merged.setdefault("wall_clock_breakdown", False)
    return merged, notes


def for_device(ds_config: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """DeepSpeed settings that suit the device, where the file and the `deepspeed:` block leave them unset.

    CPU, ZeRO-1/2: no contiguous gradient bucket. Copying each gradient into a bucket as backward produces it
    exists to spare a GPU allocator fragmentation; on CPU it is a second full copy of the gradients every step
    that the one flatten at the end of backward makes anyway. Measured on the tiny MAE in one process
    (benchmarks/train.py, CPU time): ZeRO-1/2 step 1.69x -> 1.23x a plain loop.
    """
    out = _deep_merge(ds_config, {})
    zero = out.get("zero_optimization", {})
    if device.type == "cpu" and zero.get("stage", 0) in (1, 2):
        out["zero_optimization"] = {"contiguous_gradients": False, **zero}
    return out


def tune_engine(engine: Any, world: int) -> None:
    """Per-step work DeepSpeed does that is a no-op for this run, switched off.

    ZeRO-0 in a world of one: backward all-reduces the flattened gradients (a copy in, a collective over one
    rank, a divide by one, a copy back). Skipped only in fp32, where the client optimizer steps directly;
    DeepSpeed's bf16/fp16 optimizers use that call to track accumulation boundaries.
    """
    fp32 = not engine.bfloat16_enabled() and not engine.fp16_enabled()
    if world == 1 and engine.zero_optimization_stage() == 0 and fp32:
        engine.enable_backward_allreduce = False


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _get_path(d: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _set_path(d: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value
