"""Fine-tuning data: shards -> augmented items -> batches for the task heads.

    stream = iter_items(shards, spec, seed=0, rank=0, world_size=1, report=report)
    batch = collate([next(stream) for _ in range(8)])

A sample trains the heads whose members it has: each labelled person of a `pose.json` becomes one top-down
crop (pose targets), and a sample with `seg.png`, `depth.png` or `normal.png` becomes one whole-image view
carrying those targets. Crops and views share the input size, so one batch (and one backbone pass) mixes
them; `collate` records, per task, which rows of the batch carry its targets.

Bad samples follow `data_engine.shards.iter_samples`' policy ("skip": counted in `ReadReport.bad` with the
shard, key and reason). Labels a sample has but the run cannot use (a seg vocabulary other than the model's,
a keypoint set with none of the model's keypoints, a person without a labelled keypoint) are counted per
reason in `ItemReport.unused`, never dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from data_engine import schema
from data_engine.sample import Sample
from data_engine.shards import BadSamplePolicy, ReadReport, expand, iter_samples
from train.models.tasks import DENSE_TASKS, TASKS, Task
from train.transforms import normalize_image
from train.transforms.dense import DenseParams, dense_item
from train.transforms.pose import TopDownParams, lower_body_mask, topdown_item


@dataclass
class LabelSpec:
    """What the model predicts: its tasks, its keypoint set (pose) and its class vocabulary (seg)."""

    tasks: tuple[Task, ...]
    keypoint_set: str = "all"
    seg_vocabulary: str = "goliath28"


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
    dense_tasks = [t for t in DENSE_TASKS if t in spec.tasks and getattr(sample, t) is not None]
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


def rank_paths(paths: Sequence[str], rank: int, world_size: int) -> tuple[list[str], bool]:
    """Split shards across ranks when there are enough (each reads only its own); else every rank reads all
    shards and keeps every world_size-th sample. Returns (paths, split_by_sample)."""
    if len(paths) >= world_size:
        return list(paths[rank::world_size]), False
    return list(paths), True


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
    """An endless (or `epochs`-long) deterministic stream of training rows for one rank.

    Each epoch reshuffles the shard order and mixes rows through a `shuffle_buffer`; the random state
    depends only on (seed, rank), so the same call gives the same stream. Raises ValueError when a whole
    epoch yields no row for the run's tasks (the shards have none of its labels).
    """
    report = report if report is not None else ItemReport()
    paths = expand(shards)
    mine, by_sample = rank_paths(paths, rank, world_size)
    # The shard order comes from a generator every rank shares (a per-sample split needs the same order on all
    # ranks); augmentation and the shuffle buffer from a per-rank one.
    order_rng = np.random.default_rng([seed, world_size])
    rng = np.random.default_rng([seed, rank, world_size])
    epoch = 0
    while epochs is None or epoch < epochs:
        order = [mine[i] for i in order_rng.permutation(len(mine))] if augment else mine
        buffer: list[Item] = []
        made = 0
        for index, sample in enumerate(iter_samples(order, policy=policy, report=report.read)):
            if by_sample and index % world_size != rank:
                continue
            report.samples += 1
            for item in sample_items(
                sample, spec, pose_params, dense_params, rng if augment else None, report, backgrounds
            ):
                made += 1
                if not augment or shuffle_buffer <= 1:
                    yield item
                    continue
                buffer.append(item)
                if len(buffer) >= shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))
        if made == 0:
            raise ValueError(
                f"shards {list(mine)[:3]}{'...' if len(mine) > 3 else ''} gave no training rows for tasks "
                f"{list(spec.tasks)} (rank {rank}/{world_size}); {report.summary()}"
            )
        epoch += 1


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
