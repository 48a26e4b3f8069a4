"""Standard readers with `data_engine.readers` give exactly what `data_engine.sample.decode` gives, on real
`hv synth` and `hv curate` shards; curated shards load in column-typed readers without our decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from data_engine import readers
from data_engine.curate import run_curate
from data_engine.curate_config import load_config
from data_engine.curate_write import IMAGE_MEMBER
from data_engine.sample import Sample, SampleError, decode, encode, encode_depth
from data_engine.shards import ShardWriter, expand, iter_members, iter_samples
from humanvision_cli import main


def _capsule(radius: float) -> trimesh.Trimesh:
    mesh = trimesh.creation.capsule(height=1.3, radius=radius, count=[16, 16])
    mesh.visual.vertex_colors = np.tile([200, 120, 90, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    return mesh


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory) -> list[str]:
    """`hv synth` of two scans (one with landmarks, so pose.json is on some samples only), plus the same
    renders with a seg map from their mask written beside them (scans carry no part labels)."""
    root = tmp_path_factory.mktemp("synth")
    scans = root / "scans"
    scans.mkdir()
    _capsule(0.2).export(scans / "alice.glb")
    _capsule(0.25).export(scans / "bob.glb")
    (scans / "bob.json").write_text(json.dumps({"landmarks": {"nose": [0.0, 0.2, 0.6]}}))
    out = root / "out"
    args = ["synth", str(scans), "--bodies", "0", "--views", "2", "--size", "48x64", "--out", str(out)]
    with pytest.raises(SystemExit) as done:
        main([*args, "inline=true", "scan.up_axis=z"])
    assert done.value.code == 0
    with ShardWriter(str(root / "seg" / "labelled"), max_count=100) as writer:
        for s in iter_samples(str(out / "shards")):
            s.seg = np.where(s.mask, 1 + np.arange(s.mask.size).reshape(s.mask.shape) % 27, 0).astype(np.uint8)
            s.seg[0, 0] = 255  # ignore
            writer.write(s)
    return expand(str(out / "shards")) + expand(str(root / "seg"))


@pytest.fixture(scope="module")
def curated_shards(ray_local, tmp_path_factory) -> list[str]:
    """`hv curate` of JPEG and PNG photos, so one shard holds both kinds."""
    from skimage import data

    root = tmp_path_factory.mktemp("curated")
    images = root / "images"
    images.mkdir()
    Image.fromarray(data.astronaut()).save(images / "astronaut.jpg", quality=92)
    Image.fromarray(data.chelsea()).save(images / "chelsea.png")
    Image.fromarray(data.coffee()).save(images / "coffee.png")
    cfg = load_config(None, ["progress=false"], inputs=[str(images)], out=str(root / "out"), detector={"name": "none"})
    stats = run_curate(cfg, log=lambda s: None)
    assert stats["status"]["accepted"] == 3
    return expand(str(root / "out" / "shards"))


def _reference(paths: list[str]) -> dict[tuple[str, str], Sample]:
    """(shard path, key) -> the contract's decoding (the labelled copies share their keys with the renders)."""
    return {(m["__url__"], m["__key__"]): decode(m) for path in paths for m in iter_members(path)}


def _assert_same(got: dict, want: Sample) -> None:
    """A reader's decoded sample (member -> value) against the contract's Sample, value for value."""
    image = next(got[name] for name in ("jpg", "png") if got.get(name) is not None)
    assert image.dtype == np.uint8 and np.array_equal(image, want.image)
    # Hugging Face's `Json` feature writes floats with 10 decimals (pandas' ujson): the camera matrices' last
    # digits differ there; the keypoints below still come back equal as float32.
    assert _close(got["json"], want.meta)
    for name, field, dtype in (
        ("depth.png", "depth", np.float32),
        ("normal.png", "normal", np.float32),
        ("seg.png", "seg", np.uint8),
        ("mask.png", "mask", np.bool_),
    ):
        expected = getattr(want, field)
        if expected is None:
            assert got.get(name) is None, name
        else:
            value = np.asarray(got[name])
            assert value.dtype == dtype and np.array_equal(value, expected), name
    if want.pose is None:
        assert got.get("pose.json") is None
    else:
        pose = got["pose.json"]
        assert pose["keypoint_set"] == want.pose.keypoint_set
        for person, expected in zip(pose["persons"], want.pose.persons, strict=True):
            assert np.array_equal(np.asarray(person["keypoints"], np.float32), expected.keypoints)


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        # Ray stores dicts as Arrow structs: an object in a list gains its siblings' keys, as None.
        a = {k: v for k, v in a.items() if k in b or v is not None}
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-10 * max(1.0, abs(b))
    return a == b


def _check_all(rows: list[dict], paths: list[str], labelled: bool) -> None:
    want = _reference(paths)
    assert sorted((str(r["__url__"]), str(r["__key__"])) for r in rows) == sorted(want)
    for row in rows:
        _assert_same(row, want[str(row["__url__"]), str(row["__key__"])])
    if labelled:  # the case the standard decoders get wrong: values beyond 8 bits and 16-bit normals
        assert any(r["depth.png"].max() > 255 / 1000 * 2 for r in rows)
        assert any(r.get("seg.png") is not None for r in rows) and any(r.get("pose.json") for r in rows)


def test_webdataset_map_decodes_synth_and_curated_exactly(synth_shards, curated_shards):
    import webdataset as wds

    for paths, labelled in ((synth_shards, True), (curated_shards, False)):
        rows = list(wds.WebDataset(paths, shardshuffle=False).map(readers.decode_members))
        _check_all(rows, paths, labelled)


def test_hugging_face_datasets_decodes_synth_and_curated_exactly(synth_shards, curated_shards, tmp_path):
    from datasets import load_dataset

    for paths, labelled in ((synth_shards, True), (curated_shards, False)):
        ds = load_dataset(
            "webdataset", data_files=paths, split="train", features=readers.hf_features(), cache_dir=str(tmp_path)
        ).with_transform(readers.hf_transform)
        _check_all(list(ds), paths, labelled)


def test_ray_read_webdataset_decodes_synth_and_curated_exactly(ray_local, synth_shards, curated_shards):
    import ray.data

    rows = list(ray.data.read_webdataset(synth_shards + curated_shards, decoder=readers.decode_members).iter_rows())
    _check_all([r for r in rows if "curated" not in r["__url__"]], synth_shards, True)
    _check_all([r for r in rows if "curated" in r["__url__"]], curated_shards, False)


def test_curated_shards_load_in_column_typed_readers_without_our_decoder(ray_local, curated_shards, tmp_path):
    """Hugging Face's feature inference and Ray's default decoder both refuse a shard mixing jpg and png."""
    import ray.data
    from datasets import load_dataset

    assert len(curated_shards) == 1
    members = list(iter_members(curated_shards[0]))
    assert {m["jpg"][:4] == b"\x89PNG" for m in members} == {True, False}  # PNG and JPEG bytes, one member name
    assert all(set(m) - {"__key__", "__url__"} == {IMAGE_MEMBER, "json"} for m in members)
    want = _reference(curated_shards)
    ds = load_dataset("webdataset", data_files=curated_shards, split="train", cache_dir=str(tmp_path))
    for row in ds:
        assert np.array_equal(np.asarray(row["jpg"].convert("RGB")), want[row["__url__"], row["__key__"]].image)
    rows = list(ray.data.read_webdataset(curated_shards).iter_rows())
    assert len(rows) == 3
    for row in rows:
        assert np.array_equal(row["jpg"], want[curated_shards[0], row["__key__"]].image)


def test_old_shards_mixing_jpg_and_png_samples_still_decode(tmp_path):
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    with ShardWriter(str(tmp_path / "old"), max_count=10) as writer:
        writer.write(Sample(key="a1", image=rgb, image_format="png", meta={"n": 1}))
        writer.write(Sample(key="b2", image=rgb, image_format="jpg", meta={"n": 2}))
    paths = expand(str(tmp_path))
    rows = [readers.decode_members(m) for m in iter_members(paths[0])]
    assert rows[0]["png"] is not None and rows[0]["jpg"] is None and rows[1]["jpg"] is not None
    for row in rows:
        _assert_same(row, _reference(paths)[row["__url__"], row["__key__"]])


def test_every_contract_member_is_present_in_the_decoded_sample_none_when_absent():
    members = encode(Sample(key="c3", image=np.zeros((2, 3, 3), np.uint8)))
    got = readers.decode_members(members)
    assert set(readers.MEMBERS) <= set(got)
    assert got["depth.png"] is None and got["pose.json"] is None and got["png"].shape == (2, 3, 3)
    assert got["__key__"] == "c3" and got["json"]["width"] == 3


def test_a_corrupt_member_names_the_sample_and_the_member():
    members = encode(Sample(key="d4", image=np.zeros((2, 3, 3), np.uint8), depth=np.ones((2, 3), np.float32)))
    members["depth.png"] = members["depth.png"][:20]
    with pytest.raises(SampleError, match=r"d4: cannot decode depth\.png"):
        readers.decode_members(members)
    members["depth.png"] = members["png"]  # an 8-bit RGB image where 16-bit depth belongs
    with pytest.raises(SampleError, match=r"d4: depth\.png: depth\.png must be a 16-bit grey PNG"):
        readers.decode_members(members)
    # Not an image at all: the header check (data_engine.image_header) refuses it before any decoder runs.
    with pytest.raises(SampleError, match=r"e5: cannot decode normal\.png"):
        readers.hf_transform({"__key__": ["e5"], "normal.png": [{"bytes": b"not a png", "path": None}]})


def test_standard_8_bit_decoding_is_what_these_readers_replace():
    """Why they exist: webdataset's rgb8 handler clips depth to 8 bit (a 2.5 m depth comes back as 255)."""
    import webdataset as wds

    data = encode_depth(np.full((2, 2), 2.5, np.float32))
    clipped = wds.autodecode.Decoder([wds.autodecode.imagehandler("rgb8")]).decode({"__key__": "k", "depth.png": data})
    assert np.asarray(clipped["depth.png"]).max() <= 255
    assert np.all(readers.decode_member("depth.png", data) == np.float32(2.5))
