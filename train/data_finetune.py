"""Fine-tuning data: shards -> augmented items -> batches for the task heads.

    stream = iter_items(shards, spec, seed=0, rank=0, world_size=1, report=report)
    batch = collate([next(stream) for _ in range(8)])
    make_batches = make_batches_fn(cfg, report_path="RUN/data_report.json")  # the engine's, for a FinetuneConfig

A sample trains the heads whose members it has: each labelled person of a `pose.json` becomes one top-down
crop (pose targets), and a sample with `seg.png`, `depth.png` or `normal.png` becomes one whole-image view
carrying those targets. Crops and views share the input size, so one batch (and one backbone pass) mixes
them; `collate` records, per task, which rows of the batch carry its targets.

Bad samples follow `data_engine.shards.iter_samples`' policy ("skip": counted in `ReadReport.bad` with the
shard, key and reason). Labels a sample has but the run cannot use (a seg vocabulary other than the model's,
a keypoint set with none of the model's keypoints, a person without a labelled keypoint) are counted per
reason in `ItemReport.unused`, never dropped silently. Slots (ranks and loader workers), the shard/sample
split, the shuffle buffer and exact resume are `train.data_stream`'s.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from data_engine import schema
from data_engine.sample import LABEL_MEMBER_OF, Sample, decode
from data_engine.shards import BadSamplePolicy, ReadReport, expand, iter_samples
from train.data_stream import Slot, make_batches_from, shuffled, split_shards
from train.models.tasks import DENSE_TASKS, TASKS, Task
from train.transforms import normalize_image
from train.transforms.dense import DenseParams, dense_item
from train.transforms.pose import TopDownParams, lower_body_mask, topdown_item

if TYPE_CHECKING:
    from train.finetune_config import FinetuneConfig


@dataclass
class LabelSpec:
    """What the model predicts: its tasks, its keypoint set (pose) and its class vocabulary (seg)."""

    tasks: tuple[Task, ...]
    keypoint_set: str = "all"
    seg_vocabulary: str = "goliath28"

    def label_members(self) -> frozenset[str]:
        """The label members a run over these tasks reads: each task's own and, when a dense task runs, the person
        mask with its fallbacks (`train.transforms.dense.person_mask`: mask, else seg, else depth), which depth
        normalisation and background swaps use. The rest are never decoded: on a 192x256 render the normal map
        alone is about 40% of the decoding time, and a pose-only run needs none of the maps."""
        members = {LABEL_MEMBER_OF[TASKS[task].member] for task in self.tasks}
        if any(task in DENSE_TASKS for task in self.tasks):
            members |= {LABEL_MEMBER_OF[name] for name in ("mask", "seg", "depth")}
        return frozenset(members)


@dataclass
class Item:
    """One training row. image (3, H, W) float32 normalised; targets by name (see `collate`)."""

    image: np.ndarray
    targets: dict[str, np.ndarray]
    key: str = ""


@dataclass
class ItemReport:
    """Counts of what the stream made, and of labels present but unusable (reason -> count)."""

    samples: int = 0
    items: Counter = field(default_factory=Counter)  # task -> rows carrying it
    unused: Counter = field(default_factory=Counter)
    read: ReadReport = field(default_factory=ReadReport)

    def summary(self) -> str:
        made = ", ".join(f"{k} {v}" for k, v in sorted(self.items.items())) or "none"
        unused = "; ".join(f"{k}: {v}" for k, v in sorted(self.unused.items())) or "none"
        return f"{self.read.summary()}; rows: {made}; unused labels: {unused}"


def keypoint_mapping(sample_set: str, model_set: str) -> np.ndarray:
    """For each keypoint of `model_set`, its position in `sample_set` or -1 (matched by Goliath index/name)."""
    position = {int(g): i for i, g in enumerate(schema.subset(sample_set))}
    return np.array([position.get(int(g), -1) for g in schema.subset(model_set)], dtype=np.int64)


def to_model_keypoints(keypoints: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """(K_sample, 3) -> (K_model, 3); keypoints the sample lacks get v = 0 (unlabelled)."""
    out = np.zeros((len(mapping), 3), dtype=np.float32)
    have = mapping >= 0
    out[have] = np.asarray(keypoints, dtype=np.float32)[mapping[have]]
    return out


def sample_items(
    sample: Sample,
    spec: LabelSpec,
    pose_params: TopDownParams,
    dense_params: DenseParams,
    rng: np.random.Generator | None,
    report: ItemReport,
    backgrounds: list[np.ndarray] | None = None,
) -> list[Item]:
    """Every training row one sample gives: top-down crops for pose, one whole-image view for dense tasks."""
    items: list[Item] = []
    if "pose" in spec.tasks and sample.pose is not None:
        items += _pose_items(sample, spec, pose_params, rng, report)
    dense_tasks = [t for t in DENSE_TASKS if t in spec.tasks and getattr(sample, TASKS[t].member) is not None]
    if "seg" in dense_tasks and sample.seg_vocabulary != spec.seg_vocabulary:
        report.unused[f"seg vocabulary {sample.seg_vocabulary} is not the model's {spec.seg_vocabulary}"] += 1
        dense_tasks.remove("seg")
    if dense_tasks:
        view = dense_item(sample, dense_params, rng, backgrounds)
        targets: dict[str, np.ndarray] = {}
        for task in dense_tasks:
            targets |= TASKS[task].view_targets(view) or {}  # type: ignore[misc]
        items.append(Item(image=normalize_image(view.image), targets=targets, key=sample.key))
        for task in dense_tasks:
            report.items[task] += 1
    return items


def _pose_items(
    sample: Sample, spec: LabelSpec, params: TopDownParams, rng: np.random.Generator | None, report: ItemReport
) -> list[Item]:
    assert sample.pose is not None
    mapping = keypoint_mapping(sample.pose.keypoint_set, spec.keypoint_set)
    if not (mapping >= 0).any():
        report.unused[f"keypoint set {sample.pose.keypoint_set} shares no keypoint with {spec.keypoint_set}"] += 1
        return []
    flip = schema.subset_flip_indices(spec.keypoint_set)
    lower_body = lower_body_mask(spec.keypoint_set)
    items = []
    for person in sample.pose.persons:
        keypoints = to_model_keypoints(person.keypoints, mapping)
        if not (keypoints[:, 2] > 0).any():
            report.unused["person without a labelled keypoint of the model's set"] += 1
            continue
        crop = topdown_item(sample.image, keypoints, person.bbox, flip, params, rng, lower_body)
        targets = {"pose_heatmaps": crop.heatmaps, "pose_weights": crop.weights}
        items.append(Item(image=normalize_image(crop.image), targets=targets, key=sample.key))
        report.items["pose"] += 1
    return items


def iter_items(
    shards: str | Sequence[str],
    spec: LabelSpec,
    pose_params: TopDownParams,
    dense_params: DenseParams,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    report: ItemReport | None = None,
    policy: BadSamplePolicy = "skip",
    augment: bool = True,
    epochs: int | None = None,
    shuffle_buffer: int = 64,
    backgrounds: list[np.ndarray] | None = None,
) -> Iterator[Item]:
    """An endless (or `epochs`-long) deterministic stream of training rows for one slot (`rank` of `world_size`).

    Each epoch reshuffles the shard order and splits shards or samples between slots
    (`train.data_stream.split_shards`), and mixes rows through a `shuffle_buffer`; the random state depends
    only on (seed, rank, world_size), so the same call gives the same stream. Raises ValueError when a whole
    epoch yields no row for the run's tasks (the shards have none of its labels).
    """
    report = report if report is not None else ItemReport()
    paths = expand(shards)
    decoder = functools.partial(decode, labels=spec.label_members())
    rng = np.random.default_rng([seed, rank, world_size])  # augmentation and the shuffle buffer
    epoch = 0
    while epochs is None or epoch < epochs:
        mine, select = split_shards(paths, rank, world_size, seed if augment else None, epoch)
        samples = iter_samples(mine, policy=policy, report=report.read, select=select, decoder=decoder)
        rows = _rows(samples, spec, pose_params, dense_params, rng if augment else None, report, backgrounds)
        made = 0
        for item in shuffled(rows, shuffle_buffer if augment else 0, rng):
            made += 1
            yield item
        if made == 0:
            raise ValueError(
                f"shards {list(mine)[:3]}{'...' if len(mine) > 3 else ''} gave no training rows for tasks "
                f"{list(spec.tasks)} (rank {rank}/{world_size}); {report.summary()}"
            )
        epoch += 1


def _rows(
    samples: Iterator[Sample],
    spec: LabelSpec,
    pose_params: TopDownParams,
    dense_params: DenseParams,
    rng: np.random.Generator | None,
    report: ItemReport,
    backgrounds: list[np.ndarray] | None,
) -> Iterator[Item]:
    for sample in samples:
        report.samples += 1
        yield from sample_items(sample, spec, pose_params, dense_params, rng, report, backgrounds)


def iter_batches(items: Iterator[Item], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Group rows into collated batches of exactly `batch_size` (a short tail is dropped; streams are endless)."""
    while True:
        group = []
        for item in items:
            group.append(item)
            if len(group) == batch_size:
                break
        if len(group) < batch_size:
            return
        yield collate(group)


def collate(items: Sequence[Item]) -> dict[str, np.ndarray]:
    """Rows -> one batch of numpy arrays.

    image: (B, 3, H, W) float32. Per task present in any row, `{task}_index` (N_t,) int64 rows carrying it and:
      pose:   pose_heatmaps (N, K, h, w) float32, pose_weights (N, K) float32
      seg:    seg (N, H, W) int64 (255 = ignore)
      depth:  depth (N, H, W) float32 in [0, 1], depth_mask (N, H, W) bool
      normal: normal (N, 3, H, W) float32, normal_mask (N, H, W) bool
    """
    if not items:
        raise ValueError("collate needs at least one item")
    shapes = {it.image.shape for it in items}
    if len(shapes) > 1:
        raise ValueError(f"items have different image shapes {sorted(shapes)}: crops and views must share a size")
    batch: dict[str, np.ndarray] = {"image": np.stack([it.image for it in items])}
    for task, names in ((t, d.targets) for t, d in TASKS.items()):
        rows = [i for i, it in enumerate(items) if names[0] in it.targets]
        if not rows:
            continue
        batch[f"{task}_index"] = np.array(rows, dtype=np.int64)
        for name in names:
            batch[name] = np.stack([items[i].targets[name] for i in rows])
    return batch


# ------------------------------------------------------------------------------------- the engine's batches


def data_params(cfg: FinetuneConfig) -> tuple[LabelSpec, TopDownParams, DenseParams]:
    """(LabelSpec, TopDownParams, DenseParams) of a config."""
    size = (int(cfg.model.image_size[0]), int(cfg.model.image_size[1]))
    spec = LabelSpec(tasks=cfg.active_tasks, keypoint_set=cfg.pose.keypoint_set, seg_vocabulary=cfg.seg.vocabulary)
    stride = _heatmap_stride(cfg, size) if "pose" in cfg.active_tasks else TopDownParams.heatmap_stride
    pose = TopDownParams(input_size=size, augment=cfg.pose, heatmap_stride=stride)
    return spec, pose, DenseParams(input_size=size, augment=cfg.augment)


@functools.cache
def _stride_of(spec_json: str) -> tuple[int, int, int, int]:
    """(H, W, heatmap h, heatmap w), cached per spec: every loader worker and resumed slot asks again."""
    from train.models.multitask import head_output_sizes
    from train.models.spec import ModelSpec

    model_spec = ModelSpec.from_json(spec_json)
    out_h, out_w = head_output_sizes(model_spec)["pose"]
    h, w = model_spec.image_size
    return h, w, out_h, out_w


def _heatmap_stride(cfg: FinetuneConfig, size: tuple[int, int]) -> int:
    """The pose head's real output stride (4 for the Sapiens layout: patch 16, two x2 deconvolutions; 2 with
    patch 8), so that the targets are drawn at the heatmaps' size."""
    h, w, out_h, out_w = _stride_of(cfg.model_spec().to_json())
    if h % out_h or w % out_w or h // out_h != w // out_w:
        raise ValueError(f"pose head output {out_h}x{out_w} is not an integer fraction of the input {h}x{w}")
    return h // out_h


def load_backgrounds(patterns: Sequence[str], limit: int) -> list[np.ndarray]:
    """Up to `limit` RGB images from shards (their image member), for background replacement."""
    pool: list[np.ndarray] = []
    if not patterns:
        return pool
    for sample in iter_samples(list(patterns), policy="skip"):
        pool.append(sample.image)
        if len(pool) >= limit:
            break
    if not pool:
        raise ValueError(f"data.background_shards {list(patterns)} holds no readable image")
    return pool


def make_batches_fn(cfg: FinetuneConfig, report_path: str | None = None, reports: list | None = None):
    """The engine's `make_batches(rank, world_size, seed, start_step)` for a `FinetuneConfig`.

    Slots, loader workers and resume come from `train.data_stream`. num_workers = 0: rows are made in the
    training process; its ItemReport is appended to `reports` and rank 0 rewrites `report_path` every 50
    batches. num_workers = W > 0: each of rank 0's workers rewrites `report_path` with `-w{w}` (its logical
    stream) before the extension.
    """

    def slot_batches(slot: Slot) -> Iterator[dict[str, Any]]:
        report = ItemReport()
        if reports is not None and slot.worker is None:
            reports.append(report)
        path = None
        if report_path is not None and slot.rank == 0:
            stem, ext = os.path.splitext(report_path)
            path = report_path if slot.worker is None else f"{stem}-w{slot.worker}{ext}"
        return _slot_batches(cfg, slot, report, path)

    return make_batches_from(slot_batches, cfg.data.num_workers)


def _slot_batches(
    cfg: FinetuneConfig, slot: Slot, report: ItemReport, report_path: str | None
) -> Iterator[dict[str, Any]]:
    """One slot's batches (as torch tensors), its first `slot.skip` batches replayed and dropped: the stream is
    deterministic, so a resumed run continues the same data order."""
    import torch

    spec, pose, dense = data_params(cfg)
    backgrounds = load_backgrounds(cfg.data.background_patterns(), cfg.data.max_backgrounds)
    items = iter_items(
        cfg.data.shard_patterns(), spec, pose, dense, seed=slot.seed, rank=slot.index, world_size=slot.count,
        report=report, policy=cfg.data.bad_samples, shuffle_buffer=cfg.data.shuffle_buffer, backgrounds=backgrounds,
    )  # fmt: skip
    for index, batch in enumerate(iter_batches(items, cfg.batch_size)):
        if index < slot.skip:
            continue
        if report_path is not None and index % 50 == 0:
            write_report(report_path, report)
        yield {k: torch.from_numpy(v) for k, v in batch.items()}


def write_report(path: str, report: ItemReport) -> None:
    """The stream's report as JSON (written to a temporary file, then renamed over `path`)."""
    bad = [{"shard": b.shard, "key": b.key, "reason": b.reason, "seen": b.seen} for b in report.read.bad]
    with open(path + ".tmp", "w") as f:
        json.dump({"summary": report.summary(), "samples": report.samples, "rows": dict(report.items),
                   "unused_labels": dict(report.unused), "bad_samples": bad}, f, indent=1)  # fmt: skip
    os.replace(path + ".tmp", path)
