"""Exact decoding of contract shards in the readers people already use, one line each.

Standard decoders damage our labels: webdataset's `decode("rgb8")` clips `depth.png` to 8 bit and turns
`seg.png` into palette colours, and every reader but OpenCV reads the 16-bit RGB `normal.png` as 8-bit.
These decoders give the values of `data_engine.sample.decode`, member by member:

| member       | value                                                                   |
|--------------|-------------------------------------------------------------------------|
| `jpg`/`png`  | (H, W, 3) uint8 RGB                                                     |
| `json`       | dict (the sample's metadata)                                            |
| `pose.json`  | dict: `keypoint_set`, `persons: [{bbox, keypoints: K x [x, y, v]}]`     |
| `seg.png`    | (H, W) uint8 class ids, 255 = ignore                                    |
| `depth.png`  | (H, W) float32 metres, 0 = no surface                                   |
| `normal.png` | (H, W, 3) float32 unit normals (OpenCV axes), 16-bit precision, 0 = none |
| `mask.png`   | (H, W) bool person foreground                                           |

Two readers bend the JSON members on their own: Hugging Face's `Json` feature keeps 10 decimals of a
float, and Ray stores dicts as Arrow structs, so an object in a list gains its siblings' keys as None.
A member the sample lacks is None; other members are left as bytes; `__key__` and `__url__` pass through.

    # webdataset
    ds = wds.WebDataset(urls, shardshuffle=False).map(readers.decode_members)
    # Hugging Face datasets
    ds = load_dataset("webdataset", data_files=urls, split="train", features=readers.hf_features()).with_transform(
        readers.hf_transform)
    # Ray Data
    ds = ray.data.read_webdataset(urls, decoder=readers.decode_members)

Imports only what `data_engine.sample` imports; `datasets` is imported by `hf_features` alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from data_engine import sample as contract

_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "jpg": contract.decode_image,
    "png": contract.decode_image,
    "json": lambda data: json.loads(data.decode("utf-8")),
    "pose.json": lambda data: json.loads(data.decode("utf-8")),
    "seg.png": contract.decode_seg,
    "depth.png": contract.decode_depth,
    "normal.png": contract.decode_normal,
    "mask.png": contract.decode_mask,
}
MEMBERS: tuple[str, ...] = tuple(_DECODERS)


def decode_member(name: str, data: Any) -> Any:
    """One member's documented value; an unknown member comes back unchanged.

    Raises SampleError naming the member when its bytes cannot be decoded.
    """
    decoder = _DECODERS.get(name)
    if decoder is None or data is None:
        return data
    if isinstance(data, Mapping):  # Hugging Face's undecoded Image: {"bytes": ..., "path": ...}
        data = data["bytes"]
    try:
        return decoder(contract._as_bytes(data))
    except contract.SampleError as e:
        raise contract.SampleError(f"{name}: {e}") from None
    except Exception as e:  # a corrupt member: name it, whatever the codec raised
        raise contract.SampleError(f"cannot decode {name}: {type(e).__name__}: {e}") from None


def decode_members(members: Mapping[str, Any]) -> dict[str, Any]:
    """A webdataset/Ray sample (member name -> bytes) -> member name -> documented value (None if absent).

    Raises SampleError naming the sample key and member that is broken.
    """
    key = members.get("__key__")
    # Every contract member is in the result, None where the sample has none: a reader that builds columns
    # (Ray) then sees None instead of a missing key (which pandas turns into NaN).
    out: dict[str, Any] = dict.fromkeys(MEMBERS)
    for name, data in members.items():
        try:
            out[name] = data if name.startswith("__") else decode_member(name, data)
        except contract.SampleError as e:
            raise contract.SampleError(f"{key}: {e}") from None
    return out


def hf_features():
    """`datasets.Features` for `load_dataset("webdataset", ..., features=...)`: every image and label PNG kept
    undecoded (Hugging Face's decoding reads `normal.png` as 8-bit), both JSON members as `Json`.

    Naming every contract member also means shards whose samples carry different members (a scan without
    `pose.json` beside one with it) load: a missing member is None instead of a schema error.
    """
    import datasets

    features: dict[str, Any] = {name: datasets.Image(decode=False) for name in MEMBERS if not name.endswith("json")}
    features.update({"json": datasets.Json(), "pose.json": datasets.Json()})
    features.update({"__key__": datasets.Value("string"), "__url__": datasets.Value("string")})
    return datasets.Features(features)


def hf_transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """`Dataset.with_transform` function: a batch of columns -> the same columns with documented values."""
    out: dict[str, list[Any]] = {}
    keys = batch.get("__key__", [None] * len(next(iter(batch.values()), [])))
    for name, column in batch.items():
        if name.startswith("__"):
            out[name] = column
            continue
        values = []
        for key, value in zip(keys, column, strict=True):
            if name.endswith("json"):  # `Json` already parsed it
                values.append(value)
                continue
            try:
                values.append(decode_member(name, value))
            except contract.SampleError as e:
                raise contract.SampleError(f"{key}: {e}") from None
        out[name] = values
    return out
