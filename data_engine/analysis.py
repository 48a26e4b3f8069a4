"""The per-image stages of `hv curate` as pure functions: read, decode, quality, perceptual hash; then the
person filter on detector boxes; then the shard members of an accepted image.

    analyse_uri(uri, cfg) -> dict           one ANALYSIS_SCHEMA row (+ the analysis pixels when a detector follows)
    apply_persons(row, boxes, cfg)          the person filter, on boxes in original-image pixels
    build_members(record, cfg)              the WebDataset members of an accepted sample
    member_json(record)                     its `json` member, from the analysis row alone

`analyse_batch` wraps analyse_uri for Ray Data (`map_batches`, pyarrow batches), data_engine/curate_write.py's
shard tasks call build_members; the benchmark runs the same functions in a plain loop as its baseline.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa

from data_engine import quality, sample
from data_engine.curate_config import CurateConfig, DetectorName
from data_engine.decode import Reason, Rejection, decode, encode_for_shard, read_uri
from data_engine.dedup import phash, phash_hex

# One row per input: what the analysis found. `reason` null = passed every filter so far (a candidate).
ANALYSIS_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bytes", pa.int64()),
        pa.field("phash", pa.string()),
        pa.field("blur", pa.float32()),
        pa.field("clipped", pa.float32()),
        pa.field("contrast", pa.float32()),
        pa.field("detector", pa.string()),
        pa.field("num_persons", pa.int32()),
        pa.field("person_score", pa.float32()),
        pa.field("person_height", pa.float32()),
        pa.field("persons", pa.string()),  # JSON list of {bbox, score, detector}
        pa.field("image_format", pa.string()),  # jpg / png: the shard member
        pa.field("reencode", pa.string()),  # why the original bytes cannot be kept, null if they can
    ]
)
# What the Ray stages give the driver: the analysis row and the Ray node that analysed it (counted per node in
# stats.json, `this_run.images_per_node`; not checkpointed).
NODE_FIELD = pa.field("node", pa.string())
RAY_SCHEMA = pa.schema([*ANALYSIS_SCHEMA, NODE_FIELD])
# Carried from the decode stage to the detector actors only, never to the driver.
PIXEL_FIELDS = [pa.field("pixels", pa.binary()), pa.field("pixels_h", pa.int32()), pa.field("pixels_w", pa.int32())]
PIXELS_SCHEMA = pa.schema(list(RAY_SCHEMA) + PIXEL_FIELDS)


def analyse_uri(uri: str, cfg: CurateConfig, keep_pixels: bool = False) -> dict[str, Any]:
    """Everything about one input that does not need the detector. Never raises for a bad input."""
    row: dict[str, Any] = {"uri": uri, "detector": cfg.detector.name.value}
    try:
        data = read_uri(uri)
        row["bytes"] = len(data)
        digest = hashlib.sha256(data).hexdigest()
        row["sha256"], row["key"] = digest, digest[:16]  # == sample.key_from_bytes(data)
        decoded = decode(data, cfg.decode, analysis=True)
        row.update(
            width=decoded.width, height=decoded.height, image_format=decoded.image_format, reencode=decoded.reencode
        )
        quality.check_size(decoded.width, decoded.height, cfg.quality)
        grey = quality.grey(decoded.rgb)
        figures = quality.measure(grey)
        row.update(blur=figures.blur, clipped=figures.clipped, contrast=figures.contrast, phash=phash_hex(phash(grey)))
        quality.check_figures(figures, cfg.quality)
        if keep_pixels:
            rgb = np.ascontiguousarray(decoded.rgb)
            row.update(pixels=rgb.tobytes(), pixels_h=rgb.shape[0], pixels_w=rgb.shape[1])
    except Rejection as r:
        row["reason"] = r.text
    except Exception as e:  # a bug or a library failure on one image must not end the job: record it
        row["reason"] = f"{Reason.truncated_or_corrupt.value}: unexpected {type(e).__name__}: {e}"
    if cfg.detector.name == DetectorName.none:
        row["persons"] = "[]"
    return row


def analyse_batch(batch: pa.Table, cfg: CurateConfig, keep_pixels: bool) -> pa.Table:
    """Ray Data stage: a batch of {uri} -> RAY_SCHEMA rows (with pixels when a detector follows)."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    rows = [{**analyse_uri(uri, cfg, keep_pixels), "node": node} for uri in batch.column("uri").to_pylist()]
    return pa.Table.from_pylist(rows, schema=PIXELS_SCHEMA if keep_pixels else RAY_SCHEMA)


def apply_persons(
    row: dict[str, Any], boxes: list[tuple[float, float, float, float, float]], cfg: CurateConfig
) -> None:
    """Record the boxes (x0, y0, x1, y1, score in original pixels) and reject the row if no person qualifies."""
    score_threshold, record_threshold = cfg.detector.thresholds()
    name = cfg.detector.name.value
    recorded = [b for b in boxes if b[4] >= record_threshold]
    recorded.sort(key=lambda b: -b[4])
    row["persons"] = json.dumps(
        [
            {"bbox": [round(float(v), 2) for v in b[:4]], "score": round(float(b[4]), 4), "detector": name}
            for b in recorded
        ]
    )
    qualifying = [b for b in boxes if b[4] >= score_threshold and (b[3] - b[1]) >= cfg.detector.min_height]
    row["num_persons"] = len(qualifying)
    row["person_score"] = max((b[4] for b in boxes), default=None)
    row["person_height"] = max((b[3] - b[1] for b in qualifying), default=None)
    if not qualifying and row.get("reason") is None:
        tallest = max((b[3] - b[1] for b in boxes if b[4] >= score_threshold), default=0.0)
        best = row["person_score"]
        row["reason"] = (
            f"{Reason.no_person.value}: best score {best if best is None else round(best, 3)} "
            f"(need >= {score_threshold}), tallest such box {tallest:.0f} px (need >= {cfg.detector.min_height:g})"
        )


# ------------------------------------------------------------------------------------------------ writing


def build_members(record: dict[str, Any], cfg: CurateConfig) -> dict[str, Any]:
    """One accepted record (ANALYSIS_SCHEMA) -> {uri, key, image_format, image, json, error}.

    The image member is the original bytes unless the record says a re-encode is needed (EXIF rotation, a
    non-RGB mode or another format). The members are built here rather than through `sample.encode(Sample)`
    because `encode` validates a decoded pixel array, and decoding every accepted image a second time only to
    satisfy it would double the cost of the write pass; `hv shards inspect` checks the full contract.
    """
    out: dict[str, Any] = {"uri": record["uri"], "key": record["key"], "image_format": record["image_format"]}
    try:
        data = read_uri(record["uri"])
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise Rejection(Reason.changed_since_analysis, "the bytes differ from those analysed")
        image = data
        if record["reencode"]:
            image = encode_for_shard(decode(data, cfg.decode, analysis=False), cfg.decode)
    except Rejection as r:
        reason = r.reason if r.reason != Reason.missing else Reason.changed_since_analysis
        out["error"] = f"{reason.value}: {r.detail}" if r.detail else reason.value
        return out
    except Exception as e:
        out["error"] = f"{Reason.changed_since_analysis.value}: {type(e).__name__}: {e}"
        return out
    out.update(image=image, json=member_json(record))
    return out


def member_json(record: dict[str, Any]) -> bytes:
    """The `json` member of an accepted record: from its analysis row alone (the shard planner sizes it so)."""
    meta = {
        "schema_version": sample.SCHEMA_VERSION,
        "source": {"uri": record["uri"], "sha256": record["sha256"]},
        "width": record["width"],
        "height": record["height"],
        "persons": json.loads(record["persons"] or "[]"),
        "quality": {
            "blur": record["blur"],
            "clipped": record["clipped"],
            "contrast": record["contrast"],
            "phash": record["phash"],
        },
        "detector": record["detector"],
    }
    if record["reencode"]:
        meta["source"]["reencoded"] = record["reencode"]
    return sample.dumps(meta)
