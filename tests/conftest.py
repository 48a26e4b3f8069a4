"""Test-wide settings: quiet, self-contained, CPU-only runs of Ray, DeepSpeed and pyrender."""

from __future__ import annotations

import os

# Set before anything imports OpenGL, Ray or DeepSpeed (module import order is not ours to choose).
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
