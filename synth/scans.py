"""Load a scanned person (OBJ+MTL+texture, GLB/GLTF, PLY) into a Subject, or say clearly why not.

    subject = load_scan("scans/alice.obj", ScanConfig(units="mm", up_axis="z"))

Optional sidecar `alice.json` beside the scan (same stem), in the scan's own coordinates and units:

    {"units": "mm", "up_axis": "z",
     "landmarks": {"nose": [x, y, z], "left_wrist": [x, y, z], ...},     # Goliath keypoint names
     "vertex_labels": {"Torso": [0, 1, ...], "Left_Hand": [...], ...}}   # goliath28 class -> vertex ids
    ("vertex_labels" may instead be a list of class names, one per vertex.)

Every refusal is a ScanError whose message names the file and the reason; the job records it in the
manifest and goes on with the next scan.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import trimesh

from data_engine import schema
from synth.config import UNIT_TO_METRES, ScanConfig
from synth.geometry import SubjectGeometry
from synth.subject import Landmarks, Posed, Subject, normalising_transform

MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply")


class ScanError(ValueError):
    """A scan that cannot be rendered; the message says which file and why."""


def find_scans(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand files and folders into mesh paths (sorted). Returns (paths, [(input, reason)] for missing ones).

    Inside folders only files with a mesh extension are taken; a file named explicitly is always tried,
    so a non-mesh file given by name gets a manifest row with its reason.
    """
    paths: list[str] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(item)
                for name in names
                if name.lower().endswith(MESH_EXTENSIONS)
            )
            if not found:
                missing.append((item, f"folder {item} holds no {'/'.join(MESH_EXTENSIONS)} files"))
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            missing.append((item, f"no such file or folder: {item}"))
    return sorted(dict.fromkeys(paths)), missing


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_id(path: str, sha256: str | None = None) -> str:
    """Content-addressed: the same scan file is the same subject wherever it lives."""
    return "scan-" + (sha256 or file_sha256(path))[:16]


def up_axis_rotation(up: str) -> np.ndarray:
    """(4, 4) rotation taking the named axis to +y (right-handed, no mirroring)."""
    sign = -1.0 if up.startswith("-") else 1.0
    axis = {"x": 0, "y": 1, "z": 2}[up.lstrip("-")]
    source = np.zeros(3)
    source[axis] = sign
    target = np.array([0.0, 1.0, 0.0])
    if np.allclose(source, target):
        return np.eye(4)
    if np.allclose(source, -target):
        return np.diag([1.0, -1.0, -1.0, 1.0])  # half-turn about x
    return trimesh.geometry.align_vectors(source, target)


def load_scan(path: str, config: ScanConfig, sha256: str | None = None) -> Subject:
    """`sha256` of the file when the caller has it already (hashing a large scan twice is wasted I/O)."""
    uri = os.path.abspath(path)
    sha256 = sha256 or file_sha256(path)
    name = os.path.basename(path)
    sidecar = _read_sidecar(path)
    units = sidecar.get("units", config.units)
    up = sidecar.get("up_axis", config.up_axis)
    if units not in UNIT_TO_METRES:
        raise ScanError(f"{name}: sidecar units {units!r} is not one of {sorted(UNIT_TO_METRES)}")
    if up not in ("x", "y", "z", "-x", "-y", "-z"):
        raise ScanError(f"{name}: sidecar up_axis {up!r} is not one of x, y, z, -x, -y, -z")

    meshes = _load_meshes(path, config)
    warnings: list[str] = []
    for i, mesh in enumerate(meshes):
        note = _ensure_colour(mesh, config.flat_color)
        if note:
            warnings.append(f"{name} part {i}: {note}" if len(meshes) > 1 else f"{name}: {note}")

    to_metres = np.diag([UNIT_TO_METRES[units]] * 3 + [1.0])
    transform = up_axis_rotation(up) @ to_metres
    positions = np.concatenate([np.asarray(m.vertices, np.float64) for m in meshes])
    positions = trimesh.transform_points(positions, transform)
    height = float(np.ptp(positions[:, 1]))
    extent = float(np.ptp(positions, axis=0).max())
    if not config.min_height_m <= height <= config.max_height_m:
        hint = _units_hint(extent / UNIT_TO_METRES[units], config)
        raise ScanError(
            f"{name}: implausible size for a person: {height:.4g} m tall with units={units!r} "
            f"(allowed {config.min_height_m}-{config.max_height_m} m){hint}"
        )
    scan_to_world = normalising_transform(positions) @ up_axis_rotation(up)  # the world, from metres in file axes
    transform = scan_to_world @ to_metres
    positions = trimesh.transform_points(positions, normalising_transform(positions))

    rotation = transform[:3, :3] / UNIT_TO_METRES[units]
    normals = np.concatenate([np.asarray(m.vertex_normals, np.float64) for m in meshes]) @ rotation.T
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes])
    faces = np.concatenate([np.asarray(m.faces, np.int64) + off for m, off in zip(meshes, offsets, strict=False)])
    display = []
    for mesh in meshes:
        placed = mesh.copy()
        placed.apply_transform(transform)
        display.append(placed)

    face_labels = _face_labels(sidecar.get("vertex_labels"), len(positions), faces, name)
    landmarks = None
    if "landmarks" in sidecar:
        landmarks = _landmarks(sidecar["landmarks"], transform, config.landmark_tolerance_m, name)
    params = {"file": name, "sha256": sha256, "units": units, "up_axis": up, "height_m": round(height, 4)}
    return Subject(
        id=scan_id(path, sha256),
        kind="scan",
        uri=uri,
        poses=[
            Posed(
                geometry=SubjectGeometry(
                    display=display, positions=positions, normals=normals, faces=faces, face_labels=face_labels
                ),
                landmarks=landmarks,
            )
        ],
        params=params,
        warnings=warnings,
        scan_to_world=scan_to_world,
    )


def _read_sidecar(path: str) -> dict:
    sidecar = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(sidecar):
        return {}
    try:
        with open(sidecar, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScanError(f"{os.path.basename(sidecar)}: sidecar is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ScanError(f"{os.path.basename(sidecar)}: sidecar must be a JSON object")
    unknown = set(data) - {"units", "up_axis", "landmarks", "vertex_labels"}
    if unknown:
        raise ScanError(f"{os.path.basename(sidecar)}: unknown sidecar keys {sorted(unknown)}")
    return data


def _load_meshes(path: str, config: ScanConfig) -> list[trimesh.Trimesh]:
    name = os.path.basename(path)
    size_mb = os.path.getsize(path) / 2**20
    if size_mb > config.max_file_mb:
        raise ScanError(f"{name}: {size_mb:.0f} MB is over scan.max_file_mb={config.max_file_mb:g}; decimate it first")
    try:
        # process=False keeps duplicated vertices at UV seams; merging them breaks the texture.
        loaded = trimesh.load(path, process=False)
    except Exception as e:  # trimesh raises many types for unreadable input: report them as one
        raise ScanError(f"{name}: not a readable mesh ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(loaded, trimesh.Scene):
        meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)]
    elif isinstance(loaded, trimesh.Trimesh):
        meshes = [loaded]
    else:
        raise ScanError(f"{name}: not a mesh (trimesh read a {type(loaded).__name__}, which has no faces)")
    meshes = [m for m in meshes if len(m.faces) > 0]
    if not meshes:
        raise ScanError(f"{name}: empty mesh (no faces)")
    faces = sum(len(m.faces) for m in meshes)
    if faces > config.max_faces:
        raise ScanError(f"{name}: {faces} faces is over scan.max_faces={config.max_faces}; decimate it first")
    for m in meshes:
        if not np.all(np.isfinite(m.vertices)):
            bad = int((~np.isfinite(m.vertices)).any(axis=1).sum())
            raise ScanError(f"{name}: {bad} vertices are NaN or infinite")
    return meshes


def _ensure_colour(mesh: trimesh.Trimesh, flat: list[float]) -> str | None:
    """Give a mesh without a usable texture a flat colour; return a note saying so (None when textured)."""
    visual = mesh.visual
    if visual.kind == "texture":
        material = visual.material
        image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
        if image is not None and visual.uv is not None:
            return None
        note = "texture image missing: rendered with a flat colour"
    elif visual.kind == "vertex" or visual.kind == "face":
        return None
    else:
        note = "no texture or colours: rendered with a flat colour"
    rgba = np.append(np.clip(np.asarray(flat, dtype=np.float64), 0, 1), 1.0)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.rint(rgba * 255).astype(np.uint8))
    return note


def _units_hint(extent_in_units: float, config: ScanConfig) -> str:
    for unit, scale in UNIT_TO_METRES.items():
        if config.min_height_m <= extent_in_units * scale <= config.max_height_m:
            return f"; did you mean --units {unit}?"
    return ""


def _face_labels(spec, vertex_count: int, faces: np.ndarray, name: str) -> np.ndarray | None:
    if spec is None:
        return None
    vocab = schema.vocabulary("goliath28")
    ids = {n: i for i, n in enumerate(vocab.names)}
    labels = np.zeros(vertex_count, dtype=np.uint8)
    if isinstance(spec, list):
        if len(spec) != vertex_count:
            raise ScanError(f"{name}: sidecar vertex_labels has {len(spec)} entries, the mesh {vertex_count} vertices")
        bad = sorted({s for s in spec if s not in ids})
        if bad:
            raise ScanError(f"{name}: sidecar vertex_labels has unknown classes {bad[:5]}; goliath28 has {vocab.names}")
        labels = np.array([ids[s] for s in spec], dtype=np.uint8)
    elif isinstance(spec, dict):
        labels[:] = schema.IGNORE_INDEX  # vertices the sidecar does not name are "ignore", not a guess
        for cls, members in spec.items():
            if cls not in ids:
                raise ScanError(f"{name}: sidecar vertex_labels has unknown class {cls!r}; goliath28 has {vocab.names}")
            idx = np.asarray(members, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= vertex_count):
                raise ScanError(f"{name}: sidecar vertex_labels[{cls!r}] has vertex ids outside 0..{vertex_count - 1}")
            labels[idx] = ids[cls]
    else:
        raise ScanError(f"{name}: sidecar vertex_labels must be a list of class names or a class -> vertex ids object")
    # A face takes the label two of its corners agree on, else its first corner's.
    corner = labels[faces]
    return np.where(corner[:, 1] == corner[:, 2], corner[:, 1], corner[:, 0]).astype(np.uint8)


def _landmarks(spec, transform: np.ndarray, tolerance: float, name: str) -> Landmarks:
    if not isinstance(spec, dict) or not spec:
        raise ScanError(f"{name}: sidecar landmarks must be a non-empty object of keypoint name -> [x, y, z]")
    index = schema.keypoint_index()
    names, points = [], []
    for key, xyz in spec.items():
        if key not in index:
            raise ScanError(f"{name}: sidecar landmark {key!r} is not a Goliath keypoint name (see `hv schema`)")
        p = np.asarray(xyz, dtype=np.float64) if isinstance(xyz, list) else np.array([])
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise ScanError(f"{name}: sidecar landmark {key!r} must be 3 finite numbers, got {xyz!r}")
        names.append(key)
        points.append(p)
    world = trimesh.transform_points(np.stack(points), transform)
    return Landmarks(names=names, points=world, support=[p[None] for p in world], tolerance=tolerance)
