"""Read and decode one input safely: every failure becomes a `Rejection` with a reason, never a crash.

Rules (each input gets exactly one reason when it fails):
- `missing`: the path or URI does not exist.
- `unreadable`: it exists but cannot be read: permission denied, a symlink loop, a folder or a FIFO (only
  regular files are opened, so a FIFO never blocks the reader).
- `empty_file`: zero bytes.
- `not_an_image`: Pillow recognises no image format in the bytes.
- `too_many_pixels`: width x height over `decode.max_pixels`, judged from the header before any pixel is
  decoded (a PNG "decompression bomb" is a few KB on disk and gigabytes in memory).
- `animated`: more than one frame (animated GIF, APNG, WebP, multi-page TIFF): which frame is "the image" is
  arbitrary, so none is taken. A single-frame GIF is an ordinary image.
- `truncated_or_corrupt`: the header parses but the pixels do not decode (truncated file, broken stream).

Accepted modes become RGB: L, 1, CMYK, YCbCr by Pillow's conversion; I;16 / I (16-bit grey) scaled by 1/257;
P, LA, RGBA and PA composited over white (transparent pixels carry no colour worth keeping).
The EXIF orientation tag is applied (`ImageOps.exif_transpose`).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from dataclasses import dataclass
from enum import Enum

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from data_engine.curate_config import DecodeConfig

_ORIENTATION_TAG = 0x0112
_KEEPABLE_FORMATS = {"JPEG": "jpg", "PNG": "png"}
# Modes whose bytes decode to the same RGB pixels everywhere (sample.decode_image converts L exactly).
_KEEPABLE_MODES = ("RGB", "L")


class Reason(str, Enum):
    """Why an input is not accepted. The manifest's `reason` is `<code>` or `<code>: <detail>`."""

    missing = "missing"
    unreadable = "unreadable"
    empty_file = "empty_file"
    not_an_image = "not_an_image"
    too_many_pixels = "too_many_pixels"
    animated = "animated"
    truncated_or_corrupt = "truncated_or_corrupt"
    too_small = "too_small"
    bad_aspect_ratio = "bad_aspect_ratio"
    blurry = "blurry"
    badly_exposed = "badly_exposed"
    near_uniform = "near_uniform"
    no_person = "no_person"
    changed_since_analysis = "changed_since_analysis"  # the bytes changed between analysis and writing
    exact_duplicate = "exact_duplicate"
    near_duplicate = "near_duplicate"


class Rejection(Exception):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail

    @property
    def text(self) -> str:
        return str(self)


def reason_code(reason: str | None) -> str | None:
    """`'blurry: 3.1 < 20'` -> `'blurry'` (stats count by code)."""
    return None if reason is None else reason.split(":", 1)[0]


def is_uri(path: str) -> bool:
    return "://" in path


def read_uri(uri: str) -> bytes:
    """All bytes of a local path or a `pyarrow.fs` URI; raises Rejection(missing | unreadable)."""
    if is_uri(uri):
        return _read_remote(uri)
    try:
        st = os.stat(uri)  # follows links: a loop raises ELOOP here
    except FileNotFoundError:
        if os.path.islink(uri):
            raise Rejection(Reason.unreadable, "broken symbolic link") from None
        raise Rejection(Reason.missing, "no such file") from None
    except OSError as e:
        raise Rejection(Reason.unreadable, _os_detail(e)) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise Rejection(Reason.unreadable, kind)
    try:
        with open(uri, "rb") as f:
            return f.read()
    except OSError as e:
        raise Rejection(Reason.unreadable, _os_detail(e)) from None


def _read_remote(uri: str) -> bytes:
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(inner)
    except Exception as e:
        raise Rejection(Reason.unreadable, f"{type(e).__name__}: {e}") from None
    if info.type == fs.FileType.NotFound:
        raise Rejection(Reason.missing, "no such object")
    if info.type != fs.FileType.File:
        raise Rejection(Reason.unreadable, "not a file")
    try:
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    except Exception as e:
        raise Rejection(Reason.unreadable, f"{type(e).__name__}: {e}") from None


def _os_detail(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, type(e).__name__)
    return f"{name}: {e.strerror or e}"


@dataclass
class Decoded:
    """An image decoded to RGB, upright. `rgb` is at full size or, for analysis, long side <= the limit."""

    rgb: np.ndarray  # (h, w, 3) uint8
    width: int  # full size after orientation
    height: int
    image_format: str  # "jpg" or "png": what the shard member will be
    reencode: str | None  # why the original bytes cannot be kept, or None


def decode(data: bytes, cfg: DecodeConfig, analysis: bool) -> Decoded:
    """Decode bytes to upright RGB. `analysis=True` returns a copy with long side <= cfg.analysis_max_side."""
    if len(data) == 0:
        raise Rejection(Reason.empty_file)
    try:
        with warnings.catch_warnings():
            # Our own limit (cfg.max_pixels) decides; Pillow's warning between 1x and 2x its limit is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Rejection(Reason.not_an_image, "no known image format") from None
    except Image.DecompressionBombError as e:
        raise Rejection(Reason.too_many_pixels, str(e)) from None
    except Exception as e:  # Pillow raises SyntaxError, OSError, ValueError... for broken headers
        raise Rejection(Reason.truncated_or_corrupt, f"{type(e).__name__}: {e}") from None
    with img:
        raw_w, raw_h = img.size
        if raw_w <= 0 or raw_h <= 0:
            raise Rejection(Reason.truncated_or_corrupt, f"header says {raw_w}x{raw_h}")
        if raw_w * raw_h > cfg.max_pixels:
            raise Rejection(Reason.too_many_pixels, f"{raw_w}x{raw_h} > {cfg.max_pixels} pixels")
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            raise Rejection(Reason.animated, f"{frames} frames")
        source_format, source_mode = img.format or "", img.mode
        try:
            orientation = int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
        except Exception:
            orientation = 1  # an unparsable EXIF block: the pixels may still be fine
        if analysis and source_format == "JPEG":
            scale = cfg.analysis_max_side / max(raw_w, raw_h)
            if scale < 1:
                img.draft(None, (max(1, int(raw_w * scale)), max(1, int(raw_h * scale))))  # type: ignore[arg-type]
        try:
            img.load()
            upright = ImageOps.exif_transpose(img) if orientation != 1 else img
            rgb = to_rgb(upright)
        except Rejection:
            raise
        except Exception as e:
            raise Rejection(Reason.truncated_or_corrupt, f"{type(e).__name__}: {e}") from None
    swap = orientation in (5, 6, 7, 8)  # rotations by 90 degrees swap width and height
    width, height = (raw_h, raw_w) if swap else (raw_w, raw_h)
    reencode = None
    if source_format not in _KEEPABLE_FORMATS:
        reencode = f"format {source_format or 'unknown'}"
    elif orientation != 1:
        reencode = f"EXIF orientation {orientation}"
    elif source_mode not in _KEEPABLE_MODES:
        reencode = f"mode {source_mode}"
    image_format = "jpg" if source_format == "JPEG" else "png"
    if analysis:
        rgb = shrink(rgb, cfg.analysis_max_side)
    return Decoded(rgb=rgb, width=width, height=height, image_format=image_format, reencode=reencode)


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img).astype(np.float64)
        # 16-bit data uses the full 0-65535 range; `convert("RGB")` would clip it to 255 (a white image).
        if values.max(initial=0) > 255:
            values = values / 257.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def encode_for_shard(decoded: Decoded, cfg: DecodeConfig) -> bytes:
    """Re-encode a full-size decoded image for the shard (only used when the original bytes cannot be kept)."""
    buf = io.BytesIO()
    img = Image.fromarray(decoded.rgb, "RGB")
    if decoded.image_format == "jpg":
        img.save(buf, format="JPEG", quality=cfg.reencode_jpeg_quality)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
