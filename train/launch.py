"""Start N training processes through the `deepspeed` launcher (or train in this process).

    code = launch("train.pretrain", ["--config", "RUN/config.yaml", "--out", "RUN"], LaunchSpec(cpus=2))

- `--gpus N`: N local GPU processes (NCCL). `--cpus N`: N local CPU processes (gloo), for tests and
  laptops. `--hostfile FILE`: DeepSpeed's multi-node launch (pdsh by default: one line per node,
  `host slots=8`), with `--master-addr` the first host. Nothing: every local GPU, else one CPU process.
- MASTER_PORT is chosen free unless given (parallel runs would collide on 29500), and OMP_NUM_THREADS is
  set to cores / local processes (the launcher does not set it, and 2 ranks x all cores thrash).

`add_launch_args(parser)` and `launch_from_args(args, module, module_args)` give a subcommand (pretrain,
finetune) the same flags and behaviour.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class LaunchSpec:
    gpus: int | None = None
    cpus: int | None = None
    hostfile: str | None = None
    master_addr: str | None = None
    master_port: int | None = None
    in_process: bool = False


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--gpus", type=int, metavar="N", help="N local GPU processes")
    where.add_argument("--cpus", type=int, metavar="N", help="N local CPU processes (gloo)")
    where.add_argument("--in-process", action="store_true", help="train in this process, no launcher (one rank)")
    parser.add_argument("--hostfile", help="DeepSpeed hostfile for a multi-node launch ('host slots=N' lines)")
    parser.add_argument("--master-addr", help="address of rank 0 for multi-node launches")
    parser.add_argument("--master-port", type=int, help="rendezvous port (default: a free one)")


def spec_from_args(args: argparse.Namespace) -> LaunchSpec:
    return LaunchSpec(args.gpus, args.cpus, args.hostfile, args.master_addr, args.master_port, args.in_process)


def launch_command(module: str, module_args: Sequence[str], spec: LaunchSpec) -> tuple[list[str], dict[str, str]]:
    """The launcher command line and environment for `python -m module module_args` on every rank."""
    from train.ports import free_port

    for name, n in (("--gpus", spec.gpus), ("--cpus", spec.cpus)):
        if n is not None and n < 1:
            raise ValueError(f"{name} must be >= 1, got {n}")
    env = dict(os.environ)
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner"]
    if spec.cpus is not None:
        env["DS_ACCELERATOR"] = "cpu"
        local = spec.cpus
    elif spec.gpus is not None:
        local = spec.gpus
    else:
        local = _local_gpus() or 1
        if _local_gpus() == 0:
            env["DS_ACCELERATOR"] = "cpu"
    if spec.hostfile:
        if not os.path.isfile(spec.hostfile):
            raise FileNotFoundError(f"hostfile {spec.hostfile!r} does not exist")
        cmd += ["--hostfile", spec.hostfile]
        if spec.master_addr:
            cmd += ["--master_addr", spec.master_addr]
    else:
        # A hostfile-free launch is local: DeepSpeed reads /job/hostfile by default, which must not leak in.
        cmd += ["--hostfile", os.devnull, "--num_gpus", str(local)]
    cmd += ["--master_port", str(spec.master_port or free_port())]
    env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // local))
    cmd += ["--module", module, *module_args]
    return cmd, env


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch(module: str, module_args: Sequence[str], spec: LaunchSpec) -> int:
    """Run the job; the launcher's exit code (non-zero if any rank failed: the launcher stops the others)."""
    if spec.in_process:
        import importlib

        os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
        return int(importlib.import_module(module).main(list(module_args)) or 0)
    cmd, env = launch_command(module, module_args, spec)
    return subprocess.run(cmd, env=env).returncode


def launch_from_args(args: argparse.Namespace, module: str, module_args: Sequence[str]) -> int:
    return launch(module, module_args, spec_from_args(args))
