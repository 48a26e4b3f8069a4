"""The training cases of `benchmarks/gpu_check.py`: MAE pretraining and fine-tuning steps through a real DeepSpeed
engine in a world of one, timed, with peak memory and the SDPA kernel; a case that fails is recorded, not raised."""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

KERNEL_NAMES = {"FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "efficient", "CUDNN_ATTENTION": "cudnn"}
KERNEL_NAMES["MATH"] = "math"
# torch's own default order (2.5 to 2.13), used if its private accessor is gone.
DEFAULT_SDPA_ORDER = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH", "CUDNN_ATTENTION")


# ----------------------------------------------------------------------------------------- world of one


def init_world_of_one(device: torch.device) -> None:
    """A one-process torch.distributed world (nccl on a GPU: DeepSpeed's collectives take CUDA tensors)."""
    import deepspeed
    import torch.distributed as dist

    from train.ports import free_port

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # An in-process store: a world of one needs no rendezvous over a TCP port.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def make_engine(build: Callable[[], torch.nn.Module], cfg: Any, device: torch.device) -> Any:
    """The DeepSpeed engine `train.engine.fit` would build for `cfg` in a world of one."""
    import deepspeed

    from train.engine import deepspeed_config, for_device, make_optimizer, param_groups, peak_lr, tune_engine, use_bf16

    ds_config, _ = deepspeed_config(cfg, use_bf16(cfg.precision, device))
    ds_config = for_device(ds_config, device)
    if cfg.zero_stage == 3:
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = build()
    else:
        model = build()
    groups = param_groups(model, cfg.optim)
    optimizer = None if "optimizer" in ds_config else make_optimizer(groups, cfg, peak_lr(cfg, 1), device)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=groups if optimizer is None else None, config=ds_config
    )
    tune_engine(engine, 1)
    return engine


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def sdpa_kernel_for(
    batch: int, heads: int, tokens: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> str:
    """The kernel SDPA dispatches to for these q/k/v: the first backend of torch's priority order whose forward
    and backward run when only it is allowed. q/k/v are strided as `layers.Attention` makes them."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order_of = getattr(torch._C, "_get_sdp_priority_order", None)  # private: the order the dispatcher uses
    order = [SDPBackend(i).name for i in order_of()] if order_of is not None else list(DEFAULT_SDPA_ORDER)
    qkv = torch.randn(batch, tokens, 3, heads, head_dim, device=device, dtype=dtype).permute(2, 0, 3, 1, 4)
    q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(0))
    for name in (n for n in order if n in KERNEL_NAMES):
        try:
            with warnings.catch_warnings(), sdpa_kernel(getattr(SDPBackend, name)):
                warnings.simplefilter("ignore")  # torch explains at length why the other kernels do not apply
                F.scaled_dot_product_attention(q, k, v).sum().backward()
            return KERNEL_NAMES[name]
        except RuntimeError:
            continue
    raise RuntimeError(f"no SDPA backend ran q/k/v of shape {(batch, heads, tokens, head_dim)} {dtype}")


# ----------------------------------------------------------------------------------------------- memory


def engine_dtype(engine: Any) -> str:
    """The dtype the engine trains in, as DeepSpeed set it up (bf16 from the config's precision, else fp32)."""
    return "bfloat16" if engine.bfloat16_enabled() else "float32"


def memory_now(device: torch.device) -> int:
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are): the GPU's allocation peak since the case began, or the process's RSS peak."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_max_rss"  # Linux: KiB


def run_case(record: dict[str, Any], body: Callable[[], dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """`record` plus the figures `body` returns (status ok), or status oom / error with the reason; the case's
    engine and tensors are gone when this returns (they live only inside `body`)."""
    reset_peak(device)
    record["memory_at_start_bytes"] = memory_now(device)
    try:
        record.update(body())
        record["status"] = "ok"
    except torch.OutOfMemoryError as e:
        record.update(status="oom", error=error_line(e))
    except Exception as e:  # recorded, and the next case runs: one broken case must not hide the others
        record.update(status="error", error=error_line(e))
    reset_peak(device)
    return record


def error_line(e: BaseException) -> str:
    """`Type: the first line of the message`, at most 300 characters."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


# ------------------------------------------------------------------------------------------------ cases


def pretrain_config(arch: str, args: argparse.Namespace) -> Any:
    from train.config import load_config
    from train.pretrain import PretrainConfig

    path = os.path.join("configs", "pretrain", f"{arch}.yaml")
    overrides = [f"model.img_size=[{args.size},{args.size}]", "model.grad_checkpointing=true", "precision=bf16"]
    # The MAE steps read synthetic images on the device; the loader case names its own shards here.
    overrides.append("data.shards=synthetic")
    if args.batch is not None:
        overrides.append(f"batch_size={args.batch}")
    return load_config(PretrainConfig, path if os.path.isfile(path) else None, [f"model.arch={arch}", *overrides])


def finetune_config(task: str, arch: str, args: argparse.Namespace) -> Any:
    from train.finetune_config import load_finetune_config

    path = os.path.join("configs", "finetune", f"{task}_{arch}.yaml")
    overrides = [f"model.arch={arch}", f"model.image_size=[{args.size},{args.size * 3 // 4}]"]
    overrides += ["model.grad_checkpointing=true", "precision=bf16"]
    if args.batch is not None:
        overrides.append(f"batch_size={args.batch}")
    return load_finetune_config(path if os.path.isfile(path) else None, overrides, task=task)


def mae_case(arch: str, args: argparse.Namespace, device: torch.device, peak: float | None) -> dict[str, Any]:
    from train.models.mae import DecoderConfig, mae_flops
    from train.models.vit import arch_config
    from train.pretrain import build_mae, mae_loss

    cfg = pretrain_config(arch, args)
    m = cfg.model
    decoder = DecoderConfig(m.decoder_dim, m.decoder_depth, m.decoder_heads)
    vit = arch_config(m.arch, m.img_size, **({"depth": m.depth} if m.depth else {}))
    flops = mae_flops(vit, decoder, m.mask_ratio)  # forward, one image
    record: dict[str, Any] = {"arch": arch, "img_size": list(m.img_size), "batch": cfg.batch_size}
    record |= {
        "zero_stage": cfg.zero_stage,
        "precision": cfg.precision.value,
        "grad_checkpointing": m.grad_checkpointing,
    }
    record |= {"model_flops_per_image": flops, "train_flops_per_image": 3 * flops}

    def body() -> dict[str, Any]:
        dtype = torch.bfloat16 if cfg.precision.value == "bf16" else torch.float32
        tokens = (m.img_size[0] // vit.patch_size) * (m.img_size[1] // vit.patch_size)
        keep = max(1, round(tokens * (1 - m.mask_ratio)))  # as random_masking keeps
        b = cfg.batch_size
        # Probed on an empty device, before the engine exists: a probe that reaches the math kernel holds the
        # whole (L x L) score matrix, which must not fail a case whose training step fits.
        attention = {
            "encoder": sdpa_kernel_for(b, vit.num_heads, keep, vit.embed_dim // vit.num_heads, dtype, device),
            "decoder": sdpa_kernel_for(b, decoder.num_heads, tokens, decoder.dim // decoder.num_heads, dtype, device),
        }
        reset_peak(device)
        engine = make_engine(lambda: build_mae(m), cfg, device)
        images = torch.randint(0, 256, (b, 3, *m.img_size), dtype=torch.uint8, device=device)

        def step() -> None:
            loss, _ = mae_loss(engine, {"images": images})
            engine.backward(loss)
            engine.step()

        step_time = timed_steps(step, args.warmup, args.steps, device)
        memory, kind = peak_memory(device)
        images_per_s = b / step_time
        mfu = None if peak is None else 3 * flops * images_per_s / peak
        return {"step_time_s": step_time, "images_per_s": images_per_s, "mfu": mfu, "peak_memory_bytes": memory,
                "memory_kind": kind, "attention": attention, "dtype": engine_dtype(engine)}  # fmt: skip

    return run_case(record, body, device)


def finetune_batch(cfg: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """Synthetic rows of every active task, in the shapes and dtypes of `train.data_finetune.collate`."""
    from train.models.tasks import output_stride

    spec = cfg.model_spec()
    b, (h, w) = cfg.batch_size, cfg.model.image_size
    rows = torch.arange(b, device=device)
    batch = {"image": torch.randn(b, 3, h, w, device=device)}
    for task in cfg.active_tasks:
        batch[f"{task}_index"] = rows
        if task == "pose":
            k, stride = spec.out_channels("pose"), output_stride("pose")
            batch["pose_heatmaps"] = torch.rand(b, k, h // stride, w // stride, device=device)
            batch["pose_weights"] = torch.ones(b, k, device=device)
        elif task == "seg":
            batch["seg"] = torch.randint(0, spec.out_channels("seg"), (b, h, w), device=device)
        elif task == "depth":
            batch["depth"] = torch.rand(b, h, w, device=device) * 0.9 + 0.05
            batch["depth_mask"] = torch.ones(b, h, w, dtype=torch.bool, device=device)
        else:
            normal = torch.randn(b, 3, h, w, device=device)
            batch["normal"] = normal / normal.norm(dim=1, keepdim=True)
            batch["normal_mask"] = torch.ones(b, h, w, dtype=torch.bool, device=device)
    return batch


def finetune_case(task: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from data_engine import schema
    from train.finetune import task_losses
    from train.models.multitask import build_model
    from train.models.vit import arch_config

    cfg = finetune_config(task, args.finetune_arch, args)
    h, w = cfg.model.image_size
    record: dict[str, Any] = {"task": task, "arch": cfg.model.arch, "image_size": list(cfg.model.image_size)}
    record |= {"batch": cfg.batch_size, "zero_stage": cfg.zero_stage, "precision": cfg.precision.value}

    def body() -> dict[str, Any]:
        dtype = torch.bfloat16 if cfg.precision.value == "bf16" else torch.float32
        vit = arch_config(cfg.model.arch)
        tokens = (h // vit.patch_size) * (w // vit.patch_size)
        kernel = sdpa_kernel_for(cfg.batch_size, vit.num_heads, tokens, vit.embed_dim // vit.num_heads, dtype, device)
        reset_peak(device)  # as in mae_case: the probe runs first, outside the case's peak
        engine = make_engine(
            lambda: build_model(cfg.model_spec(), grad_checkpointing=cfg.model.grad_checkpointing), cfg, device
        )
        batch = finetune_batch(cfg, device)  # fp32 images, as the loader hands them over: the model casts them
        weight = None
        if task == "seg" and cfg.seg.class_weights:
            weight = torch.from_numpy(schema.vocabulary(cfg.seg.vocabulary).weights()).to(device)

        def step() -> None:
            loss, _ = task_losses(engine, batch, cfg, weight)
            engine.backward(loss)
            engine.step()

        step_time = timed_steps(step, args.warmup, args.steps, device)
        memory, kind = peak_memory(device)
        figures = {"step_time_s": step_time, "images_per_s": cfg.batch_size / step_time}
        figures |= {"peak_memory_bytes": memory, "memory_kind": kind, "attention": {"backbone": kernel}}
        return figures | {"dtype": engine_dtype(engine)}

    return run_case(record, body, device)
