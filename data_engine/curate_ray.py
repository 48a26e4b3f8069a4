"""The Ray side of `hv curate`'s analysis: the session (local or a cluster) and the analysis dataset (decode, quality,
hash in CPU tasks; the detector in actors). The write phase's tasks are in data_engine/curate_write.py."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from data_engine.analysis import analyse_batch
from data_engine.curate_config import CurateConfig, DetectorName
from data_engine.ray_runtime import init_ray


@contextlib.contextmanager
def ray_session(cfg: CurateConfig) -> Iterator[None]:
    """Join `cfg.ray_address`, reuse a Ray already started in this process, or start a small local one."""
    import ray

    started = False
    if not ray.is_initialized():
        # Ray's socket paths must stay under ~107 characters: a short temp folder, not the output folder.
        init_ray(
            cfg.ray_address,
            num_cpus=cfg.num_cpus or os.cpu_count(),
            object_store_memory=cfg.object_store_mb * 1024 * 1024,
            _temp_dir=os.path.join(tempfile.gettempdir(), f"hv-ray-{os.getuid()}"),
            _system_config={"worker_niceness": cfg.worker_niceness},
        )
        started = True
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts inputs; Ray's per-operator bars are noise here
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)] or [table]


def _one_cpu() -> dict[str, Any]:
    return {"num_cpus": 1}


def analysis_dataset(uris: list[str], cfg: CurateConfig):
    import ray

    detect = cfg.detector.name != DetectorName.none
    pool: dict[str, Any] = {}
    if detect:
        # Decode and quality are CPU work for every core of the cluster; only the detector belongs in its actors.
        # Ray Data fuses a task stage into the actor stage after it (decoding would then run in only
        # `detector.concurrency` processes) unless the task pool's size differs from the actor pool's: size it
        # to the cluster's CPUs. When the two are equal, fused or not, decoding has every CPU.
        pool["concurrency"] = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ds = ray.data.from_arrow(_blocks(pa.table({"uri": pa.array(uris, pa.string())}), cfg.images_per_task))
    ds = ds.map_batches(
        analyse_batch,
        fn_kwargs={"cfg": cfg, "keep_pixels": detect},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=1,
        **pool,
    )
    if detect:
        from data_engine.detect_stage import PersonDetectorStage

        d = cfg.detector
        ds = ds.map_batches(
            PersonDetectorStage,
            fn_constructor_kwargs={"cfg": cfg},
            batch_format="pyarrow",
            batch_size=d.batch_size,
            concurrency=d.concurrency,
            num_cpus=d.num_cpus,
            num_gpus=d.num_gpus,
        )
    return ds
