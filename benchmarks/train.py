"""Training benchmarks, each a ratio against a baseline measured in this process on the same data.

    python benchmarks/train.py            # CPU: engine vs plain loop, MAE vs full ViT, ZeRO-3 memory table

1. DeepSpeed engine step (stages 0-2, one process) vs a plain PyTorch AdamW loop: same model, same batch.
2. MAE step (encoder on 25% of tokens + light decoder) vs a full-ViT step (all tokens) on the same images.
3. ZeRO-3 memory per GPU for each sapiens arch at 8, 64, 512 GPUs (DeepSpeed's own estimator).
4. On a GPU: bf16 images/s and MFU of sapiens_0.3b MAE at 1024x1024.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from train.models.mae import MAE, DecoderConfig, mae_flops
from train.models.vit import ARCHS, arch_config, build_vit


def timed(step, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tiny_mae() -> MAE:
    torch.manual_seed(0)
    return MAE(build_vit("tiny", img_size=(64, 64), depth=4), DecoderConfig(dim=128, depth=2, num_heads=4))


def engine_vs_plain(n: int = 20) -> None:
    import deepspeed

    from train.config import TrainConfig
    from train.engine import deepspeed_config, init_distributed

    init_distributed()
    images = torch.randn(16, 3, 64, 64)
    noise = torch.rand(16, 16)
    model = tiny_mae()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def plain():
        loss, _, _ = model(images, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    base = timed(plain, n)
    print(f"plain PyTorch step (tiny MAE, 16 x 64x64): {base * 1e3:.1f} ms")
    for stage in (0, 1, 2):
        model2 = tiny_mae()
        cfg = TrainConfig(batch_size=16, zero_stage=stage)
        ds, _ = deepspeed_config(cfg, bf16=False)
        engine, *_ = deepspeed.initialize(
            model=model2, optimizer=torch.optim.AdamW(model2.parameters(), lr=1e-4), config=ds
        )

        def ds_step(engine=engine):
            loss, _, _ = engine(images, noise)
            engine.backward(loss)
            engine.step()

        t = timed(ds_step, n)
        print(f"DeepSpeed ZeRO-{stage} step: {t * 1e3:.1f} ms  ratio vs plain {t / base:.2f}")


def mae_vs_vit(n: int = 10) -> None:
    model = tiny_mae()
    vit = build_vit("tiny", img_size=(64, 64), depth=4)
    images = torch.randn(16, 3, 64, 64)

    def mae_step():
        model(images)[0].backward()

    def vit_step():
        vit.forward_features(images).square().mean().backward()

    a, b = timed(mae_step, n), timed(vit_step, n)
    print(f"MAE step {a * 1e3:.1f} ms vs full-ViT step {b * 1e3:.1f} ms: ratio {a / b:.2f} (tiny, 64x64, 16 tokens)")


def zero3_memory() -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    print("ZeRO-3 model-state memory per GPU (DeepSpeed estimator; no offload; activations not included):")
    for arch in (a for a in ARCHS if a.startswith("sapiens")):
        with torch.device("meta"):
            model = MAE(build_vit(arch))
        total = sum(p.numel() for p in model.parameters())
        largest = max(p.numel() for p in model.parameters())
        cells = []
        for gpus in (8, 64, 512):
            _, gpu_mem, _ = estimate_zero3_model_states_mem_needs(
                total,
                largest,
                num_gpus_per_node=8,
                num_nodes=gpus // 8,
                cpu_offload=False,
                cpu_offload_params=False,
                zero_init=True,
            )
            cells.append(f"{gpus} GPUs {gpu_mem / 2**30:6.2f} GiB")
        print(f"  {arch:<13} {total / 1e9:.2f}B params: " + " | ".join(cells))


def gpu_throughput(steps: int = 10) -> None:
    if not torch.cuda.is_available():
        print("GPU throughput: skipped (no GPU)")
        return
    from train.engine import PEAK_BF16_FLOPS

    torch.backends.cuda.matmul.allow_tf32 = True
    model = MAE(build_vit("sapiens_0.3b", grad_checkpointing=False)).cuda().to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = int(os.environ.get("BENCH_BATCH", "16"))
    images = torch.randn(batch, 3, 1024, 1024, device="cuda", dtype=torch.bfloat16)

    def step():
        loss, _, _ = model(images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = timed(lambda: (step(), torch.cuda.synchronize()), steps)
    ips = batch / t
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    flops = 3 * mae_flops(arch_config("sapiens_0.3b"))
    mfu = f"{flops * ips / peak:.1%}" if peak else "n/a"
    mem = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"GPU {name}: sapiens_0.3b MAE bf16 1024x1024 batch {batch}: {ips:.1f} images/s, MFU {mfu}, peak {mem:.1f} GiB"
    )


if __name__ == "__main__":
    engine_vs_plain()
    mae_vs_vit()
    zero3_memory()
    gpu_throughput()
