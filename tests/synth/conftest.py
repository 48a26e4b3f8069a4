"""Fixtures for synth tests: small textured scans made on the fly, caches for anny that CI pays once."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

# anny's first model build takes ~35 s and 0.8 GB: keep it (and warp's kernels) in one stable folder.
_CACHE = os.path.expanduser("~/.cache/humanvision-test")
os.environ.setdefault("ANNY_CACHE_DIR", os.path.join(_CACHE, "anny"))
os.environ.setdefault("WARP_CACHE_PATH", os.path.join(_CACHE, "warp"))


def make_person(height: float = 1.7, radius: float = 0.2):
    """A capsule the size of a person, with spherical UVs and a checker texture."""
    import trimesh
    from PIL import Image

    mesh = trimesh.creation.capsule(height=height - 2 * radius, radius=radius, count=[24, 24])
    v = mesh.vertices
    uv = np.stack([np.arctan2(v[:, 1], v[:, 0]) / (2 * np.pi) + 0.5, (v[:, 2] - v[:, 2].min()) / np.ptp(v[:, 2])], 1)
    cells = (np.indices((64, 64)).sum(0) // 8 % 2).astype(np.uint8)
    image = np.stack([cells * 200 + 30, 80 + cells * 60, 120 - cells * 60], -1).astype(np.uint8)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(image))
    return mesh  # z up, centred at the origin


def save_obj(folder, name: str, mesh) -> str:
    """OBJ + MTL + PNG in their own folder (trimesh names the material files generically)."""
    sub = folder / name
    sub.mkdir()
    path = sub / f"{name}.obj"
    mesh.export(path)
    return str(path)


@pytest.fixture
def scan_dir(tmp_path):
    """Two good scans (textured OBJ z-up, GLB y-up) in a folder."""
    import trimesh

    folder = tmp_path / "scans"
    folder.mkdir()
    save_obj(folder, "alice", make_person())
    bob = make_person(1.6, 0.25)
    bob.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z up -> y up
    bob.export(folder / "bob.glb")
    # bob is y-up while the job says z-up: his sidecar corrects it, and gives two landmarks (file units).
    sidecar = {"up_axis": "y", "landmarks": {"nose": [0.0, 0.5, 0.25], "left_ear": [0.0, 0.5, -0.25]}}
    (folder / "bob.json").write_text(json.dumps(sidecar))
    return folder


@pytest.fixture
def textured_person():
    """The `make_person` factory (test modules cannot import conftest under --import-mode=importlib)."""
    return make_person


@pytest.fixture
def write_obj():
    return save_obj
