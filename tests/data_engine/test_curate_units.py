"""The curation stages as pure functions: decoding rules, quality, perceptual hash and bucketed dedup, inputs,
config, detectors (HOG and a real ONNX model run by onnxruntime)."""

from __future__ import annotations

import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_engine import quality
from data_engine.curate_cli import split_items
from data_engine.curate_config import ConfigError, DecodeConfig, DetectorName, check_same_policy, load_config, to_yaml
from data_engine.decode import Reason, Rejection, decode, read_uri
from data_engine.dedup import Candidate, NearDuplicateIndex, decide, hamming, phash
from data_engine.inputs import InputError, check_inputs, iter_uris


def _reason(fn) -> Reason:
    with pytest.raises(Rejection) as info:
        fn()
    return info.value.reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (n, r)
        for n, (s, r) in {
            "empty.jpg": ("", "empty_file"),
            "text.jpg": ("", "not_an_image"),
            "truncated.jpg": ("", "truncated_or_corrupt"),
            "bomb.png": ("", "too_many_pixels"),
            "bomb_huge.png": ("", "too_many_pixels"),
            "animated.gif": ("", "animated"),
        }.items()
    ],
)
def test_decode_rejects_each_bad_file_with_its_reason(corpus, name, reason):
    data = (corpus / "images" / name).read_bytes()
    assert _reason(lambda: decode(data, DecodeConfig(), analysis=True)).value == reason


def test_read_reasons_for_missing_loop_broken_link_fifo_and_folder(corpus):
    images = corpus / "images"
    assert _reason(lambda: read_uri(str(images / "nope.jpg"))) == Reason.missing
    assert _reason(lambda: read_uri(str(images / "loop.jpg"))) == Reason.unreadable
    assert _reason(lambda: read_uri(str(images / "broken_link.jpg"))) == Reason.unreadable
    assert _reason(lambda: read_uri(str(images / "pipe.jpg"))) == Reason.unreadable  # must not block
    assert _reason(lambda: read_uri(str(images))) == Reason.unreadable
    assert _reason(lambda: read_uri(f"file://{images}/nope.jpg")) == Reason.missing  # through pyarrow.fs
    assert read_uri(f"file://{images}/astronaut.jpg") == (images / "astronaut.jpg").read_bytes()


def test_modes_become_rgb_and_are_reencoded_only_when_needed(corpus):
    from skimage import data

    images = corpus / "images"
    cfg = DecodeConfig()
    plain = decode((images / "astronaut.jpg").read_bytes(), cfg, analysis=False)
    assert plain.reencode is None and plain.image_format == "jpg" and plain.rgb.shape == (512, 512, 3)
    grey = decode((images / "camera_grey.png").read_bytes(), cfg, analysis=False)
    assert grey.reencode is None and np.array_equal(grey.rgb[..., 1], data.camera())
    moon = decode((images / "moon_16bit.png").read_bytes(), cfg, analysis=False)
    # 16-bit scaled by 1/257, not clipped to white as Pillow's convert("RGB") would
    assert moon.reencode == "mode I;16" and np.abs(moon.rgb[..., 0].astype(int) - data.moon()).max() <= 1
    rgba = decode((images / "chelsea_rgba.png").read_bytes(), cfg, analysis=False)
    want = np.rint(data.chelsea() * (200 / 255) + 255 * (55 / 255))  # composited over white at alpha 200
    assert rgba.reencode == "mode RGBA" and np.abs(rgba.rgb.astype(int) - want).max() <= 1
    cmyk = decode((images / "coffee_cmyk.jpg").read_bytes(), cfg, analysis=False)
    assert cmyk.reencode == "mode CMYK" and np.abs(cmyk.rgb.astype(int) - data.coffee()).mean() < 12
    gif = decode((images / "ihc_single.gif").read_bytes(), cfg, analysis=False)
    assert gif.reencode == "format GIF" and gif.image_format == "png"


def test_exif_orientation_is_applied(corpus):
    from skimage import data

    got = decode((corpus / "images" / "rocket_exif6.jpg").read_bytes(), DecodeConfig(), analysis=False)
    rocket = data.rocket()
    assert (got.width, got.height) == (rocket.shape[1], rocket.shape[0])
    assert got.reencode == "EXIF orientation 6"
    assert np.abs(got.rgb.astype(int) - rocket).mean() < 6  # upright (a wrong rotation would not even fit)


def test_analysis_copy_is_bounded_and_uses_reduced_jpeg_decoding(corpus):
    big = np.asarray(Image.fromarray(np.zeros((10, 10, 3), np.uint8)).resize((2000, 1500)))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="JPEG")
    got = decode(buf.getvalue(), DecodeConfig(analysis_max_side=300), analysis=True)
    assert (got.width, got.height) == (2000, 1500) and max(got.rgb.shape[:2]) == 300


def test_quality_checks_reject_at_their_thresholds():
    cfg = load_config(None, None, inputs=["x"], out="y").quality
    assert _reason(lambda: quality.check_size(200, 800, cfg)) == Reason.too_small
    assert _reason(lambda: quality.check_size(2000, 300, cfg)) == Reason.bad_aspect_ratio
    quality.check_size(300, 1200, cfg)  # aspect 0.25 is inside the range
    flat = np.full((100, 100), 90, np.uint8)
    assert _reason(lambda: quality.check_figures(quality.measure(flat), cfg)) == Reason.near_uniform
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (100, 100), dtype=np.uint8)
    quality.check_figures(quality.measure(sharp), cfg)
    smooth = np.tile(np.linspace(40, 200, 100), (100, 1)).astype(np.uint8)  # contrast without edges
    assert _reason(lambda: quality.check_figures(quality.measure(smooth), cfg)) == Reason.blurry
    clipped = sharp.copy()
    clipped[:, :70] = 255
    fig = quality.measure(clipped)
    assert fig.clipped >= 0.7
    assert _reason(lambda: quality.check_figures(fig, cfg)) == Reason.badly_exposed


def _grey(rgb: np.ndarray) -> np.ndarray:
    return quality.grey(rgb)


def test_phash_groups_copies_and_separates_different_photos():
    import cv2
    import matplotlib.cbook as cbook
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), grace, data.hubble_deep_field()]
    for rgb in photos:
        h = phash(_grey(rgb))
        small = cv2.resize(rgb, (rgb.shape[1] * 2 // 3, rgb.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
        buf = io.BytesIO()
        Image.fromarray(small).save(buf, format="JPEG", quality=50)
        reencoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        hh, ww = rgb.shape[:2]
        cropped = rgb[hh // 100 : hh - hh // 100, ww // 100 : ww - ww // 100]  # 2% off
        assert hamming(h, phash(_grey(reencoded))) <= 2
        assert hamming(h, phash(_grey(cropped))) <= 8
    hashes = [phash(_grey(p)) for p in photos]
    assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]) > 8


@pytest.mark.parametrize("max_hamming", [0, 4, 8, 12])
def test_bucketed_index_finds_exactly_what_all_pairs_would(max_hamming):
    rng = random.Random(max_hamming)
    kept = [rng.getrandbits(64) for _ in range(300)]
    # queries near some kept hashes (flip a few bits) and random ones
    queries = []
    for _ in range(300):
        base = rng.choice(kept)
        for bit in rng.sample(range(64), rng.randint(0, max_hamming + 2)):
            base ^= 1 << bit
        queries.append(base)
    queries += [rng.getrandbits(64) for _ in range(100)]
    index = NearDuplicateIndex(max_hamming)
    for i, h in enumerate(kept):
        index.add(h, i)
    for q in queries:
        distances = [hamming(q, h) for h in kept]
        best = min(range(len(kept)), key=lambda i: (distances[i], i))
        want = (best, distances[best]) if distances[best] <= max_hamming else None
        assert index.query(q) == want


def test_decide_keeps_the_best_of_a_group_and_respects_earlier_runs():
    base = 0x0F0F_F0F0_3C3C_A5A5
    near = base ^ 0b101  # distance 2
    other = ~base & (2**64 - 1)
    cands = [
        Candidate("small.jpg", "k_small", near, pixels=100, person_score=0.0, blur=50),
        Candidate("big.jpg", "k_big", base, pixels=1000, person_score=0.0, blur=50),
        Candidate("big_copy.jpg", "k_big", base, pixels=1000, person_score=0.0, blur=50),
        Candidate("other.jpg", "k_other", other, pixels=10, person_score=0.0, blur=50),
    ]
    verdicts = {v.uri: v for v in decide(cands, [], max_hamming=4)}
    assert verdicts["big.jpg"].duplicate_of is None  # most pixels wins; "big.jpg" < "big_copy.jpg" breaks the tie
    assert verdicts["big_copy.jpg"].duplicate_of == "k_big" and verdicts["big_copy.jpg"].reason.startswith("exact")
    assert verdicts["small.jpg"].duplicate_of == "k_big" and verdicts["small.jpg"].reason.startswith("near")
    assert verdicts["other.jpg"].duplicate_of is None
    # an image kept by an earlier run stays kept, even against a bigger copy now
    again = {v.uri: v for v in decide(cands[:2], [("k_small", near)], max_hamming=4)}
    assert again["big.jpg"].duplicate_of == "k_small" and again["small.jpg"].duplicate_of == "k_small"
    # near dedup off: only byte-identical files group
    off = {v.uri: v for v in decide(cands, [], max_hamming=4, near=False)}
    assert off["small.jpg"].duplicate_of is None and off["big_copy.jpg"].duplicate_of == "k_big"


def test_inputs_folders_globs_and_list_files(corpus, tmp_path):
    images = corpus / "images"
    folder = list(iter_uris([str(images)], DecodeConfig().extensions))
    assert str(images / "astronaut.jpg") in folder and not any(u.endswith("notes.md") for u in folder)
    assert str(images / "loop.jpg") in folder  # listed (then rejected as unreadable), never followed
    pngs = list(iter_uris([str(images / "*.png")], []))
    assert pngs and all(u.endswith(".png") for u in pngs)
    listed = list(iter_uris([str(corpus / "list.txt"), str(images / "astronaut.jpg")], []))
    # Named twice, listed twice: hv curate drops the repeat on the cluster (test_curate_join), not the listing.
    assert listed == [str(images / name) for name in ("astronaut.jpg", "listed_but_missing.jpg", "astronaut.jpg")]
    (tmp_path / "l.csv").write_text(f"id,path\n1,{images / 'tiny.jpg'}\n2,relative.jpg\n")
    assert list(iter_uris([str(tmp_path / "l.csv")], [], uri_column="path")) == [
        str(images / "tiny.jpg"),
        str(tmp_path / "relative.jpg"),
    ]
    with pytest.raises(InputError, match="no 'uri' column"):
        list(iter_uris([str(tmp_path / "l.csv")], []))
    pq.write_table(pa.table({"uri": [str(images / "flat.png"), None]}), tmp_path / "l.parquet")
    assert list(iter_uris([str(tmp_path / "l.parquet")], [])) == [str(images / "flat.png")]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"bad\.parquet"):
        list(iter_uris([str(tmp_path / "bad.parquet")], []))
    remote = list(iter_uris([f"file://{images}/astro*.jpg"], []))
    assert f"file://{images}/astronaut.jpg" in remote
    with pytest.raises(InputError, match="no such file"):
        check_inputs([str(tmp_path / "absent")])
    with pytest.raises(InputError, match="matches nothing"):
        check_inputs([str(tmp_path / "*.nothing")])


def test_config_layers_and_errors(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("quality:\n  min_short_side: 512\ndetector:\n  name: none\n")
    cfg = load_config(str(yaml), ["quality.min_blur=5"], inputs=["a"], out="o")
    assert cfg.quality.min_short_side == 512 and cfg.quality.min_blur == 5 and cfg.detector.name == DetectorName.none
    for bad, match in [
        (["quality.nope=1"], "nope"),
        (["quality.min_blur=abc"], "min_blur"),
        (["detector.name=yolo"], "name"),
        (["dedup.max_hamming=40"], "max_hamming"),
        (["detector.name=onnx"], "weights"),
        (["worker_niceness=20"], "worker_niceness"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, bad, inputs=["a"], out="o")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"), None, inputs=["a"], out="o")
    assert load_config(None, None, inputs=["a"], out="s3://bucket/out").out == "s3://bucket/out"  # object stores too
    saved = to_yaml(cfg)
    check_same_policy(saved, load_config(str(yaml), ["quality.min_blur=5", "chunk_size=7"], inputs=["b"], out="o"))
    with pytest.raises(ConfigError, match=r"quality.min_blur: 5.0 -> 6.0"):
        check_same_policy(saved, load_config(str(yaml), ["quality.min_blur=6"], inputs=["a"], out="o"))


def test_cli_splits_inputs_from_overrides():
    inputs, overrides = split_items(["a/", "quality.min_blur=3", "./x=y.jpg", "s3://b/k=v/*.jpg"])
    assert inputs == ["a/", "./x=y.jpg", "s3://b/k=v/*.jpg"] and overrides == ["quality.min_blur=3"]


# ---------------------------------------------------------------------------------------------- detectors


def test_onnx_detector_recovers_the_box_in_image_pixels(bright_box_onnx, helpers):
    from data_engine.detect import OnnxYoloDetector

    cfg = load_config(None, [f"detector.weights={bright_box_onnx}"], inputs=["a"], out="o", detector={"name": "onnx"})
    detector = OnnxYoloDetector(cfg.detector)
    tall = helpers.bright_box_image(600, 400, (100, 50, 220, 560))
    wide = helpers.bright_box_image(300, 900, (600, 40, 700, 260), seed=1)
    empty = helpers.textured(200, 200, 2)
    found = detector.detect([tall, wide, empty])
    assert [len(f) for f in found] == [1, 1, 0]  # NMS drops the shifted copy; class "other" is ignored
    for boxes, want, image in zip(found[:2], [(100, 50, 220, 560), (600, 40, 700, 260)], [tall, wide], strict=True):
        pixel = max(image.shape[:2]) / 128  # one network pixel in image pixels
        assert np.allclose(boxes[0][:4], want, atol=pixel + 1), boxes
        assert boxes[0][4] == pytest.approx(0.95)


def test_onnx_detector_bad_weights_fail_naming_the_file(tmp_path, bright_box_onnx):
    from data_engine.detect import DetectorError, OnnxYoloDetector

    def build(path, *more):
        over = [f"detector.weights={path}", *more]
        cfg = load_config(None, over, inputs=["a"], out="o", detector={"name": "onnx"})
        return OnnxYoloDetector(cfg.detector)

    with pytest.raises(DetectorError, match="no such file"):
        build(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(DetectorError, match=r"junk\.onnx"):
        build(tmp_path / "junk.onnx")
    with pytest.raises(DetectorError, match="person_class=5"):
        build(bright_box_onnx, "detector.person_class=5").detect([np.zeros((50, 50, 3), np.uint8)])


def test_hog_detector_boxes_are_inside_the_image():
    from skimage import data

    from data_engine.detect import HogDetector

    cfg = load_config(None, None, inputs=["a"], out="o").detector
    rgb = data.astronaut()
    boxes = HogDetector(cfg).detect([rgb, np.zeros((50, 40, 3), np.uint8)])
    assert boxes[1] == []  # smaller than HOG's 64 x 128 window
    assert boxes[0], "HOG finds candidate windows on the astronaut photo"
    for x0, y0, x1, y1, _ in boxes[0]:
        assert 0 <= x0 < x1 and 0 <= y0 < y1 and y1 - y0 >= 128


def test_nms_suppresses_overlaps_only():
    from data_engine.detect import nms

    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], float)
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.45) == [1, 2]
