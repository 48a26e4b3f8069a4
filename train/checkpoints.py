"""Training checkpoints: `RUN/checkpoints/step_XXXXXXXX` (DeepSpeed's folders, a `latest` file naming the
newest), which one a `resume` setting means, and the retention of the newest few."""

from __future__ import annotations

import os
import shutil
from typing import Any


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


def prune_checkpoints(root: str, keep: int) -> None:
    if keep <= 0:
        return
    tags = sorted(d for d in os.listdir(root) if d.startswith("step_") and os.path.isdir(os.path.join(root, d)))
    for tag in tags[:-keep]:
        shutil.rmtree(os.path.join(root, tag), ignore_errors=True)


def load_checkpoint(engine: Any, load_dir: str, tag: str) -> int:
    """Load `load_dir/tag` into the DeepSpeed engine (weights, optimizer, schedule state); the step it was saved at."""
    path, client = engine.load_checkpoint(load_dir, tag=tag)
    if path is None:
        raise RuntimeError(f"could not load checkpoint {os.path.join(load_dir, tag)}")
    return int(client["step"])


def save_checkpoint(engine: Any, out_dir: str, step: int, rank: int, keep: int) -> str:
    """Save `RUN/checkpoints/step_XXXXXXXX` from every rank, then (rank 0) keep the newest `keep`; its folder."""
    import torch.distributed as dist

    root = checkpoint_root(out_dir)
    tag = f"step_{step:08d}"
    engine.save_checkpoint(root, tag=tag, client_state={"step": step})
    dist.barrier()
    if rank == 0:
        prune_checkpoints(root, keep)
    return os.path.join(root, tag)
