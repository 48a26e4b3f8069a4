"""The one-GPU acceptance check (issue #12): the real-scale training path, measured on the machine it runs on.

    make gpu-check                                     # runs this script on GPU 0; under 8 minutes on one GPU
    python benchmarks/gpu_check.py --out runs/gpu-check --peak-tflops 989
    python benchmarks/gpu_check.py --device cpu --archs tiny --size 64 --steps 1   # the same code, tiny, on CPU

1. MAE pretraining at 1024x1024 for sapiens_0.3b and sapiens_1b, each from its shipped config
   (configs/pretrain/ARCH.yaml: batch, ZeRO stage, DeepSpeed JSON), bf16, grad checkpointing on, through a real
   DeepSpeed engine in a world of one (`deepspeed_config`, `for_device`, `param_groups`, `make_optimizer`).
   Synthetic uint8 images wait on the device, so the figure is the model's alone; the step is pretraining's own
   `mae_loss`. Reported: images/s, MFU = 3 x `mae_flops` (the counts of `hv train archs`; fwd + bwd, recompute
   not counted) x images/s / the device's peak bf16 FLOP/s (train.engine's table, or --peak-tflops), peak
   memory, and the attention kernel SDPA picks for the encoder's and decoder's q/k/v (flash / efficient /
   cudnn / math: the first of torch's priority order that runs under `sdpa_kernel`).
2. One fine-tuning step of each of pose, seg, depth, normal (configs/finetune/TASK_ARCH.yaml) at 1024x768, bf16,
   synthetic targets of the shapes `train.data_finetune.collate` makes: step time and peak memory.
3. The pretraining shard loader (`train.data_pretrain.pretrain_batches`) on a few dozen real shards of
   1024x768 JPEGs written to a temp folder, with the config's workers (--loader-workers): samples/s, and its
   ratio to each MAE case's images/s (>= 1: one rank's loader keeps up with its GPU).

Warm-up steps are not timed; the timed steps sit between two `torch.cuda.synchronize()`. A case that runs out
of memory is recorded (with its batch) and the next one runs. Writes OUT/report.json and prints a table; exits 2
without a GPU (or on bad arguments), 1 if a case did not complete, else 0. `--device cpu` marks the report as
not a GPU measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from train.models.tasks import TASK_NAMES as TASKS  # noqa: E402

KNOWN_KERNELS = ("flash", "efficient", "cudnn", "math")


class UsageError(ValueError):
    """A bad argument: reported as one line, exit 2."""


# --------------------------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the tiny test run (default cuda)")
    p.add_argument("--out", default="runs/gpu-check", help="report folder (default runs/gpu-check)")
    p.add_argument("--archs", default="sapiens_0.3b,sapiens_1b", help="MAE archs, comma-separated")
    p.add_argument("--finetune-arch", default=None, help="fine-tuning arch (default: the first of --archs)")
    p.add_argument("--tasks", default=",".join(TASKS), help="fine-tuning tasks, comma-separated")
    p.add_argument("--size", type=int, default=1024, help="MAE images are SIZE x SIZE, fine-tuning SIZE x 3/4 SIZE")
    p.add_argument("--batch", type=int, default=None, help="per-GPU batch of every case (default: each config's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak bf16 TFLOP/s (MFU)")
    p.add_argument("--loader-workers", type=int, default=None, help="default: the pretrain config's data.num_workers")
    p.add_argument("--loader-shards", type=int, default=32)
    p.add_argument("--loader-per-shard", type=int, default=4, help="samples per loader shard")
    p.add_argument("--loader-batches", type=int, default=32, help="timed loader batches")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.finetune_arch = args.finetune_arch or (args.archs[0] if args.archs else "")
    return args


def check_args(args: argparse.Namespace) -> None:
    from train.models.vit import ARCHS

    if not args.archs:
        raise UsageError("--archs is empty: name at least one MAE arch")
    for arch in [*args.archs, args.finetune_arch]:
        if arch not in ARCHS:
            raise UsageError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    bad = [t for t in args.tasks if t not in TASKS]
    if bad:
        raise UsageError(f"--tasks {','.join(bad)}: each must be one of {', '.join(TASKS)}")
    if args.size <= 0 or args.size % 64:
        raise UsageError(f"--size {args.size} must be a positive multiple of 64 (fine-tuning uses 3/4 of it)")
    positive = {"--steps": args.steps, "--loader-shards": args.loader_shards}
    positive |= {"--loader-per-shard": args.loader_per_shard, "--loader-batches": args.loader_batches}
    positive |= {"--batch": 1 if args.batch is None else args.batch}
    positive |= {"--peak-tflops": 1.0 if args.peak_tflops is None else args.peak_tflops}
    for name, value in positive.items():
        if not value > 0:
            raise UsageError(f"{name} must be positive, got {value}")
    if args.warmup < 0 or (args.loader_workers is not None and args.loader_workers < 0):
        raise UsageError("--warmup and --loader-workers must be >= 0")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} exists and is not a folder")


def no_gpu_message() -> str:
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    return (
        f"gpu_check: no CUDA GPU visible to torch {torch.__version__} ({build}); run it on a GPU machine with a "
        "CUDA torch (make setup TORCH=...), or try the tiny CPU run: --device cpu --archs tiny --size 64 --steps 1"
    )


# ----------------------------------------------------------------------------------------------- the run


def peak_flops_of(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s, where it came from): the flag, else train.engine's table of known devices."""
    from train.engine import peak_flops

    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    found = peak_flops(device)
    if found is None:
        return None, "unknown device: pass --peak-tflops for MFU"
    return found, "train.engine.PEAK_BF16_FLOPS"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def write_report(path: str, report: dict[str, Any]) -> None:
    """Atomically (a run killed mid-write leaves the previous version whole)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(path + ".tmp", path)


def run(args: argparse.Namespace, device: torch.device, path: str) -> dict[str, Any]:
    """Every case in turn; the report is rewritten after each one (`complete` false until the end), so a run
    stopped part-way keeps the cases it finished."""
    import deepspeed

    from benchmarks.gpu_cases.loader import loader_case, write_photo_shards
    from benchmarks.gpu_cases.train_steps import error_line, finetune_case, init_world_of_one, mae_case, pretrain_config

    started = time.perf_counter()
    peak, peak_source = peak_flops_of(device, args.peak_tflops)
    init_world_of_one(device)
    report: dict[str, Any] = {
        "gpu_measurement": device.type == "cuda",
        "device": device_name(device),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__},
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "complete": False,
    }
    report["mae"] = []
    for arch in args.archs:
        report["mae"].append(mae_case(arch, args, device, peak))
        print_row("mae", report["mae"][-1])
        write_report(path, report)
    report["finetune"] = []
    for task in args.tasks:
        report["finetune"].append(finetune_case(task, args, device))
        print_row("finetune", report["finetune"][-1])
        write_report(path, report)

    data_cfg = pretrain_config(args.archs[0], args).data
    if args.loader_workers is not None:
        data_cfg.num_workers = args.loader_workers
    source = (args.size, args.size * 3 // 4)
    batch = report["mae"][0]["batch"]
    loader: dict[str, Any] = {"workers": data_cfg.num_workers, "shards": args.loader_shards, "batch": batch}
    loader |= {"samples": args.loader_shards * args.loader_per_shard, "source_size": list(source)}
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-shards-") as folder:
            data_cfg.shards, loader["shard_bytes"] = write_photo_shards(
                folder, args.loader_shards, args.loader_per_shard, source
            )
            loader |= loader_case(data_cfg, (args.size, args.size), batch, args.loader_batches)
        loader["status"] = "ok"
        loader["vs_mae"] = {
            r["arch"]: loader["samples_per_s"] / r["images_per_s"] for r in report["mae"] if r["status"] == "ok"
        }
        loader["keeps_up"] = all(ratio >= 1 for ratio in loader["vs_mae"].values()) if loader["vs_mae"] else None
    except Exception as e:  # recorded like a failed training case: the figures above are kept
        loader |= {"status": "error", "error": error_line(e)}
    report["loader"] = loader
    print_row("loader", loader)
    report["wall_s"] = time.perf_counter() - started
    report["complete"] = True
    write_report(path, report)
    return report


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def print_row(section: str, r: dict[str, Any]) -> None:
    """One line of the table, printed as each case finishes (a long run shows its progress)."""
    if section == "loader" and r["status"] != "ok":
        print(f"loader  {r['workers']} workers  ERROR: {r['error']}", flush=True)
        return
    if section == "loader":
        ratios = ", ".join(f"{a} {v:.2f}x" for a, v in r["vs_mae"].items()) or "-"
        print(f"loader  {r['workers']} workers  {r['samples_per_s']:.1f} samples/s  vs MAE images/s: {ratios}"
              f"  keeps up: {r['keeps_up']}", flush=True)  # fmt: skip
        return
    name = r["arch"] if section == "mae" else f"{r['task']} {r['arch']}"
    size = "x".join(map(str, r.get("img_size") or r["image_size"]))
    head = f"{section:<9}{name:<22}{size:>10} b{r['batch']:<4}"
    if r["status"] != "ok":
        print(f"{head} {r['status'].upper()}: {r['error']}", flush=True)
        return
    mfu = r.get("mfu")
    mfu_text = "" if section != "mae" else f"  MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'}"
    kernels = "/".join(r["attention"].values())
    print(f"{head} {r['step_time_s']:.3f} s/step  {r['images_per_s']:.1f} img/s{mfu_text}  "
          f"peak {gib(r['peak_memory_bytes'])} GiB  attn {kernels}", flush=True)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Chosen before anything imports DeepSpeed (the Makefile exports DS_ACCELERATOR=cpu for everything else).
    os.environ["DS_ACCELERATOR"] = args.device
    if args.device == "cuda" and not torch.cuda.is_available():
        print(no_gpu_message(), file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)  # before the chdir below
    try:
        check_args(args)
    except UsageError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    os.chdir(ROOT)  # the shipped configs name their DeepSpeed JSON relative to the repository root
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        print("gpu_check: --device cpu: the tiny run of the same code, not a GPU measurement", file=sys.stderr)
    path = os.path.join(out, "report.json")
    report = run(args, device, path)
    failed = [f"mae {r['arch']}" for r in report["mae"] if r["status"] != "ok"]
    failed += [f"finetune {r['task']}" for r in report["finetune"] if r["status"] != "ok"]
    failed += ["loader"] if report["loader"]["status"] != "ok" else []
    print(f"gpu_check: {len(failed)} case(s) did not complete ({', '.join(failed) or 'none'}); "
          f"{report['wall_s']:.0f} s; report: {path}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
