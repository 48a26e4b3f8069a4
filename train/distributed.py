"""Processes for training: the distributed environment of one rank, its device, a free port.

A process started by the `deepspeed` launcher (see `train.launch`) finds RANK, WORLD_SIZE, LOCAL_RANK and the
master address in its environment; a plain single-process call becomes a world of one.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch

from train.ports import free_port  # stdlib only, so that `train.launch` can use it without importing torch


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
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _unlink_own_shm_buffer(rank, world)
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


# DeepSpeed's CPU all-reduce (its `shm_comm` op) gives each rank a ~69 MB POSIX shared-memory buffer named
# deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>, maps every peer's, and never unlinks
# them: each CPU training run left 69 MB per rank in /dev/shm (RAM) until reboot. CI machines that run the suite
# again and again filled up with them, and a 0.3B ZeRO-3 test was OOM-killed.
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "deepspeed_allreduce_buffer_"


def shm_buffer_path(rank: int) -> Path:
    """The shared-memory file DeepSpeed's CPU all-reduce creates for `rank` of the current world."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"{SHM_PREFIX}{os.getuid()}_{addr}_{port}_{rank}"


def _unlink_own_shm_buffer(rank: int, world: int) -> None:
    """Unlink this rank's buffer once every rank has mapped every peer's (DeepSpeed maps them all during
    `init_distributed`): the mappings stay valid, and the kernel frees the memory when the last rank exits,
    however it exits (kill -9 included)."""
    path = shm_buffer_path(rank)
    if not path.exists():
        return  # no shm op on this accelerator, or not every rank is on this host
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank is past its init, so every peer holds its own mapping of this buffer
    path.unlink(missing_ok=True)


def remove_orphaned_shm_buffers(min_age_s: float = 60.0) -> list[Path]:
    """Remove this user's DeepSpeed all-reduce buffers that no live process maps (left by runs before the
    unlink above, or by DeepSpeed used directly); returns what it removed. A buffer younger than `min_age_s`
    is left alone: its rank may be between creating and mapping it."""
    pattern = re.compile(rf"{SHM_PREFIX}{os.getuid()}_.+_\d+_\d+$")
    now = time.time()
    candidates = [
        p for p in SHM_DIR.glob(f"{SHM_PREFIX}*") if pattern.fullmatch(p.name) and now - _mtime(p) > min_age_s
    ]
    if not candidates:
        return []
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            mapped.update(
                line.rsplit("/", 1)[-1].split(" ")[0] for line in maps.read_text().splitlines() if SHM_PREFIX in line
            )
        except OSError:
            continue  # the process exited, or is not ours to read
    removed = [p for p in candidates if p.name not in mapped]  # (deleted) suffixes were split off above
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def device_for(local_rank: int) -> torch.device:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name == "cpu":
        return torch.device("cpu")
    get_accelerator().set_device(local_rank)
    return torch.device(name, local_rank)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # gone already: never "old"
