"""`hv synth` end to end: Ray workers, shards per the contract, manifest, determinism, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from data_engine import schema
from data_engine.shards import expand, iter_samples
from humanvision_cli import main
from synth.config import load_config
from synth.engine import run_job

SIZE = ["--size", "128x96"]


def hv(*argv: str) -> int:
    try:
        main(["synth", *argv])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def samples(out) -> list:
    return list(iter_samples(str(out / "shards"), policy="raise"))


def manifest(out) -> dict[str, dict]:
    return {r["uri"].rsplit("/", 1)[-1]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}


@pytest.mark.slow
def test_ray_job_writes_contract_shards_and_manifest_then_resumes_as_a_no_op(
    tmp_path, scan_dir, capsys, textured_person
):
    (scan_dir / "broken.obj").write_text("v 0 0 0\nnot a face\n")
    giant = textured_person(1.7)
    giant.apply_scale(1000.0)  # millimetres, but the job says metres
    giant.export(scan_dir / "giant.glb")
    out = tmp_path / "out"
    args = [str(scan_dir), "--bodies", "1", "--views", "2", *SIZE, "--out", str(out), "workers=2", "scan.up_axis=z"]
    assert hv(*args) == 0
    rows = manifest(out)
    assert {k: r["status"] for k, r in rows.items()} == {
        "alice.obj": "done",
        "bob.glb": "done",
        "broken.obj": "rejected",
        "giant.glb": "rejected",
        "0": "done",  # anny://seed/0/body/0
    }
    assert "not a mesh" in rows["broken.obj"]["reason"]
    assert "implausible size" in rows["giant.glb"]["reason"] and "--units mm" in rows["giant.glb"]["reason"]
    assert rows["alice.obj"]["views_written"] == 2 and rows["0"]["views_written"] == 2
    got = samples(out)
    assert len(got) == 6 and len({s.key for s in got}) == 6
    for s in got:
        assert s.image.shape == (96, 128, 3) and s.meta["split"] in ("train", "heldout")
        cam = s.meta["camera"]
        assert np.array(cam["K"]).shape == (3, 3) and np.array(cam["world_to_camera"]).shape == (4, 4)
        assert s.mask.any() and np.all(s.depth[s.mask] > 0) and np.all(s.depth[~s.mask] == 0)
        assert np.allclose(np.linalg.norm(s.normal[s.mask], axis=-1), 1.0, atol=1e-3)
        assert s.meta["persons"][0]["detector"] == "synth"
    bodies = [s for s in got if s.meta["synth"]["kind"] == "body"]
    scans = [s for s in got if s.meta["synth"]["kind"] == "scan"]
    for s in bodies:
        assert s.seg is not None and s.meta["seg_vocabulary"] == "goliath28"
        assert set(np.unique(s.seg[s.mask])) - {0} and np.all(s.seg[~s.mask] == 0)
        kp = s.pose.persons[0].keypoints
        assert s.pose.keypoint_set == "all" and kp.shape == (308, 3)
        assert (kp[:, 2] > 0).sum() >= 20 and np.all(kp[70:, 2] == 0)  # face points are not given by anny
        # Visible joints land on the person (within 2 px: at 128x96 a finger is thinner than a pixel).
        near = ndimage.binary_dilation(s.mask, iterations=2)
        visible = kp[kp[:, 2] == 2]
        assert np.all(near[visible[:, 1].astype(int), visible[:, 0].astype(int)])
    for s in scans:
        assert s.seg is None  # no part labels: no seg.png
        if s.meta["source"]["uri"].endswith("alice.obj"):
            assert s.pose is None  # no landmarks: no pose.json
        else:  # bob's sidecar landmarks: the nose faces +z, the ear -z
            kp = s.pose.persons[0].keypoints
            assert kp[0, 2] in (1, 2) and np.all(kp[5:, 2] == 0)
    assert (out / "config.yaml").exists()
    # A second run finds everything finished: no new renders, same shards.
    before = sorted(os.listdir(out / "shards"))
    capsys.readouterr()
    assert hv(*args) == 0
    assert "0 subjects to render" in capsys.readouterr().err
    assert sorted(os.listdir(out / "shards")) == before


def test_same_seed_same_renders_and_keys_other_seed_differs(tmp_path, scan_dir):
    def run(out, seed):
        cfg = load_config(None, ["inline=true", "scan.up_axis=z", "views=2", "width=96", "height=64"])
        cfg.out, cfg.scans, cfg.seed = str(tmp_path / out), [str(scan_dir / "alice")], seed
        run_job(cfg, log=lambda _: None)
        return {s.key: s for s in samples(tmp_path / out)}

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert a.keys() == b.keys() and len(a) == 2
    for key in a:
        assert np.array_equal(a[key].image, b[key].image) and np.array_equal(a[key].depth, b[key].depth)
    assert not set(a) & set(c)


@pytest.mark.slow
def test_killed_job_resumes_to_the_same_keys_without_duplicates(tmp_path, textured_person, write_obj):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        write_obj(folder, f"p{i}", textured_person(1.5 + 0.1 * i))
    common = [str(folder), "--views", "8", "--size", "64x48", "scan.up_axis=z", "shard_max_count=3"]
    clean = tmp_path / "clean"
    assert hv(*common, "--out", str(clean), "inline=true") == 0
    want = sorted(s.key for s in samples(clean))

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "humanvision_cli", "synth", *common, "--out", str(killed), "inline=true"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = killed / "manifest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and any(p.startswith("part-") for p in os.listdir(parts)):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.parquet").exists(), "the job finished before it could be killed"

    assert hv(*common, "--out", str(killed), "workers=2") == 0  # resumed on Ray
    got = [s.key for s in samples(killed)]
    assert sorted(got) == want and len(got) == len(set(got))
    assert not [n for n in os.listdir(killed / "shards") if ".tmp-" in n]
    rows = pq.read_table(killed / "manifest.parquet").to_pylist()
    assert len(rows) == 3 and all(r["status"] == "done" and r["views_written"] == 8 for r in rows)


def test_config_errors_fail_at_start_up(tmp_path, scan_dir, capsys):
    out = str(tmp_path / "o")
    assert hv(str(scan_dir), "--out", out, "camera.focal=50") == 2
    assert "focal" in capsys.readouterr().err
    assert hv(str(scan_dir), "--out", out, "--size", "12x") == 2
    assert "1024x768" in capsys.readouterr().err
    assert hv(str(scan_dir), "--out", out, "views=0") == 2
    assert "views must be >= 1" in capsys.readouterr().err
    assert hv(str(scan_dir), "--out", out, "camera.fill=[0.9,0.2]") == 2
    assert "camera.fill" in capsys.readouterr().err
    assert hv(str(scan_dir), "--out", out, "bodies.hair_prob=1.5") == 2
    assert "bodies.hair_prob must be within [0, 1]" in capsys.readouterr().err
    assert hv(str(scan_dir), "--out", out, "--backgrounds", str(tmp_path / "none")) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_resume_with_other_render_settings_is_refused(tmp_path, scan_dir, capsys):
    out = str(tmp_path / "o")
    base = [str(scan_dir / "alice"), "--views", "1", "--size", "64x48", "--out", out, "inline=true", "scan.up_axis=z"]
    assert hv(*base) == 0
    assert hv(*base, "camera.focal_mm=[50,60]") == 2
    assert "different render settings (camera.focal_mm)" in capsys.readouterr().err
    assert hv(*base, "workers=3") == 0  # execution settings may change


def test_unreadable_background_fails_the_subject_and_a_rerun_retries_it(tmp_path, scan_dir):
    from PIL import Image

    bg = tmp_path / "bg"
    bg.mkdir()
    (bg / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "o"
    args = [str(scan_dir / "alice"), "--views", "1", "--size", "64x48", "--out", str(out), "inline=true"]
    assert hv(*args, "scan.up_axis=z", "--backgrounds", str(bg)) == 1
    row = pq.read_table(out / "manifest.parquet").to_pylist()[0]
    assert row["status"] == "failed" and "bad.png: not a readable image" in row["reason"]
    assert not list((out / "shards").iterdir())
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(bg / "bad.png")
    assert hv(*args, "scan.up_axis=z", "--backgrounds", str(bg)) == 0
    (s,) = samples(out)
    assert s.meta["synth"]["view_params"]["background"]["file"] == "bad.png"
    assert np.array_equal(s.image[0, 0], [90, 90, 90]) or not s.mask[0, 0]


def test_preview_draws_a_sheet_and_reports_bad_shards(tmp_path, scan_dir, capsys):
    from PIL import Image

    out = tmp_path / "o"
    args = [str(scan_dir / "alice"), "--views", "3", "--size", "64x48", "--out", str(out), "inline=true"]
    assert hv(*args, "scan.up_axis=z") == 0
    sheet = tmp_path / "sheet.png"
    assert hv("preview", str(out), "--out", str(sheet), "--count", "2") == 0
    with Image.open(sheet) as img:
        assert img.size == (5 * 256, 2 * 192)  # five tiles of 256x192 per sample
    (out / "shards" / "zz-000000.tar").write_bytes(b"not a tar at all" * 100)
    assert hv("preview", str(out), "--out", str(sheet), "--count", "10") == 0
    assert "BAD" in capsys.readouterr().err and "zz-000000.tar" in str(expand(str(out / "shards")))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert hv("preview", str(empty), "--out", str(sheet)) == 2
    assert "no shards match" in capsys.readouterr().err


def test_shipped_configs_load_and_default_yaml_matches_the_dataclasses(tmp_path):
    from dataclasses import asdict

    from synth.config import ConfigError, SynthConfig

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synth")
    assert asdict(load_config(os.path.join(root, "default.yaml"))) == asdict(SynthConfig())
    assert load_config(os.path.join(root, "bodies.yaml")).bodies.count > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("camera:\n  focal_length: 50\n")
    with pytest.raises(ConfigError, match="focal_length"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match=r"lights\.kinds"):
        load_config(None, ["lights.kinds=[laser]"])
    with pytest.raises(ConfigError, match=r"bad\.yml"):
        load_config(str(tmp_path / "bad.yml"))


@pytest.mark.slow
def test_no_scans_renders_default_bodies(tmp_path, monkeypatch, capsys):
    import synth.cli

    monkeypatch.setattr(synth.cli, "DEFAULT_BODIES", 2)  # the real default is 10; two show the behaviour
    out = tmp_path / "o"
    assert hv("--out", str(out), "--views", "1", "--size", "64x48", "inline=true") == 0
    assert "no scans given: rendering 2 random bodies" in capsys.readouterr().err
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(r["subject"] for r in rows) == ["body-0-000000", "body-0-000001"]
    assert all(r["status"] == "done" for r in rows)


def test_split_is_per_subject_stable_and_follows_the_fraction():
    from synth.engine import split_of

    ids = [f"body-0-{i:06d}" for i in range(2000)]
    held = [split_of(i, 0.1) == "heldout" for i in ids]
    assert 0.08 < sum(held) / len(ids) < 0.12
    assert held == [split_of(i, 0.1) == "heldout" for i in ids]  # same answer every time
    assert all(split_of(i, 0.0) == "train" for i in ids) and all(split_of(i, 1.0) == "heldout" for i in ids)
    # Growing the held-out fraction only moves subjects from train to held-out, never back.
    assert all(split_of(i, 0.2) == "heldout" for i, h in zip(ids, held, strict=True) if h)


def test_scan_to_world_projects_scan_frame_points_onto_the_render(tmp_path, textured_person, write_obj):
    """K @ world_to_camera @ scan_to_world takes points in the scan's own frame (metres) to the pixels drawn."""
    mesh = textured_person(1.7)  # z up, in metres
    mesh.apply_translation([0.4, -0.3, 0.05])  # off-centre and below the floor in its own frame
    mesh.apply_scale(1000.0)  # stored in millimetres
    file_vertices = np.asarray(mesh.vertices) / 1000.0  # the file's frame, after units
    top, side = int(np.argmax(file_vertices[:, 2])), int(np.argmax(file_vertices[:, 0]))
    path = write_obj(tmp_path, "gus", mesh)
    landmarks = {"nose": (file_vertices[top] * 1000).tolist(), "left_ear": (file_vertices[side] * 1000).tolist()}
    (tmp_path / "gus" / "gus.json").write_text(json.dumps({"landmarks": landmarks}))
    cfg = load_config(None, ["inline=true", "scan.up_axis=z", "scan.units=mm", "views=3", "width=128", "height=96"])
    cfg.out, cfg.scans = str(tmp_path / "out"), [path]
    assert run_job(cfg, log=lambda _: None).done == 1

    got = samples(tmp_path / "out")
    assert len(got) == 3
    checked = 0
    for s in got:
        cam = s.meta["camera"]
        projection = np.array(cam["K"]) @ (np.array(cam["world_to_camera"]) @ np.array(cam["scan_to_world"]))[:3]
        homogeneous = np.c_[file_vertices, np.ones(len(file_vertices))] @ projection.T
        uv = homogeneous[:, :2] / homogeneous[:, 2:]
        # The scan's landmarks, given in its own frame, land on the keypoints the job wrote.
        kp = s.pose.persons[0].keypoints
        index = schema.keypoint_index()
        for name, vertex in (("nose", top), ("left_ear", side)):
            k = index[name]
            if kp[k, 2] > 0:
                assert np.allclose(kp[k, :2], uv[vertex], atol=1e-3)
                checked += 1
        # Every projected vertex lies on the rendered mask (within a pixel), and the silhouette's box is theirs.
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < 128) & (uv[:, 1] >= 0) & (uv[:, 1] < 96)
        near = ndimage.binary_dilation(s.mask, iterations=1)
        assert np.all(near[uv[inside, 1].astype(int), uv[inside, 0].astype(int)])
        x0, y0, x1, y1 = s.meta["persons"][0]["bbox"]
        lo, hi = np.clip(uv.min(0), 0, [128, 96]), np.clip(uv.max(0), 0, [128, 96])
        assert np.allclose([x0, y0], lo, atol=1.0) and np.allclose([x1, y1], hi, atol=1.0)
    assert checked >= 3
