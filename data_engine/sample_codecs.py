"""Member codecs of the sample contract: one function pair per WebDataset member, bytes <-> numpy / `Pose`.

    encode_depth(depth_m) -> depth.png bytes;  decode_depth(data) -> (H, W) float32 metres
    encode_normal / decode_normal, encode_seg / decode_seg, encode_mask / decode_mask, encode_image / decode_image,
    encode_pose / decode_pose, dumps (JSON with numpy values)

Every decoder of pixels checks the header's declared size against `max_pixels` before decoding anything.
Imports only numpy, Pillow and the standard library at module level; OpenCV inside the 16-bit normal codec
(Pillow cannot write a 16-bit RGB PNG and reads one as 8-bit).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

from data_engine import schema
from data_engine.image_header import MAX_PIXELS, check_size
from data_engine.sample_types import ImageFormat, PersonPose, Pose, SampleError

_NORMAL_SCALE = 65535.0


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: labels are written far more often than they are archived; level 6 is ~3x slower.
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_image(rgb: np.ndarray, fmt: ImageFormat = "png", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(rgb, "RGB")
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    check_size(data, max_pixels)
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def encode_depth(depth_m: np.ndarray) -> bytes:
    """(H, W) float metres -> 16-bit grey PNG of millimetres (round to nearest, so error <= 0.5 mm)."""
    mm = np.rint(np.asarray(depth_m, dtype=np.float64) * 1000.0).astype(np.uint16)
    return _png_bytes(Image.fromarray(mm))


def decode_depth(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    check_size(data, max_pixels)
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("I;16", "I;16B", "I"):
            raise SampleError(f"depth.png must be a 16-bit grey PNG, got mode {img.mode}")
        mm = np.asarray(img, dtype=np.uint16 if img.mode.startswith("I;16") else np.int32)
    return (mm.astype(np.float32) / 1000.0).astype(np.float32)


def encode_normal(normal: np.ndarray) -> bytes:
    """(H, W, 3) float unit normals -> 16-bit RGB PNG; zero vectors stay (0, 0, 0)."""
    import cv2

    n = np.asarray(normal, dtype=np.float64)
    valid = np.any(n != 0, axis=-1)
    q = np.rint((n + 1.0) * 0.5 * _NORMAL_SCALE).clip(0, 65535).astype(np.uint16)
    q[~valid] = 0
    ok, buf = cv2.imencode(".png", q[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])  # OpenCV wants BGR
    if not ok:
        raise SampleError("OpenCV failed to encode normal.png")
    return buf.tobytes()


def decode_normal(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    import cv2

    check_size(data, max_pixels)  # OpenCV would allocate whatever the header declares

    q = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if q is None or q.ndim != 3 or q.shape[2] != 3 or q.dtype != np.uint16:
        got = None if q is None else f"{q.shape} {q.dtype}"
        raise SampleError(f"normal.png must be a 16-bit 3-channel PNG, got {got}")
    valid = np.any(q != 0, axis=-1)
    # Only the surface's pixels are converted (a person is often a tenth of a render): BGR -> RGB, then [-1, 1].
    v = q[valid][:, ::-1].astype(np.float32) * np.float32(2.0 / _NORMAL_SCALE) - np.float32(1.0)
    # Re-normalise: quantisation leaves |n| a few 1e-5 off unit, which would bias dot products.
    v /= np.maximum(np.sqrt(np.einsum("ij,ij->i", v, v))[:, None], np.float32(1e-12))
    n = np.zeros(q.shape, np.float32)
    n[valid] = v
    return n


def encode_seg(seg: np.ndarray, vocabulary: str = "goliath28") -> bytes:
    img = Image.fromarray(np.asarray(seg, dtype=np.uint8), "L").convert("P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    vocab_palette = schema.vocabulary(vocabulary).palette()
    palette[: len(vocab_palette)] = vocab_palette
    palette[schema.IGNORE_INDEX] = (255, 255, 255)
    img.putpalette(palette.reshape(-1).tolist())
    return _png_bytes(img)


def decode_seg(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    check_size(data, max_pixels)
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("P", "L"):
            raise SampleError(f"seg.png must be an 8-bit palette (or grey) PNG of class ids, got mode {img.mode}")
        return np.asarray(img, dtype=np.uint8).copy()


def encode_mask(mask: np.ndarray) -> bytes:
    return _png_bytes(Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8), "L"))


def decode_mask(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    check_size(data, max_pixels)
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L")) > 127


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=json_default, separators=(",", ":")).encode("utf-8")


def encode_pose(pose: Pose) -> bytes:
    return dumps(
        {
            "keypoint_set": pose.keypoint_set,
            "persons": [
                {"bbox": [float(v) for v in p.bbox], "keypoints": np.asarray(p.keypoints, np.float64).tolist()}
                for p in pose.persons
            ],
        }
    )


def decode_pose(data: bytes) -> Pose:
    obj = json.loads(data.decode("utf-8"))
    if not isinstance(obj, dict) or "keypoint_set" not in obj or "persons" not in obj:
        raise SampleError("pose.json must be an object with 'keypoint_set' and 'persons'")
    persons = []
    for i, p in enumerate(obj["persons"]):
        if "bbox" not in p or "keypoints" not in p:
            raise SampleError(f"pose.json person {i} needs 'bbox' and 'keypoints'")
        kp = np.asarray(p["keypoints"], dtype=np.float32)
        persons.append(PersonPose(bbox=tuple(float(v) for v in p["bbox"]), keypoints=kp))  # type: ignore[arg-type]
    return Pose(keypoint_set=str(obj["keypoint_set"]), persons=persons)
