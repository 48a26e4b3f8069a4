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
standard library. The types live in `sample_types`, the member codecs in `sample_codecs`; this module holds keys,
validation and `encode` / `decode`, and re-exports the rest, so `from data_engine.sample import ...` is the one
import for the contract.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from data_engine import schema
from data_engine.image_header import MAX_PIXELS, ImageSizeError, check_size
from data_engine.sample_codecs import (
    decode_depth,
    decode_image,
    decode_mask,
    decode_normal,
    decode_pose,
    decode_seg,
    dumps,
    encode_depth,
    encode_image,
    encode_mask,
    encode_normal,
    encode_pose,
    encode_seg,
    json_default,
)
from data_engine.sample_types import (
    IMAGE_MEMBERS,
    KEY_PATTERN,
    LABEL_MEMBER_OF,
    LABEL_MEMBERS,
    MAX_DEPTH_M,
    SCHEMA_VERSION,
    ImageFormat,
    PersonPose,
    Pose,
    Sample,
    SampleError,
)

__all__ = [
    "IMAGE_MEMBERS",
    "KEY_PATTERN",
    "LABEL_MEMBERS",
    "LABEL_MEMBER_OF",
    "MAX_DEPTH_M",
    "SCHEMA_VERSION",
    "ImageFormat",
    "PersonPose",
    "Pose",
    "Sample",
    "SampleError",
    "check_key",
    "decode",
    "decode_depth",
    "decode_image",
    "decode_mask",
    "decode_normal",
    "decode_pose",
    "decode_seg",
    "dumps",
    "encode",
    "encode_depth",
    "encode_image",
    "encode_mask",
    "encode_normal",
    "encode_pose",
    "encode_seg",
    "key_from_bytes",
    "key_from_params",
    "validate",
]

_UNIT_TOLERANCE = 1e-3


def key_from_bytes(data: bytes) -> str:
    """The curated-image key: the first 16 hex digits of the SHA-256 of the original bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def key_from_params(params: Mapping[str, Any]) -> str:
    """The synthetic-sample key: the first 16 hex digits of the SHA-256 of the canonical JSON parameters."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=json_default)
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
        if not np.all(np.isfinite(sample.normal)):
            raise SampleError(f"{key}: normal has non-finite values")
        # Lengths of the non-zero vectors only (a person is often a tenth of a render), in float64.
        surface = sample.normal[np.any(sample.normal != 0, axis=-1)].astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", surface, surface))
        if norms.size and np.abs(norms - 1).max() > _UNIT_TOLERANCE:
            worst = float(norms[np.argmax(np.abs(norms - 1))])
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
    members: Mapping[str, Any],
    key: str | None = None,
    check: bool = True,
    max_pixels: int = MAX_PIXELS,
    labels: Collection[str] | None = None,
) -> Sample:
    """Decode WebDataset members (bytes per extension; `__key__` optional if `key` is given) into a Sample.

    Before any pixel is decoded, every image-like member's header must declare at most `max_pixels` and the
    `json` width x height (the image's own header size when the json has none), so a small file declaring a
    huge image costs nothing. Raises SampleError naming the key and the member that is missing or broken.

    labels: the label members (names from `LABEL_MEMBERS`) to decode; the others are left out as if absent,
    neither decoded nor checked (a member the shard reader already refused still fails the sample). None
    decodes every member. A reader that needs only the image and pose.json then skips the dense maps, which are
    most of a synthetic sample's decoding time.
    """
    if labels is not None:
        unknown = set(labels) - set(LABEL_MEMBERS)
        if unknown:
            raise ValueError(f"labels {sorted(unknown)} are not label members ({', '.join(LABEL_MEMBERS)})")
        members = {k: v for k, v in members.items() if k not in LABEL_MEMBERS or k in labels}
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
