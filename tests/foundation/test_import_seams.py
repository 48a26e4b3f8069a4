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

# module -> modules it must not load when imported
SEAMS = {
    "data_engine.detect": ("ray", "pyarrow", "data_engine.analysis", "data_engine.curate", "data_engine.curate_ray"),
    "synth.scans": ("pyrender", "OpenGL"),
    "synth.views": ("pyrender", "OpenGL"),
    "synth.bodies": ("pyrender", "OpenGL"),
    "synth.geometry": ("pyrender", "OpenGL", "trimesh"),
    "train.launch": ("torch", "deepspeed", "train.engine"),
    "train.ports": ("torch",),
}


def _loaded(code: str) -> str:
    """What `code` prints in a fresh interpreter run from the repository root."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("module", sorted(SEAMS))
def test_import_does_not_load(module: str) -> None:
    out = _loaded(f"import sys, {module}; print(' '.join(m for m in {SEAMS[module]!r} if m in sys.modules))")
    assert out == "", f"importing {module} loaded {out}"


@pytest.mark.parametrize("module", ["data_engine.schema", "data_engine.sample"])
def test_contract_modules_import_only_numpy_pillow_and_the_standard_library(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules if not m.startswith('_')} "
        "- set(sys.stdlib_module_names) - {'numpy', 'PIL', 'data_engine'})))"
    )
    out = _loaded(code)
    assert out == "", f"importing {module} loaded {out} (DESIGN.md: numpy, Pillow and the standard library only)"


def test_a_cpu_launch_command_needs_no_torch() -> None:
    code = (
        "import sys; from train.launch import LaunchSpec, launch_command; "
        "cmd, env = launch_command('train.pretrain', [], LaunchSpec(cpus=2)); "
        "print(' '.join(m for m in ('torch', 'deepspeed') if m in sys.modules))"
    )
    out = _loaded(code)
    assert out == "", f"building a --cpus launch command loaded {out}"
