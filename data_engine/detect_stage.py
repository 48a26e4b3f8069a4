"""The Ray Data stage of person detection in the curation DAG (`hv curate`, see `data_engine.curate_ray`).

`PersonDetectorStage` is the Ray Data actor class: it builds one detector (`data_engine.detect`) in `__init__` and
turns a batch of analysis rows with pixels into rows with `persons`, `num_persons`, `person_score`, `person_height`.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from data_engine.curate_config import CurateConfig
from data_engine.detect import build_detector


class PersonDetectorStage:
    """Ray Data actor: analysis rows with pixels in, rows with persons out (pixels dropped).

    Use with `map_batches(PersonDetectorStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=...,
    concurrency=..., num_cpus=..., num_gpus=..., batch_format="pyarrow")`.
    """

    def __init__(self, cfg: CurateConfig) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(cfg.detector.num_cpus))))
        self.cfg = cfg
        self.detector = build_detector(cfg.detector)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from data_engine.analysis import RAY_SCHEMA, apply_persons

        rows = batch.to_pylist()
        todo = [i for i, row in enumerate(rows) if row.get("pixels") is not None and row.get("reason") is None]
        images = [
            np.frombuffer(rows[i]["pixels"], np.uint8).reshape(rows[i]["pixels_h"], rows[i]["pixels_w"], 3)
            for i in todo
        ]
        found = self.detector.detect(images) if images else []
        for i, boxes in zip(todo, found, strict=True):
            row = rows[i]
            scale = row["width"] / row["pixels_w"]  # analysis copy -> original pixels
            apply_persons(
                row, [(b[0] * scale, b[1] * scale, b[2] * scale, b[3] * scale, b[4]) for b in boxes], self.cfg
            )
        for row in rows:
            for name in ("pixels", "pixels_h", "pixels_w"):
                row.pop(name, None)
        return pa.Table.from_pylist(rows, schema=RAY_SCHEMA)
