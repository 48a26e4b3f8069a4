"""Training benchmarks, each a ratio against a baseline measured in this process on the same data.

    python benchmarks/train.py                                # CPU: all sections at the tiny size
    python benchmarks/train.py --sections engine,fit --arch small --size 128 --rounds 5 --per-round 1

1. Engine step (stages 0-2, one process) vs a plain PyTorch loop (same model, batch, optimizer and clipping):
   "before" is DeepSpeed as this project first configured it (default AdamW, DeepSpeed's defaults), "now" is
   what `train.engine.fit` builds (`deepspeed_config`, `make_optimizer`, `tune_engine`), each against a plain
   loop with its own optimizer. Contenders alternate every round; the figure is the median of per-round
   ratios of CPU time (process time): on a shared machine wall time swings 2x with the neighbours' load,
   CPU time barely moves. Wall-time ratios are printed beside it.
2. The whole `fit()` loop (data hand-off, LR setting, loss sums, metrics, TensorBoard) vs the plain loop,
   alternating step by step: the batch generator runs one plain step between two of fit's steps.
3. MAE step (encoder on 25% of tokens + light decoder) vs a full-ViT step (all tokens) on the same images.
4. ZeRO-3 memory per GPU for each sapiens arch at 8, 64, 512 GPUs (DeepSpeed's own estimator).
5. On a GPU: bf16 images/s and MFU of sapiens_0.3b MAE at 1024x1024.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from benchmarks.timing import median_of
from train.models.mae import MAE, DecoderConfig, mae_flops
from train.models.vit import ARCHS, arch_config, build_vit

Step = Callable[[], None]
CPU = torch.device("cpu")


@dataclass
class Bench:
    arch: str = "tiny"
    size: int = 64
    batch: int = 16
    rounds: int = 15
    per_round: int = 3


def bench_mae(b: Bench) -> MAE:
    """The same initial weights every call. Tiny is cut to 4 blocks and a 128-d decoder (a 40 ms CPU step)."""
    torch.manual_seed(0)
    if b.arch == "tiny":
        return MAE(build_vit("tiny", img_size=(b.size, b.size), depth=4), DecoderConfig(dim=128, depth=2, num_heads=4))
    return MAE(build_vit(b.arch, img_size=(b.size, b.size)))


def bench_data(b: Bench) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, S, S) and the masking noise (B, tokens): a fixed mask, so every contender does equal work."""
    g = torch.Generator().manual_seed(1)
    tokens = (b.size // 16) ** 2
    return torch.randn(b.batch, 3, b.size, b.size, generator=g), torch.rand(b.batch, tokens, generator=g)


def plain_step(model: MAE, opt: torch.optim.Optimizer, images: torch.Tensor, noise: torch.Tensor, clip: float) -> Step:
    def step() -> None:
        loss, _, _ = model(images, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    return step


def alternate(contenders: dict[str, Step], rounds: int, per_round: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per contender: (CPU times, wall times), one median of `per_round` steps per round, contenders in turn."""
    for step in contenders.values():
        for _ in range(3):
            step()
    out: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            cpu, wall = [], []
            for _ in range(per_round):
                c, w = time.process_time(), time.perf_counter()
                step()
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - w)
            out[name][0].append(statistics.median(cpu))
            out[name][1].append(statistics.median(wall))
    return out


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def engine_vs_plain(b: Bench, stages: tuple[int, ...] = (0, 1, 2), before: bool = True) -> None:
    import deepspeed

    from train.config import OptimConfig, TrainConfig
    from train.engine import deepspeed_config, for_device, init_distributed, make_optimizer, tune_engine

    _, world, _ = init_distributed()
    images, noise = bench_data(b)
    optim = OptimConfig(lr=1e-4, weight_decay=0.05)
    clip = optim.clip_grad

    def old_adamw(params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=1e-4, betas=tuple(optim.betas), weight_decay=0.05)

    def new_adamw(params) -> torch.optim.Optimizer:
        return make_optimizer([{"params": list(params), "weight_decay": 0.05}], TrainConfig(optim=optim), 1e-4, CPU)

    contenders: dict[str, Step] = {}
    baseline: dict[str, str] = {}
    variants = (("before", old_adamw), ("now", new_adamw)) if before else (("now", new_adamw),)
    for label, make_opt in variants:
        model = bench_mae(b)
        contenders[f"plain/{label}"] = plain_step(model, make_opt(model.parameters()), images, noise, clip)
        for stage in stages:
            model = bench_mae(b)
            ds, _ = deepspeed_config(TrainConfig(batch_size=b.batch, zero_stage=stage, optim=optim), bf16=False)
            if label == "now":  # "before": DeepSpeed's own defaults, as the engine first ran
                ds = for_device(ds, torch.device("cpu"))
            engine, *_ = deepspeed.initialize(model=model, optimizer=make_opt(model.parameters()), config=ds)
            if label == "now":
                tune_engine(engine, world)

            def ds_step(engine=engine) -> None:
                loss, _, _ = engine(images, noise)
                engine.backward(loss)
                engine.step()

            contenders[f"ZeRO-{stage}/{label}"] = ds_step
            baseline[f"ZeRO-{stage}/{label}"] = f"plain/{label}"
    times = alternate(contenders, b.rounds, b.per_round)
    print(f"engine step vs plain loop ({b.arch} MAE, {b.batch} x {b.size}x{b.size}, one process, {b.rounds} rounds):")
    for name, (cpu, wall) in times.items():
        line = f"  {name:<15} CPU {statistics.median(cpu) * 1e3:8.1f} ms  wall {statistics.median(wall) * 1e3:8.1f} ms"
        if name in baseline:
            base_cpu, base_wall = times[baseline[name]]
            line += f"  ratio CPU {median_ratio(cpu, base_cpu):.2f}  wall {median_ratio(wall, base_wall):.2f}"
        print(line)


def fit_vs_plain(b: Bench, stages: tuple[int, ...] = (0, 1, 2), steps: int = 40) -> None:
    """fit()'s per-step CPU time, measured between its requests for batches, against a plain step run (and timed
    apart) inside the batch generator: the two alternate step by step in one process."""
    from train.config import OptimConfig, TrainConfig
    from train.engine import fit, make_optimizer

    images, noise = bench_data(b)
    optim = OptimConfig(lr=1e-4, weight_decay=0.05)
    print(f"fit() loop step vs plain loop ({b.arch} MAE, {b.batch} x {b.size}x{b.size}, log_every=10, TensorBoard on):")
    for stage in stages:
        cfg = TrainConfig(
            steps=steps, batch_size=b.batch, zero_stage=stage, optim=optim, log_every=10, ckpt_every=0, progress=False
        )
        plain_model = bench_mae(b)
        opt = make_optimizer([{"params": list(plain_model.parameters()), "weight_decay": 0.05}], cfg, 1e-4, CPU)
        plain = plain_step(plain_model, opt, images, noise, optim.clip_grad)
        fit_cpu: list[float] = []
        plain_cpu: list[float] = []

        def make_batches(
            rank: int, world: int, seed: int, start: int, plain=plain, fit_cpu=fit_cpu, plain_cpu=plain_cpu
        ) -> Iterator[torch.Tensor]:
            left: float | None = None  # when fit got the previous batch
            while True:
                now = time.process_time()
                if left is not None:
                    fit_cpu.append(now - left)
                plain()
                plain_cpu.append(time.process_time() - now)
                left = time.process_time()
                yield images

        def loss_fn(engine, batch: torch.Tensor):
            loss, _, _ = engine(batch, noise)
            return loss, {}

        with tempfile.TemporaryDirectory() as out:
            fit(lambda: bench_mae(b), loss_fn, make_batches, cfg, out)
        skip = 5  # warm-up steps of both
        pairs = list(zip(fit_cpu[skip:], plain_cpu[skip + 1 :], strict=False))
        ratio = statistics.median(f / p for f, p in pairs)
        print(
            f"  ZeRO-{stage}: fit {statistics.median(fit_cpu[skip:]) * 1e3:.1f} ms, plain "
            f"{statistics.median(plain_cpu[skip:]) * 1e3:.1f} ms (CPU)  ratio {ratio:.2f}"
        )


def mae_vs_vit(n: int = 10) -> None:
    b = Bench()
    model = bench_mae(b)
    vit = build_vit("tiny", img_size=(64, 64), depth=4)
    images, _ = bench_data(b)

    def mae_step():
        model(images)[0].backward()

    def vit_step():
        vit.forward_features(images).square().mean().backward()

    a, b = median_of(mae_step, n), median_of(vit_step, n)
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

    t = median_of(lambda: (step(), torch.cuda.synchronize()), steps)
    ips = batch / t
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    flops = 3 * mae_flops(arch_config("sapiens_0.3b"))
    mfu = f"{flops * ips / peak:.1%}" if peak else "n/a"
    mem = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"GPU {name}: sapiens_0.3b MAE bf16 1024x1024 batch {batch}: {ips:.1f} images/s, MFU {mfu}, peak {mem:.1f} GiB"
    )


SECTIONS = ("engine", "fit", "mae", "zero3", "gpu")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {SECTIONS}")
    p.add_argument("--arch", default="tiny", choices=sorted(ARCHS), help="engine/fit sections: the MAE's encoder")
    p.add_argument("--size", type=int, default=64, help="engine/fit sections: square image side, divisible by 16")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--per-round", type=int, default=3)
    p.add_argument("--stages", default="0,1,2", help="ZeRO stages for the engine/fit sections")
    p.add_argument("--no-before", action="store_true", help="engine section: skip the as-first-configured engine")
    a = p.parse_args(argv)
    sections = a.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    if a.size % 16:
        p.error(f"--size {a.size} is not divisible by 16")
    b = Bench(a.arch, a.size, a.batch, a.rounds, a.per_round)
    stages = tuple(int(s) for s in a.stages.split(","))
    if "engine" in sections:
        engine_vs_plain(b, stages, before=not a.no_before)
    if "fit" in sections:
        fit_vs_plain(b, stages)
    if "mae" in sections:
        mae_vs_vit()
    if "zero3" in sections:
        zero3_memory()
    if "gpu" in sections:
        gpu_throughput()


if __name__ == "__main__":
    main()
