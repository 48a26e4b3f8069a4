"""The demo's curation input: real photos shipped in installed packages, synthetic renders, duplicates
and a few bad files, so that every branch of the curation DAG shows up in the report.

Nothing is downloaded: scikit-image ships `astronaut` and `camera`, matplotlib ships `grace_hopper.jpg`.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class InputFile:
    name: str
    kind: str  # what the demo expects curation to do with it, for the report: photo, render, duplicate, bad


def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _upscale(rgb: np.ndarray, factor: int) -> np.ndarray:
    """The packaged photos are 512 px; person filters expect larger images, as real corpora are."""
    img = Image.fromarray(rgb)
    return np.asarray(img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC))


def real_photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data

    grace = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    camera = np.repeat(skimage.data.camera()[..., None], 3, axis=2)
    return {
        "astronaut.jpg": _upscale(skimage.data.astronaut(), 2),
        "cameraman.jpg": _upscale(camera, 2),
        "grace_hopper.jpg": _upscale(grace, 2),
    }


def build_curation_inputs(folder: Path, renders: list[Path]) -> list[InputFile]:
    """Fill `folder` with photos, copies of `renders`, duplicates and bad files; return what was written."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    written: list[InputFile] = []

    def put(name: str, data: bytes, kind: str) -> None:
        (folder / name).write_bytes(data)
        written.append(InputFile(name, kind))

    photos = real_photos()
    for name, rgb in photos.items():
        put(name, _jpeg(rgb), "photo")
    for render in renders:
        put(f"render_{render.name}", render.read_bytes(), "render")

    astronaut = photos["astronaut.jpg"]
    put("astronaut copy.jpg", (folder / "astronaut.jpg").read_bytes(), "duplicate")  # exact: same bytes
    small = np.asarray(Image.fromarray(astronaut).resize((768, 768), Image.Resampling.BILINEAR))
    put("astronaut_small_q70.jpg", _jpeg(small, 70), "duplicate")  # near: resized and re-encoded
    h, w = astronaut.shape[:2]
    put("astronaut_cropped.jpg", _jpeg(astronaut[h // 40 : h - h // 40, w // 40 : w - w // 40]), "duplicate")

    put("empty.jpg", b"", "bad")
    put("notes.jpg", b"this is a text file with an image name\n" * 4, "bad")
    put("truncated.jpg", _jpeg(photos["grace_hopper.jpg"])[:5000], "bad")
    put("tiny.png", _png(np.full((40, 30, 3), 128, np.uint8)), "bad")
    put("flat_grey.png", _png(np.full((900, 700, 3), 127, np.uint8)), "bad")
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    written += [InputFile("loop_a.jpg", "bad"), InputFile("loop_b.jpg", "bad")]
    return written


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
