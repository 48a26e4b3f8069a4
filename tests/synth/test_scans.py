"""Scan loading: formats, units, up axis, sidecars, and a clear reason for every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from data_engine import schema
from synth.config import ScanConfig
from synth.scans import ScanError, find_scans, load_scan, scan_id


def test_textured_obj_loads_upright_in_metres(tmp_path, textured_person, write_obj):
    path = write_obj(tmp_path, "alice", textured_person(1.7))
    subject = load_scan(path, ScanConfig(up_axis="z"))
    assert subject.warnings == []
    assert subject.height_m == pytest.approx(1.7, abs=1e-3)
    pos = subject.geometry.positions
    assert pos[:, 1].min() == pytest.approx(0.0, abs=1e-9)  # standing on the ground
    assert abs(pos[:, 0].max() + pos[:, 0].min()) < 1e-6  # centred
    assert subject.geometry.display[0].visual.kind == "texture"
    assert subject.id == scan_id(path) and subject.id.startswith("scan-")
    assert np.allclose(np.linalg.norm(subject.geometry.normals, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("units, scale", [("mm", 1000.0), ("cm", 100.0)])
def test_units_scale_and_wrong_units_are_refused_with_a_hint(tmp_path, units, scale, textured_person, write_obj):
    mesh = textured_person(1.7)
    mesh.apply_scale(scale)
    path = write_obj(tmp_path, "big", mesh)
    assert load_scan(path, ScanConfig(up_axis="z", units=units)).height_m == pytest.approx(1.7, abs=1e-3)
    with pytest.raises(ScanError, match=rf"big.obj: implausible size.*did you mean --units {units}"):
        load_scan(path, ScanConfig(up_axis="z", units="m"))


def test_glb_and_ply_load(tmp_path, textured_person):
    mesh = textured_person(1.6)
    mesh.export(tmp_path / "a.glb")
    assert load_scan(str(tmp_path / "a.glb"), ScanConfig(up_axis="z")).height_m == pytest.approx(1.6, abs=1e-3)
    plain = trimesh.creation.capsule(height=1.2, radius=0.2)
    plain.visual.vertex_colors = [180, 140, 120, 255]
    plain.export(tmp_path / "b.ply")
    subject = load_scan(str(tmp_path / "b.ply"), ScanConfig(up_axis="z"))
    assert subject.warnings == []  # vertex colours count as colour
    assert subject.height_m == pytest.approx(1.6, abs=1e-3)


def test_missing_texture_renders_flat_and_says_so(tmp_path, textured_person, write_obj):
    path = write_obj(tmp_path, "notex", textured_person())
    for png in (tmp_path / "notex").glob("*.png"):
        png.unlink()
    subject = load_scan(path, ScanConfig(up_axis="z"))
    assert any("texture image missing" in w and "flat colour" in w for w in subject.warnings)
    assert subject.geometry.display[0].visual.kind == "vertex"


def test_bad_inputs_have_clear_reasons(tmp_path, textured_person):
    cfg = ScanConfig(up_axis="z")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ScanError, match=r"notes.txt: not a readable mesh"):
        load_scan(str(tmp_path / "notes.txt"), cfg)
    (tmp_path / "garbage.obj").write_text("this is not an obj\n")
    with pytest.raises(ScanError, match=r"garbage.obj: empty mesh"):
        load_scan(str(tmp_path / "garbage.obj"), cfg)
    (tmp_path / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(ScanError, match=r"points.obj: (empty mesh|not a mesh)"):
        load_scan(str(tmp_path / "points.obj"), cfg)
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(tmp_path / "cloud.ply")
    with pytest.raises(ScanError, match=r"cloud.ply: not a mesh \(trimesh read a PointCloud"):
        load_scan(str(tmp_path / "cloud.ply"), cfg)
    textured_person().export(tmp_path / "whole.glb")
    (tmp_path / "cut.glb").write_bytes((tmp_path / "whole.glb").read_bytes()[:200])
    with pytest.raises(ScanError, match=r"cut.glb: not a readable mesh"):
        load_scan(str(tmp_path / "cut.glb"), cfg)
    nan = trimesh.creation.capsule(height=1.2, radius=0.2)
    vertices = nan.vertices.copy()
    vertices[3] = np.nan
    trimesh.Trimesh(vertices, nan.faces, process=False).export(tmp_path / "nan.ply")
    with pytest.raises(ScanError, match=r"nan.ply: 1 vertices are NaN"):
        load_scan(str(tmp_path / "nan.ply"), cfg)
    with pytest.raises(ScanError, match=r"whole.glb: \d+ faces is over scan.max_faces=100"):
        load_scan(str(tmp_path / "whole.glb"), ScanConfig(up_axis="z", max_faces=100))
    with pytest.raises(ScanError, match=r"whole.glb: \d+ MB is over scan.max_file_mb=0.001"):
        load_scan(str(tmp_path / "whole.glb"), ScanConfig(up_axis="z", max_file_mb=0.001))


def test_sidecar_landmarks_and_labels(tmp_path, textured_person, write_obj):
    mesh = textured_person(1.7)
    path = write_obj(tmp_path, "carl", mesh)
    n = len(trimesh.load(path, process=False).vertices)
    sidecar = {
        "up_axis": "z",
        "units": "dm",
        "landmarks": {"nose": [0.0, -2.0, 15.0], "left_wrist": [2.0, 0.0, 9.0]},
        "vertex_labels": {"Torso": list(range(n // 2)), "Face_Neck": list(range(n // 2, n))},
    }
    big = mesh.copy()
    big.apply_scale(10.0)  # decimetres, as the sidecar says
    path = write_obj(tmp_path, "dora", big)
    (tmp_path / "dora" / "dora.json").write_text(json.dumps(sidecar))
    subject = load_scan(path, ScanConfig())
    assert subject.height_m == pytest.approx(1.7, abs=1e-3)
    assert subject.landmarks.names == ["nose", "left_wrist"]
    # z-up decimetres -> y-up metres, feet on the ground: z 15 dm -> y = 1.5 + 0.85 (the capsule's half height)
    assert subject.landmarks.points[0][1] == pytest.approx(1.5 + 0.85, abs=1e-6)
    # scan_to_world takes the file's vertices, in metres, to the rendered positions.
    file_metres = np.asarray(trimesh.load(path, process=False).vertices) * 0.1
    assert np.allclose(trimesh.transform_points(file_metres, subject.scan_to_world), subject.geometry.positions)
    ids = {n: i for i, n in enumerate(schema.vocabulary("goliath28").names)}
    assert set(np.unique(subject.geometry.face_labels)) <= {ids["Torso"], ids["Face_Neck"]}


@pytest.mark.parametrize(
    "sidecar, message",
    [
        ({"landmarks": {"nose_tip": [0, 0, 0]}}, "not a Goliath keypoint name"),
        ({"landmarks": {"nose": [0, 0]}}, "must be 3 finite numbers"),
        ({"vertex_labels": ["Torso"]}, "vertex_labels has 1 entries"),
        ({"vertex_labels": {"Arm": [0]}}, "unknown class 'Arm'"),
        ({"vertex_labels": {"Torso": [10**9]}}, "vertex ids outside"),
        ({"units": "furlong"}, "sidecar units"),
        ({"colour": "red"}, "unknown sidecar keys"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_sidecars_are_refused(tmp_path, sidecar, message, textured_person, write_obj):
    path = write_obj(tmp_path, "eve", textured_person())
    (tmp_path / "eve" / "eve.json").write_text(json.dumps(sidecar))
    with pytest.raises(ScanError, match=message):
        load_scan(path, ScanConfig(up_axis="z"))


def test_truncated_sidecar_is_refused(tmp_path, textured_person, write_obj):
    path = write_obj(tmp_path, "fay", textured_person())
    (tmp_path / "fay" / "fay.json").write_text('{"landmarks": {"nose": [0, ')
    with pytest.raises(ScanError, match=r"fay.json: sidecar is not valid JSON"):
        load_scan(path, ScanConfig(up_axis="z"))


def test_find_scans_expands_folders_and_reports_missing(tmp_path, scan_dir):
    (scan_dir / "readme.txt").write_text("not a scan")
    paths, missing = find_scans([str(scan_dir), str(tmp_path / "nope.obj"), str(tmp_path / "empty_dir")])
    assert [p.rsplit("/", 1)[1] for p in paths] == ["alice.obj", "bob.glb"]
    assert [m[0].rsplit("/", 1)[1] for m in missing] == ["nope.obj", "empty_dir"]
    assert "no such file" in missing[0][1]
