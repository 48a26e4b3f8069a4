"""The training loop around the DeepSpeed engine, shared by every task (MAE pretraining, fine-tuning).

    from train.engine import fit
    result = fit(model, loss_fn, make_batches, cfg, out_dir)

- `model`: an `nn.Module`, or a zero-argument callable that builds one (built inside
  `deepspeed.zero.Init` at ZeRO-3, so a model larger than one device is never whole in memory).
- `loss_fn(engine, batch) -> (loss, logs)`: runs the model (call `engine(...)`, the DeepSpeed wrapper)
  on one batch; `logs` is a dict of scalar figures (floats, or one-element tensors, which stay on the device
  until a logged step: no host sync per step) averaged over ranks and written beside the loss.
- `make_batches(rank, world_size, seed, start_step) -> Iterator[batch]`: this rank's endless batch
  stream; `start_step` is how many batches (micro-batches: optimizer steps x grad_accum) this rank
  already consumed, so a resumed run continues the same data order. Tensors in a batch (or in a dict of
  them) are moved to the device here.
- `cfg`: a `train.config.TrainConfig` (or subclass): steps, batch, ZeRO stage, precision, optimizer,
  schedule, checkpoints, resume, logging.

What it does: AdamW over parameter groups (no weight decay on norms, biases, position embeddings and
tokens; optional layer-wise LR decay through the model's `layer_id(name)`), a warmup + cosine / poly /
multistep LR schedule precomputed per step, gradient clipping and accumulation through DeepSpeed, checkpoints
every `ckpt_every` steps and at the end under `RUN/checkpoints/step_XXXXXXXX` (newest
`keep_checkpoints` kept), `resume="auto"`, `RUN/metrics.jsonl` (one object per logged step: step,
loss, lr, images_per_s, step_time_s, grad_norm, peak_mem_mb (the largest rank's), the task's logs, mfu on
GPU) and TensorBoard under `RUN/tb`, and a progress bar on rank 0. Randomness inside a step (MAE masks,
drop path) is seeded from (seed, rank, step), so a resumed run repeats the uninterrupted one exactly.

Processes come from the `deepspeed` launcher (see `train.launch`); a plain single-process call works
too: the distributed environment variables are filled in for one local process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from train.checkpoints import checkpoint_root, load_checkpoint, prune_checkpoints, resolve_resume, save_checkpoint
from train.config import TrainConfig
from train.distributed import device_for, free_port, init_distributed
from train.ds_config import deepspeed_config, for_device, tune_engine, use_bf16
from train.optim import (
    layer_id_fn,
    lr_schedule,
    make_optimizer,
    multistep_steps,
    no_weight_decay,
    param_groups,
    peak_lr,
)

# The loop and its metrics log are here; its parts have modules of their own: `train.distributed` (processes,
# device), `train.ds_config` (DeepSpeed's config), `train.optim` (groups, AdamW, LR schedule), `train.checkpoints`.
# Their names stay importable from here.
__all__ = [
    "PEAK_BF16_FLOPS",
    "FitResult",
    "LossFn",
    "MakeBatches",
    "MetricsLog",
    "checkpoint_root",
    "deepspeed_config",
    "device_for",
    "fit",
    "for_device",
    "free_port",
    "init_distributed",
    "layer_id_fn",
    "load_checkpoint",
    "lr_schedule",
    "make_optimizer",
    "multistep_steps",
    "no_weight_decay",
    "param_groups",
    "peak_flops",
    "peak_lr",
    "peak_memory_mb",
    "prune_checkpoints",
    "resolve_resume",
    "save_checkpoint",
    "step_seed",
    "tune_engine",
    "use_bf16",
]

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
MakeBatches = Callable[[int, int, int, int], Iterator[Any]]

# Dense bf16 peak FLOP/s of common accelerators, for MFU (vendor data sheets, no sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    step: int  # optimizer steps done
    last_loss: float | None
    checkpoint: str | None  # the newest checkpoint folder
    metrics: str  # path of metrics.jsonl
    model: nn.Module | None = None  # the trained module (ZeRO-3: partitioned; gather to read it)


# ----------------------------------------------------------------------------------------------- logging


class MetricsLog:
    """RUN/metrics.jsonl (+ TensorBoard) on rank 0. On resume, rows past the resumed step are dropped, so
    the file reads as one uninterrupted run."""

    def __init__(self, out_dir: str, start_step: int, tensorboard: bool) -> None:
        self.path = os.path.join(out_dir, "metrics.jsonl")
        kept: list[str] = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line)["step"] <= start_step:
                            kept.append(line if line.endswith("\n") else line + "\n")
                    except (ValueError, KeyError):
                        continue  # a half-written last line from a killed run
        with open(self.path, "w") as f:
            f.writelines(kept)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=start_step + 1)

    def write(self, row: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far, MiB: the device allocator's peak on a GPU, peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _log_value(name: str, value: Any) -> float | torch.Tensor:
    """A figure from loss_fn as a float, or a detached float64 one-element tensor left on its device."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"loss_fn figure {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.detach().double().reshape(())
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"loss_fn figure {name!r} must be a number, got {type(value).__name__} {value!r}") from None


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step * 131 + micro) % (2**63 - 1)


# ------------------------------------------------------------------------------------------------- fit


def fit(
    model: nn.Module | Callable[[], nn.Module],
    loss_fn: LossFn,
    make_batches: MakeBatches,
    cfg: TrainConfig,
    out_dir: str,
    groups: list[dict[str, Any]] | None = None,
    flops_per_sample: float | None = None,
) -> FitResult:
    """Train to `cfg.steps` optimizer steps; see the module docstring. `groups` replaces the default
    parameter groups (dicts with params, weight_decay, lr_scale); `flops_per_sample` (forward) enables MFU."""
    # ZeRO-3's `zero.Init` replaces torch.nn.functional.linear for the whole process and never puts it back:
    # a model used after training in the same process (a Predictor, a TorchScript export) would then run
    # DeepSpeed's autograd function, which tracing cannot export. Restored here, whatever happens.
    linear = torch.nn.functional.linear
    try:
        return _fit(model, loss_fn, make_batches, cfg, out_dir, groups, flops_per_sample)
    finally:
        torch.nn.functional.linear = linear


def _fit(
    model: nn.Module | Callable[[], nn.Module],
    loss_fn: LossFn,
    make_batches: MakeBatches,
    cfg: TrainConfig,
    out_dir: str,
    groups: list[dict[str, Any]] | None,
    flops_per_sample: float | None,
) -> FitResult:
    import deepspeed
    import torch.distributed as dist

    rank, world, local_rank = init_distributed()
    device = device_for(local_rank)
    bf16 = use_bf16(cfg.precision, device)
    os.makedirs(out_dir, exist_ok=True)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if not isinstance(model, nn.Module):
        if cfg.zero_stage == 3:
            with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(cfg, bf16)[0]):
                model = model()
        else:
            model = model()
    ds_config, notes = deepspeed_config(cfg, bf16)
    ds_config = for_device(ds_config, device)
    groups = groups if groups is not None else param_groups(model, cfg.optim)
    lr0 = peak_lr(cfg, world)
    optimizer = None
    if "optimizer" not in ds_config:  # a DeepSpeed "optimizer" block (e.g. its CPU Adam) takes over if given
        optimizer = make_optimizer(groups, cfg, lr0, device)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=groups if optimizer is None else None, config=ds_config
    )
    tune_engine(engine, world)

    resume_from = resolve_resume(cfg.resume, out_dir)
    start_step = 0 if resume_from is None else load_checkpoint(engine, *resume_from)

    lrs = lr_schedule(cfg.optim, cfg.steps, lr0)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    flops_peak = peak_flops(device)
    log = None
    if rank == 0:
        with open(os.path.join(out_dir, "deepspeed_config.json"), "w") as f:
            json.dump(ds_config, f, indent=2)
        for note in notes:
            logger.info("%s", note)
        log = MetricsLog(out_dir, start_step, cfg.tensorboard)
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start_step, desc="train", dynamic_ncols=True, file=sys.stderr)

    batches = iter(make_batches(rank, world, cfg.seed, start_step * cfg.grad_accum))
    last_loss: float | None = None
    newest: str | None = None
    sums: dict[str, float | torch.Tensor] = {}
    count = 0
    window_start, window_steps = time.perf_counter(), 0
    engine.train()
    for step in range(start_step, cfg.steps):
        for group in engine.optimizer.param_groups:
            group["lr"] = float(lrs[step]) * group.get("lr_scale", 1.0)
        for micro in range(cfg.grad_accum):
            batch = _to_device(next(batches), device)
            # Seeded after the batch is fetched: the first next() of a DataLoader with workers draws its base
            # seed from this generator, and on a resumed run that first next() is a later step's.
            torch.manual_seed(step_seed(cfg.seed, rank, step, micro))
            loss, logs = loss_fn(engine, batch)
            engine.backward(loss)
            engine.step()
            # Summed where they live: reading a device tensor here would stall the host on every micro-step;
            # the figures reach the host once per logged step.
            for k, v in {"loss": loss, **logs}.items():
                v = _log_value(k, v)
                sums[k] = sums[k] + v if k in sums else v
            count += 1
        window_steps += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            keys = sorted(sums)
            # One float64 vector on the process's own device: nccl refuses CPU tensors, gloo takes either.
            values = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device) for k in keys])
            if world > 1:
                dist.all_reduce(values)
            values = (values / (count * world)).tolist()
            elapsed = time.perf_counter() - window_start
            row: dict[str, float] = {"step": done, "lr": float(lrs[step])}
            row.update(dict(zip(keys, values, strict=True)))
            row["images_per_s"] = global_batch * window_steps / elapsed
            row["step_time_s"] = elapsed / window_steps
            # The largest process's peak (ranks differ: rank 0 holds the logger, ZeRO-3 partitions unevenly).
            peak = torch.tensor([peak_memory_mb(device)], dtype=torch.float64, device=device)
            if world > 1:
                dist.all_reduce(peak, op=dist.ReduceOp.MAX)
            row["peak_mem_mb"] = float(peak)
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None:
                row["grad_norm"] = float(grad_norm)
            if flops_per_sample is not None and flops_peak is not None:
                row["mfu"] = 3 * flops_per_sample * row["images_per_s"] / (world * flops_peak)
            last_loss = row["loss"]
            if log is not None:
                log.write(row)
            sums, count = {}, 0
            window_start, window_steps = time.perf_counter(), 0
        if bar is not None:
            if window_steps == 0:  # a row was just logged: new figures for the bar (drawn by update, rate-limited)
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lrs[step]:.2e}", refresh=False)
            bar.update(1)
        if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == cfg.steps:
            newest = save_checkpoint(engine, out_dir, done, rank, cfg.keep_checkpoints)
            window_start = time.perf_counter()  # saving is not training time
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    dist.barrier()
    if newest is None and resume_from is not None:
        newest = os.path.join(*resume_from)
    return FitResult(
        step=max(start_step, cfg.steps),
        last_loss=last_loss,
        checkpoint=newest,
        metrics=f"{out_dir}/metrics.jsonl",
        model=engine.module,
    )
