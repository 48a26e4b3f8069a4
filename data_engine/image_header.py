"""Image dimensions from the header alone, checked before any pixel is decoded.

A 420 KB JPEG can declare 12000x12000 and a 583 KB 16-bit PNG 10000x10000: decoding them costs gigabytes.
Every image-like member (image, depth, normal, seg, mask) and every image file goes through `check_size`
before its codec runs, so a hostile file is refused for the price of reading its header. Pillow's lazy
`Image.open` reads only the PNG IHDR / JPEG SOF (and the other formats' headers); it decodes nothing.

Imports only Pillow and the standard library (it sits under `data_engine.sample`).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

# Pillow's own limit (89.5 MP) and curation's `decode.max_pixels` default, so that every image curation accepts
# into a shard can be read back; above every camera sensor (a 45 MP one is 8192x5464). The 12000x12000 and
# 10000x10000 bombs are over it; an honest 89 MP RGB image decodes to 270 MB.
MAX_PIXELS = 89_478_485


class ImageSizeError(ValueError):
    """An image whose header declares too many pixels, or another size than the one it must have."""


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) as the header declares it. Bytes that are no image raise what Pillow raises for them
    (as decoding them would: callers already name those errors)."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 MP and raises above 179 MP while opening: the limit here is ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return int(img.size[0]), int(img.size[1])
    except Image.DecompressionBombError as e:
        raise ImageSizeError(f"header declares more pixels than Pillow opens ({e})") from None


def check_size(data: bytes, max_pixels: int = MAX_PIXELS, expected: tuple[int, int] | None = None) -> tuple[int, int]:
    """The header's (width, height), after checking it against `max_pixels` and, when given, the (width, height)
    the image must have (the sample's `json`). Raises ImageSizeError saying which limit it broke."""
    width, height = header_size(data)
    if expected is not None and (width, height) != tuple(expected):
        raise ImageSizeError(f"header declares {width}x{height}, the sample's json says {expected[0]}x{expected[1]}")
    if width * height > max_pixels:
        raise ImageSizeError(
            f"header declares {width}x{height} = {width * height} pixels, over the limit of {max_pixels} (max_pixels)"
        )
    return width, height
