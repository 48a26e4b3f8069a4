"""Light modules stay light: importing them does not load the heavy libraries that only other modules need.

Each check runs in a fresh interpreter, since this test process has long since imported everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# module -> modules packages it must not load at import
SEAMS = {
    "data_engine.detect": ("ray", "pyarrow", "data_engine.analysis", "data_engine.curate", "data_engine.curate_ray"),
    "synth.scans": ("pyrender", "OpenGL"),
    "synth.views": ("pyrender", "OpenGL"),
    "synth.bodies": ("pyrender", "OpenGL"),
    "synth.geometry": ("pyrender", "OpenGL", "trimesh"),
}


@pytest.mark.parametrize("module", sorted(SEAMS))
def test_import_does_not_load(module: str) -> None:
    code = f"import sys, {module}; print(' '.join(m for m in {SEAMS[module]!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    out = done.stdout.strip()
    assert out == "", f"importing {module} loaded {out}"
