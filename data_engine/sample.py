"""The sample contract: one human image with its metadata and optional dense and keypoint labels.

`encode(sample) -> dict[str, bytes]` gives the WebDataset members and `decode(members) -> Sample`
reads them back, exactly per the table in DESIGN.md:

| member       | encoding                                                                          |
|--------------|-----------------------------------------------------------------------------------|
| `jpg`/`png`  | the image bytes as received (re-encoded only when orientation or mode changed)    |
| `json`       | UTF-8 JSON metadata: `schema_version`, `source`, `width`, `height`, `persons`, ... |
| `pose.json`  | `keypoint_set`, `persons: [{bbox, keypoints: K x [x, y, v]}]`                      |
| `seg.png`    | 8-bit palette PNG of class ids, 255 = ignore; vocabulary named in `json`           |
| `depth.png`  | 16-bit grey PNG, camera-z in millimetres, 0 = no surface                           |
| `normal.png` | 16-bit RGB PNG, round((n + 1) / 2 * 65535), (0, 0, 0) = no surface (via OpenCV)    |
| `mask.png`   | 8-bit grey PNG, person 255, background 0                                           |

Pixel coordinates are continuous, x right, y down, origin at the image's top-left corner: the centre of
pixel (row 0, col 0) is (0.5, 0.5).

Imports only numpy, Pillow, OpenCV (for the 16-bit RGB normals, which Pillow cannot write) and the
standard library.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from data_engine import schema
from data_engine.image_header import MAX_PIXELS, ImageSizeError, check_size

SCHEMA_VERSION = 1
MAX_DEPTH_M = 65.535  # uint16 millimetres
ImageFormat = Literal["jpg", "png"]
IMAGE_MEMBERS: tuple[ImageFormat, ...] = ("jpg", "png")
LABEL_MEMBERS = ("pose.json", "seg.png", "depth.png", "normal.png", "mask.png")
KEY_PATTERN = re.compile(r"^[0-9a-f]{1,64}$")
_NORMAL_SCALE = 65535.0
_UNIT_TOLERANCE = 1e-3


class SampleError(ValueError):
    """A sample that breaks the contract. The message names the sample key and the member."""


@dataclass
class PersonPose:
    """One person's keypoints. `keypoints` is (K, 3) float32 of [x, y, v], v in {0, 1, 2} (COCO)."""

    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    keypoints: np.ndarray


@dataclass
class Pose:
    keypoint_set: str  # a subset name from data_engine.schema, e.g. "all" (308) or "coco17"
    persons: list[PersonPose] = field(default_factory=list)


@dataclass
class Sample:
    """One sample. Dense maps have the image's (H, W); absent labels are None.

    image:   (H, W, 3) uint8 RGB
    meta:    the `json` member (schema_version, width and height are filled in by `encode`)
    depth:   (H, W) float32 metres, 0 = no surface
    normal:  (H, W, 3) float32 camera-space unit normals (OpenCV axes), (0, 0, 0) = no surface
    seg:     (H, W) uint8 class ids of `meta["seg_vocabulary"]` (default goliath28), 255 = ignore
    mask:    (H, W) bool person foreground
    image_bytes: the encoded image as received, written unchanged when given (format `image_format`)
    """

    key: str
    image: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    pose: Pose | None = None
    seg: np.ndarray | None = None
    depth: np.ndarray | None = None
    normal: np.ndarray | None = None
    mask: np.ndarray | None = None
    image_bytes: bytes | None = None
    image_format: ImageFormat = "png"

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def seg_vocabulary(self) -> str:
        return str(self.meta.get("seg_vocabulary", "goliath28"))


def key_from_bytes(data: bytes) -> str:
    """The curated-image key: the first 16 hex digits of the SHA-256 of the original bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def key_from_params(params: Mapping[str, Any]) -> str:
    """The synthetic-sample key: the first 16 hex digits of the SHA-256 of the canonical JSON parameters."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def check_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise SampleError(f"bad sample key {key!r}: must be 1-64 lower-case hex digits (no dots, no paths)")


# --------------------------------------------------------------------------------------------- validation


def validate(sample: Sample) -> None:
    """Raise SampleError naming the key and member for anything that breaks the contract."""
    check_key(sample.key)
    key = sample.key
    img = sample.image
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        shape = getattr(img, "shape", None)
        raise SampleError(f"{key}: image must be (H, W, 3) uint8 RGB, got {shape} {getattr(img, 'dtype', type(img))}")
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise SampleError(f"{key}: image is empty ({h}x{w})")

    def check_map(name: str, arr: np.ndarray, channels: int | None) -> None:
        want = (h, w) if channels is None else (h, w, channels)
        if not isinstance(arr, np.ndarray) or arr.shape != want:
            raise SampleError(f"{key}: {name} has shape {getattr(arr, 'shape', None)}, image needs {want}")

    if sample.depth is not None:
        check_map("depth", sample.depth, None)
        d = sample.depth
        if not np.all(np.isfinite(d)):
            raise SampleError(f"{key}: depth has non-finite values")
        if d.min() < 0:
            raise SampleError(f"{key}: depth has negative values (min {float(d.min()):.4g} m)")
        if d.max() > MAX_DEPTH_M:
            raise SampleError(f"{key}: depth {float(d.max()):.4g} m is beyond the 16-bit mm range ({MAX_DEPTH_M} m)")
    if sample.normal is not None:
        check_map("normal", sample.normal, 3)
        n = sample.normal.astype(np.float64)
        if not np.all(np.isfinite(n)):
            raise SampleError(f"{key}: normal has non-finite values")
        norms = np.linalg.norm(n, axis=-1)
        valid = norms > 0
        if valid.any() and np.abs(norms[valid] - 1).max() > _UNIT_TOLERANCE:
            worst = float(norms[valid][np.argmax(np.abs(norms[valid] - 1))])
            raise SampleError(f"{key}: normal vectors must be unit length or zero (found length {worst:.4f})")
    if sample.seg is not None:
        check_map("seg", sample.seg, None)
        vocab = schema.vocabulary(sample.seg_vocabulary)
        ids = np.unique(sample.seg)
        bad = [int(i) for i in ids if i >= len(vocab) and i != schema.IGNORE_INDEX]
        if bad:
            raise SampleError(f"{key}: seg has class ids {bad} outside {vocab.name} (0-{len(vocab) - 1}, 255 = ignore)")
    if sample.mask is not None:
        check_map("mask", sample.mask, None)
    if sample.pose is not None:
        _validate_pose(key, sample.pose)


def _validate_pose(key: str, pose: Pose) -> None:
    try:
        k = len(schema.subset(pose.keypoint_set))
    except ValueError as e:
        raise SampleError(f"{key}: pose.json: {e}") from None
    for i, person in enumerate(pose.persons):
        kp = np.asarray(person.keypoints)
        if kp.shape != (k, 3):
            raise SampleError(
                f"{key}: pose.json person {i} has keypoints of shape {kp.shape}, "
                f"keypoint set {pose.keypoint_set!r} needs ({k}, 3)"
            )
        if not np.all(np.isfinite(kp)):
            raise SampleError(f"{key}: pose.json person {i} has non-finite keypoints")
        if not np.isin(kp[:, 2], (0, 1, 2)).all():
            raise SampleError(f"{key}: pose.json person {i} has visibility outside {{0, 1, 2}}")
        if len(person.bbox) != 4 or not all(np.isfinite(person.bbox)):
            raise SampleError(f"{key}: pose.json person {i} bbox must be 4 finite numbers [x0, y0, x1, y1]")


# ------------------------------------------------------------------------------------------------- codecs


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
    q = q[..., ::-1]
    valid = np.any(q != 0, axis=-1)
    n = q.astype(np.float32) / _NORMAL_SCALE * 2.0 - 1.0
    # Re-normalise: quantisation leaves |n| a few 1e-5 off unit, which would bias dot products.
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    n[~valid] = 0.0
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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_json_default, separators=(",", ":")).encode("utf-8")


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


# --------------------------------------------------------------------------------------------- the sample


def encode(sample: Sample) -> dict[str, Any]:
    """Validate and encode a sample into WebDataset members: `__key__` (str, as WebDataset has it) and bytes
    per member name."""
    validate(sample)
    meta = dict(sample.meta)
    meta["schema_version"] = SCHEMA_VERSION
    meta["width"], meta["height"] = sample.width, sample.height
    if sample.seg is not None:
        meta.setdefault("seg_vocabulary", "goliath28")
    image_bytes = sample.image_bytes
    if image_bytes is None:
        image_bytes = encode_image(sample.image, sample.image_format)
    members: dict[str, Any] = {"__key__": sample.key, sample.image_format: image_bytes, "json": dumps(meta)}
    if sample.pose is not None:
        members["pose.json"] = encode_pose(sample.pose)
    if sample.seg is not None:
        members["seg.png"] = encode_seg(sample.seg, meta["seg_vocabulary"])
    if sample.depth is not None:
        members["depth.png"] = encode_depth(sample.depth)
    if sample.normal is not None:
        members["normal.png"] = encode_normal(sample.normal)
    if sample.mask is not None:
        members["mask.png"] = encode_mask(sample.mask)
    return members


def decode(
    members: Mapping[str, Any], key: str | None = None, check: bool = True, max_pixels: int = MAX_PIXELS
) -> Sample:
    """Decode WebDataset members (bytes per extension; `__key__` optional if `key` is given) into a Sample.

    Before any pixel is decoded, every image-like member's header must declare at most `max_pixels` and the
    `json` width x height (the image's own header size when the json has none), so a small file declaring a
    huge image costs nothing. Raises SampleError naming the key and the member that is missing or broken.
    """
    raw_key = key if key is not None else members.get("__key__")
    if isinstance(raw_key, bytes):
        raw_key = raw_key.decode()
    if raw_key is None:
        raise SampleError("sample has no __key__")
    key = str(raw_key)
    if "__error__" in members:  # the shard reader refused a member (sparse, oversized) without reading it
        raise SampleError(f"{key}: {members['__error__']}")
    fmt = next((f for f in IMAGE_MEMBERS if f in members), None)
    if fmt is None:
        raise SampleError(f"{key}: no image member (jpg or png) among {sorted(k for k in members if k[:2] != '__')}")
    if "json" not in members:
        raise SampleError(f"{key}: missing the json member")

    def member(name: str, fn):
        try:
            return fn(_as_bytes(members[name]))
        except (SampleError, ImageSizeError) as e:
            raise SampleError(f"{key}: {name}: {e}" if isinstance(e, ImageSizeError) else f"{key}: {e}") from None
        except Exception as e:  # a corrupt member: name it, whatever the codec raised
            raise SampleError(f"{key}: cannot decode {name}: {type(e).__name__}: {e}") from None

    meta = member("json", lambda b: json.loads(b.decode("utf-8")))
    if not isinstance(meta, dict):
        raise SampleError(f"{key}: json member must be an object")
    declared = _declared_size(meta)
    image_size = member(fmt, lambda b: check_size(b, max_pixels, declared))
    for name in LABEL_MEMBERS:  # every dense label has the image's size: checked before any is decoded
        if name.endswith(".png") and name in members:
            member(name, lambda b: check_size(b, max_pixels, image_size))

    def pixels(name: str, codec):
        return member(name, lambda b: codec(b, max_pixels)) if name in members else None

    sample = Sample(
        key=key,
        image=pixels(fmt, decode_image),
        meta=meta,
        image_bytes=_as_bytes(members[fmt]),
        image_format=fmt,
        pose=member("pose.json", decode_pose) if "pose.json" in members else None,
        seg=pixels("seg.png", decode_seg),
        depth=pixels("depth.png", decode_depth),
        normal=pixels("normal.png", decode_normal),
        mask=pixels("mask.png", decode_mask),
    )
    if check:
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SampleError(f"{key}: json schema_version is {version!r}, this code reads {SCHEMA_VERSION}")
        if (meta.get("width"), meta.get("height")) != (sample.width, sample.height):
            raise SampleError(
                f"{key}: json says {meta.get('width')}x{meta.get('height')}, image is {sample.width}x{sample.height}"
            )
        validate(sample)
    return sample


def _declared_size(meta: Mapping[str, Any]) -> tuple[int, int] | None:
    """The json's (width, height) when it states both as positive integers; None leaves the header to decide."""
    width, height = meta.get("width"), meta.get("height")
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height))
    return (width, height) if ok else None  # type: ignore[return-value]


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise SampleError(f"member is {type(value).__name__}, expected bytes")
