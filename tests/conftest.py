"""Test-wide settings: quiet, self-contained, CPU-only runs of Ray, DeepSpeed and pyrender."""

from __future__ import annotations

import os

# Set before anything imports OpenGL, Ray or DeepSpeed (module import order is not ours to choose).
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_sessionstart(session) -> None:
    """Free the RAM that DeepSpeed all-reduce buffers of earlier, killed or pre-fix runs hold in /dev/shm: on a
    CI machine that is reused they add up run after run (the 0.3B ZeRO-3 tests were OOM-killed that way)."""
    from train.distributed import remove_orphaned_shm_buffers

    removed = remove_orphaned_shm_buffers()
    if removed:
        print(f"removed {len(removed)} orphaned DeepSpeed buffers from /dev/shm")
