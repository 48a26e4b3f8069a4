"""Fixtures for the curation tests: one shared local Ray, a corpus of good and bad files, a tiny ONNX detector."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# file name -> (status, reason code) that `hv curate --detector none` must give it (default thresholds).
EXPECTED: dict[str, tuple[str, str | None]] = {
    "astronaut.jpg": ("accepted", None),
    "astronaut_copy.jpg": ("duplicate", "exact_duplicate"),
    "astronaut_small.jpg": ("duplicate", "near_duplicate"),
    "astronaut_crop.png": ("duplicate", "near_duplicate"),
    "grace_hopper.jpg": ("accepted", None),
    "camera_grey.png": ("accepted", None),
    "coffee_cmyk.jpg": ("accepted", None),
    "chelsea_rgba.png": ("accepted", None),
    "moon_16bit.png": ("accepted", None),
    "rocket_exif6.jpg": ("accepted", None),
    "ihc_single.gif": ("accepted", None),
    "räume und 人 hubble.jpg": ("accepted", None),
    "animated.gif": ("rejected", "animated"),
    "empty.jpg": ("rejected", "empty_file"),
    "text.jpg": ("rejected", "not_an_image"),
    "truncated.jpg": ("rejected", "truncated_or_corrupt"),
    "bomb.png": ("rejected", "too_many_pixels"),
    "bomb_huge.png": ("rejected", "too_many_pixels"),
    "tiny.jpg": ("rejected", "too_small"),
    "strip.jpg": ("rejected", "bad_aspect_ratio"),
    "blurred.jpg": ("rejected", "blurry"),
    "overexposed.png": ("rejected", "badly_exposed"),
    "flat.png": ("rejected", "near_uniform"),
    "loop.jpg": ("rejected", "unreadable"),
    "broken_link.jpg": ("rejected", "unreadable"),
    "pipe.jpg": ("rejected", "unreadable"),
}
LISTED_MISSING = "listed_but_missing.jpg"  # named by list.txt only


def _jpeg(rgb: np.ndarray, quality: int = 92, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def _png_header_bomb(width: int, height: int, mode_bits: int) -> bytes:
    """A valid PNG of `width x height` black pixels, compressed to a few KB (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = b"\x00" + bytes((width * mode_bits + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([mode_bits, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def textured(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 110, (h, w, 3), dtype=np.uint8)


def make_corpus(folder: Path) -> Path:
    """Write the bad-input corpus of issue 3 into `folder/images` (+ `folder/list.txt`); returns the image folder."""
    import cv2
    import matplotlib.cbook as cbook
    from skimage import data

    images = folder / "images"
    images.mkdir(parents=True)
    astronaut = data.astronaut()  # 512 x 512
    (images / "astronaut.jpg").write_bytes(_jpeg(astronaut))
    shutil.copyfile(images / "astronaut.jpg", images / "astronaut_copy.jpg")
    (images / "astronaut_small.jpg").write_bytes(
        _jpeg(cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA), 70)
    )
    Image.fromarray(astronaut[10:, 10:]).save(images / "astronaut_crop.png")  # 2% crop, another format
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        (images / "grace_hopper.jpg").write_bytes(f.read())
    Image.fromarray(data.camera()).save(images / "camera_grey.png")
    Image.fromarray(data.coffee()).convert("CMYK").save(images / "coffee_cmyk.jpg", quality=92)
    rgba = np.dstack([data.chelsea(), np.full(data.chelsea().shape[:2], 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(images / "chelsea_rgba.png")
    moon16 = data.moon().astype(np.uint16) * 257
    Image.fromarray(moon16).save(images / "moon_16bit.png")  # uint16 -> mode I;16
    # Stored rotated by 90 degrees with EXIF orientation 6 (rotate 270 to display): upright it is data.rocket().
    rocket = data.rocket()  # 427 x 640
    stored = np.ascontiguousarray(np.rot90(rocket, 1))  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    (images / "rocket_exif6.jpg").write_bytes(_jpeg(stored, exif=exif.tobytes()))
    Image.fromarray(data.immunohistochemistry()).convert("P").save(images / "ihc_single.gif")
    frames = [Image.fromarray(textured(300, 300, s)).convert("P") for s in (1, 2)]
    frames[0].save(images / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (images / "räume und 人 hubble.jpg").write_bytes(_jpeg(data.hubble_deep_field()))
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("this is not a JPEG\n")
    gravel = np.repeat(data.gravel()[..., None], 3, axis=2)
    whole = _jpeg(gravel)
    (images / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (images / "bomb.png").write_bytes(_png_header_bomb(12_000, 12_000, 8))  # 144 MP > 89.5 MP, 150 KB on disk
    (images / "bomb_huge.png").write_bytes(_png_header_bomb(20_000, 20_000, 1))  # 400 MP: Pillow's own refusal
    (images / "tiny.jpg").write_bytes(_jpeg(cv2.resize(astronaut, (120, 90))))
    (images / "strip.jpg").write_bytes(_jpeg(cv2.resize(gravel, (2400, 300))))
    brick = np.repeat(data.brick()[..., None], 3, axis=2)
    (images / "blurred.jpg").write_bytes(_jpeg(cv2.GaussianBlur(brick, (0, 0), 6)))
    over = np.full((400, 400, 3), 255, np.uint8)
    over[:, :120] = textured(400, 120, 3)
    Image.fromarray(over).save(images / "overexposed.png")
    flat = np.clip(128 + np.random.default_rng(4).normal(0, 1.5, (400, 400, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(flat).save(images / "flat.png")
    os.symlink("loop.jpg", images / "loop.jpg")  # a link to itself: ELOOP
    os.symlink("nowhere/none.jpg", images / "broken_link.jpg")
    os.mkfifo(images / "pipe.jpg")  # a reader that opened it would block forever
    (images / "notes.md").write_text("not an image extension: folders skip it\n")
    (folder / "list.txt").write_text(
        f"# a list file: relative to this file\nimages/astronaut.jpg\nimages/{LISTED_MISSING}\n\n"
    )
    return images


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (starting one costs ~3 s and 0.8 GB)."""
    import ray

    from data_engine.ray_runtime import init_ray

    if not ray.is_initialized():
        init_ray(
            num_cpus=2,
            object_store_memory=256 * 1024 * 1024,
            _temp_dir=os.path.join(tempfile.gettempdir(), f"hv-ray-test-{os.getuid()}"),
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The bad-input corpus (read-only: copy it before changing it)."""
    folder = tmp_path_factory.mktemp("corpus")
    make_corpus(folder)
    return folder


def build_bright_box_onnx(path: Path, side: int = 128) -> Path:
    """A tiny YOLOv5-layout ONNX "detector": it boxes the bright (> 0.8) pixels of the letterboxed input.

    Output (N, 3, 7) = 3 anchors x [cx, cy, w, h, obj, person, other]: anchor 0 the box (obj 0.95, person),
    anchor 1 the same box 1 px right (obj 0.6: NMS must drop it), anchor 2 the box as class `other` (ignored).
    """
    import torch

    class BrightBox(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, S, S)
            bright = (x.mean(1) > 0.8).float()  # (N, S, S)
            idx = torch.arange(x.shape[-1], dtype=torch.float32)
            cols, rows = bright.amax(1), bright.amax(2)  # (N, S) each
            far = 1e4
            x0 = (idx + (1 - cols) * far).amin(1)
            x1 = (idx - (1 - cols) * far).amax(1) + 1
            y0 = (idx + (1 - rows) * far).amin(1)
            y1 = (idx - (1 - rows) * far).amax(1) + 1
            found = cols.amax(1)
            cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            one, zero = torch.ones_like(cx), torch.zeros_like(cx)
            a0 = torch.stack([cx, cy, w, h, 0.95 * found, one, zero], 1)
            a1 = torch.stack([cx + 1, cy, w, h, 0.6 * found, one, zero], 1)
            a2 = torch.stack([cx, cy, w, h, 0.99 * found, zero, one], 1)
            return torch.stack([a0, a1, a2], 1)

    torch.onnx.export(
        BrightBox(),
        (torch.zeros(1, 3, side, side),),
        str(path),
        input_names=["images"],
        output_names=["output"],
        dynamic_axes={"images": {0: "n"}, "output": {0: "n"}},
        dynamo=False,
    )
    return path


@pytest.fixture(scope="session")
def bright_box_onnx(tmp_path_factory) -> Path:
    return build_bright_box_onnx(tmp_path_factory.mktemp("onnx") / "bright_box.onnx")


def bright_box_image(h: int, w: int, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """A dark textured image with a white rectangle (x0, y0, x1, y1): what BrightBox 'detects'."""
    rgb = textured(h, w, seed)
    x0, y0, x1, y1 = box
    rgb[y0:y1, x0:x1] = 255
    return rgb


@pytest.fixture(scope="session")
def helpers():
    """The module's helpers for test files (pytest's importlib mode does not make conftest importable)."""
    import types

    return types.SimpleNamespace(
        EXPECTED=EXPECTED,
        LISTED_MISSING=LISTED_MISSING,
        make_corpus=make_corpus,
        bright_box_image=bright_box_image,
        build_bright_box_onnx=build_bright_box_onnx,
        textured=textured,
    )
