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
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from train.config import OptimConfig, Precision, Schedule, TrainConfig

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
MakeBatches = Callable[[int, int, int, int], Iterator[Any]]

# Dense bf16 peak FLOP/s of common accelerators, for MFU (vendor data sheets, no sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}
_OWNED_KEYS = (
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "zero_optimization.stage",
    "bf16.enabled",
)


@dataclass
class FitResult:
    step: int  # optimizer steps done
    last_loss: float | None
    checkpoint: str | None  # the newest checkpoint folder
    metrics: str  # path of metrics.jsonl
    model: nn.Module | None = None  # the trained module (ZeRO-3: partitioned; gather to read it)


# -------------------------------------------------------------------------------------- distributed set-up


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); a process started without a launcher becomes a world of one."""
    import deepspeed

    if "RANK" not in os.environ:
        # Without these DeepSpeed tries MPI discovery and dies importing mpi4py (STACK.md).
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
        import torch.distributed as dist

        if not dist.is_initialized():
            # A world of one needs no rendezvous: an in-memory store cannot lose a race for a TCP port to
            # another job starting at the same moment (seen when two runs started together). The backend is the
            # accelerator's (nccl on a GPU: ZeRO's collectives run on device tensors, which gloo refuses).
            from deepspeed.accelerator import get_accelerator

            backend = (
                "gloo" if get_accelerator().device_name() == "cpu" else get_accelerator().communication_backend_name()
            )
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(verbose=False)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))


def device_for(local_rank: int) -> torch.device:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name == "cpu":
        return torch.device("cpu")
    get_accelerator().set_device(local_rank)
    return torch.device(name, local_rank)


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


def make_optimizer(
    groups: list[dict[str, Any]], cfg: TrainConfig, lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """The client AdamW, fused where torch has the kernel: on CPU too (torch >= 2.4). The default per-tensor
    loop makes ~10 passes over memory, and ZeRO-1/2's single flat fp32 partition is far larger than the cache,
    so each pass misses (measured on the tiny MAE, CPU time: ZeRO-1 step 1.81x -> 1.69x a plain loop with the
    same optimizer; the plain loop itself 12% faster)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, fused=fused)


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


# ------------------------------------------------------------------------------ parameter groups, schedule


def _shape(p: torch.Tensor) -> tuple[int, ...]:
    return tuple(getattr(p, "ds_shape", p.shape))  # ZeRO-3 partitions leave p itself empty


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases (all 1-D), position embeddings and learned tokens are not decayed."""
    leaf = name.rsplit(".", 1)[-1]
    return len(_shape(param)) <= 1 or "pos_embed" in leaf or leaf.endswith("token")


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


# ------------------------------------------------------------------------------------------- checkpoints


def checkpoint_root(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def resolve_resume(resume: str, out_dir: str) -> tuple[str, str] | None:
    """(load_dir, tag) to resume from, or None to start fresh. Raises naming a checkpoint that is missing."""
    if resume == "none":
        return None
    root = checkpoint_root(out_dir)
    if resume == "auto":
        latest = os.path.join(root, "latest")
        if not os.path.isfile(latest):
            return None
        with open(latest) as f:
            return root, f.read().strip()
    path = os.path.abspath(resume)
    if os.path.isfile(os.path.join(path, "latest")):
        with open(os.path.join(path, "latest")) as f:
            return path, f.read().strip()
    if os.path.isdir(path):
        return os.path.dirname(path), os.path.basename(path)
    raise FileNotFoundError(f"resume={resume!r}: no such checkpoint folder (or folder with a 'latest' file)")


def _prune_checkpoints(root: str, keep: int) -> None:
    if keep <= 0:
        return
    tags = sorted(d for d in os.listdir(root) if d.startswith("step_") and os.path.isdir(os.path.join(root, d)))
    for tag in tags[:-keep]:
        shutil.rmtree(os.path.join(root, tag), ignore_errors=True)


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

    start_step = 0
    resume_from = resolve_resume(cfg.resume, out_dir)
    if resume_from is not None:
        load_dir, tag = resume_from
        path, client = engine.load_checkpoint(load_dir, tag=tag)
        if path is None:
            raise RuntimeError(f"could not load checkpoint {os.path.join(load_dir, tag)}")
        start_step = int(client["step"])

    lrs = lr_schedule(cfg.optim, cfg.steps, lr0)
    global_batch = cfg.batch_size * cfg.grad_accum * world
    flops_peak = peak_flops(device)
    log = None
    if rank == 0:
        with open(os.path.join(out_dir, "deepspeed_config.json"), "w") as f:
            json.dump(ds_config, f, indent=2)
        for note in notes:
            print(f"[train] {note}", file=sys.stderr)
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
            root = checkpoint_root(out_dir)
            tag = f"step_{done:08d}"
            engine.save_checkpoint(root, tag=tag, client_state={"step": done})
            dist.barrier()
            newest = os.path.join(root, tag)
            if rank == 0:
                _prune_checkpoints(root, cfg.keep_checkpoints)
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
