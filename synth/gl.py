"""The one place that prepares headless OpenGL and imports pyrender.

    from synth.gl import pyrender   # never `import pyrender` directly elsewhere in synth

Headless rendering uses EGL with Mesa (see shared/STACK.md): PYOPENGL_PLATFORM must be set before
anything imports OpenGL, or pyrender falls back to pyglet and fails without a display.
"""

from __future__ import annotations

import os

import numpy as np

# Set before the first OpenGL import; a user's explicit choice (e.g. osmesa) wins.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

# NumPy 2 removed `np.infty`, which pyrender 0.1.45 still uses for scene bounds and every SHADOWS_* flag.
# This shim is the only global patch in the package; it must run before pyrender is imported.
if not hasattr(np, "infty"):
    np.infty = np.inf  # type: ignore[attr-defined]

import pyrender

__all__ = ["pyrender"]
