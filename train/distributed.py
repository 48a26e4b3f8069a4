"""Processes for training: the distributed environment of one rank, its device, a free port.

A process started by the `deepspeed` launcher (see `train.launch`) finds RANK, WORLD_SIZE, LOCAL_RANK and the
master address in its environment; a plain single-process call becomes a world of one.
"""

from __future__ import annotations

import os

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
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))


def device_for(local_rank: int) -> torch.device:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    if name == "cpu":
        return torch.device("cpu")
    get_accelerator().set_device(local_rank)
    return torch.device(name, local_rank)
