"""Hostile shards: image bombs (small members declaring huge images), GNU sparse and oversized tar members are
refused by key and reason before anything is decoded or expanded, with the reader's peak memory bounded."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hostile import add_sparse_member, jpeg_bomb, png16_rgb_bomb, run_measured

from data_engine.image_header import ImageSizeError, check_size
from data_engine.sample import Sample, SampleError, decode, decode_image, decode_normal, dumps, encode
from data_engine.shards import ReadReport, ShardWriter, iter_samples

# `hv shards inspect` of a small good shard peaks near 40 MB; decoding the 12000x12000 JPEG alone needs 432 MB
# (its RGB array), the 10000x10000 16-bit normal map 600 MB before its float32 copy.
PEAK_MB = 250


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"jpg": jpeg_bomb(12000, 12000), "normal": png16_rgb_bomb(10000, 10000)}


def good_members(key: str) -> dict:
    image = np.zeros((72, 96, 3), np.uint8)
    image[10:40, 20:50] = 200
    normal = np.zeros((72, 96, 3), np.float32)
    normal[..., 2] = -1.0
    return encode(Sample(key=key, image=image, meta={"split": "val"}, normal=normal))


def bomb_shard(folder: Path, bombs: dict[str, bytes]) -> dict[str, str]:
    """One good sample and three bombs; {key: what the reason must mention}."""
    jpg_small_json = good_members("b1")
    del jpg_small_json["png"]
    jpg_small_json["jpg"] = bombs["jpg"]  # json says 96x72
    jpg_big_json = dict(jpg_small_json, __key__="b2")
    jpg_big_json["json"] = dumps({**json.loads(jpg_big_json["json"]), "width": 12000, "height": 12000})
    del jpg_big_json["normal.png"]
    normal = dict(good_members("b3"), **{"normal.png": bombs["normal"]})
    with ShardWriter(str(folder / "s")) as writer:
        for members in (good_members("a0"), jpg_small_json, jpg_big_json, normal):
            writer.write(members)
    return {"b1": "json says 96x72", "b2": "max_pixels", "b3": "normal.png: header declares 10000x10000"}


def test_image_bombs_refused_by_inspect_with_bounded_memory(tmp_path: Path, bombs) -> None:
    expected = bomb_shard(tmp_path / "bombs", bombs)
    code, peak_mb, output = run_measured("shards", "inspect", str(tmp_path / "bombs"), "--json")
    assert code == 1, output
    assert peak_mb < PEAK_MB, f"hv shards inspect peaked at {peak_mb} MB"
    report = json.loads(output[output.index("{") : output.rindex("}") + 1])
    reasons = {bad["key"]: bad["reason"] for bad in report["bad"]}
    assert set(reasons) == set(expected)
    for key, phrase in expected.items():
        assert phrase in reasons[key], reasons[key]


def test_training_reader_skips_bombs_by_key(tmp_path: Path, bombs) -> None:
    expected = bomb_shard(tmp_path / "bombs", bombs)
    report = ReadReport()
    got = [s.key for s in iter_samples(str(tmp_path / "bombs"), policy="skip", report=report)]
    assert got == ["a0"]
    assert {b.key: ("12000x12000" in b.reason or "10000x10000" in b.reason) for b in report.bad} == dict.fromkeys(
        expected, True
    )


def test_codecs_check_the_header_before_decoding(bombs) -> None:
    """Image files (hv predict) and label files (eval metrics) go through the same codecs."""
    with pytest.raises(ImageSizeError, match="12000x12000"):
        decode_image(bombs["jpg"])
    with pytest.raises(ImageSizeError, match="10000x10000"):
        decode_normal(bombs["normal"])
    small = good_members("c0")
    assert check_size(small["png"], expected=(96, 72)) == (96, 72)
    with pytest.raises(ImageSizeError, match="max_pixels"):
        decode_image(small["png"], max_pixels=96 * 72 - 1)
    with pytest.raises(SampleError, match=r"c0: png: .* \(max_pixels\)"):
        decode(small, max_pixels=96 * 72 - 1)
    assert decode(small, max_pixels=96 * 72).normal.shape == (72, 96, 3)  # every member decoded under the limit
    with pytest.raises(Exception, match="cannot identify image file"):
        check_size(b"GIF89a broken")


def test_sparse_member_refused_with_bounded_memory(tmp_path: Path) -> None:
    """A 10 KB shard declaring a 1 GB GNU sparse member: reading it would allocate the whole gigabyte."""
    members = good_members("d0")
    with tarfile.open(tmp_path / "sparse-000000.tar", "w") as tar:
        add_sparse_member(tar, "d1.png", declared=1 << 30)
        for name in ("json", "normal.png"):
            info = tarfile.TarInfo(f"d1.{name}")
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    assert (tmp_path / "sparse-000000.tar").stat().st_size < 20_000
    code, peak_mb, output = run_measured("shards", "inspect", str(tmp_path / "sparse-000000.tar"))
    assert code == 1, output
    assert peak_mb < PEAK_MB, f"hv shards inspect peaked at {peak_mb} MB"
    assert "key=d1" in output and "GNU sparse" in output


def test_oversized_member_refused_by_key(tmp_path: Path) -> None:
    from data_engine.shards import iter_members

    with ShardWriter(str(tmp_path / "s")) as writer:
        writer.write(good_members("e0"))
    shard = str(next(tmp_path.glob("*.tar")))
    (members,) = iter_members(shard, max_member_bytes=200)  # the png and normal.png are larger than 200 bytes
    assert members["__key__"] == "e0" and "over the member size cap of 200" in members["__error__"]
    assert members["png"] == b""  # never read
    report = ReadReport()
    assert list(iter_samples(shard, policy="skip", report=report)) != []  # the default cap reads it
