"""The fine-tuning data stream (routing rows to heads, bad shards, unusable labels, rank splits), the multi-task
loss, and the Predictor's answers to bad input."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
import torch
from ft_synthetic import person_sample, write_shards

from data_engine import schema
from data_engine.sample import PersonPose, Pose, Sample, encode
from data_engine.shards import ShardError
from train.data_finetune import ItemReport, LabelSpec, collate, iter_items, keypoint_mapping, sample_items
from train.transforms.dense import DenseParams
from train.transforms.pose import TopDownParams

SIZE = (64, 48)
POSE = TopDownParams(input_size=SIZE)
DENSE = DenseParams(input_size=SIZE)
MULTI = LabelSpec(tasks=("pose", "seg", "depth", "normal"), keypoint_set="coco17")


def only(sample: Sample, *members: str) -> Sample:
    """The sample with only the named labels kept."""
    kept = {m: getattr(sample, m) for m in ("pose", "seg", "depth", "normal", "mask") if m in members}
    return Sample(key=sample.key, image=sample.image, meta=dict(sample.meta), **kept)


def test_a_sample_trains_the_heads_whose_members_it_has() -> None:
    rng = np.random.default_rng(0)
    report = ItemReport()
    base = person_sample(0, *SIZE)
    items = []
    items += sample_items(only(base, "pose"), MULTI, POSE, DENSE, rng, report)
    items += sample_items(only(base, "seg", "mask"), MULTI, POSE, DENSE, rng, report)
    items += sample_items(only(base, "depth", "normal"), MULTI, POSE, DENSE, rng, report)
    items += sample_items(base, MULTI, POSE, DENSE, rng, report)  # all: a pose crop + one dense view
    batch = collate(items)
    assert batch["image"].shape == (5, 3, *SIZE)
    assert batch["pose_index"].tolist() == [0, 3]
    assert batch["seg_index"].tolist() == [1, 4]
    assert batch["depth_index"].tolist() == [2, 4] and batch["normal_index"].tolist() == [2, 4]
    assert batch["pose_heatmaps"].shape == (2, 17, 16, 12) and batch["normal"].shape == (2, 3, *SIZE)
    assert dict(report.items) == {"pose": 2, "seg": 2, "depth": 2, "normal": 2}


def test_keypoints_map_by_name_between_sets() -> None:
    mapping = keypoint_mapping("all", "coco17")
    names = schema.subset_names("all")
    assert [names[i] for i in mapping] == schema.subset_names("coco17")
    partial = keypoint_mapping("coco17", "body+feet")
    assert (partial >= 0).sum() == 17 and (partial < 0).sum() == 6  # feet are unlabelled, not invented


def test_unusable_labels_are_counted_not_dropped_silently() -> None:
    report = ItemReport()
    lip = person_sample(1, *SIZE, vocabulary="lip20")
    items = sample_items(only(lip, "seg"), LabelSpec(tasks=("seg",)), POSE, DENSE, None, report)
    assert items == [] and "seg vocabulary lip20 is not the model's goliath28" in next(iter(report.unused))
    unlabelled = person_sample(2, *SIZE)
    kp = unlabelled.pose.persons[0].keypoints.copy()
    kp[:, 2] = 0
    unlabelled.pose = Pose("coco17", [PersonPose(unlabelled.pose.persons[0].bbox, kp)])
    assert sample_items(only(unlabelled, "pose"), MULTI, POSE, DENSE, None, report) == []
    assert report.unused["person without a labelled keypoint of the model's set"] == 1


@pytest.fixture()
def shard_dir(tmp_path) -> str:
    write_shards(str(tmp_path / "good"), [person_sample(i, *SIZE) for i in range(4)], max_count=2)
    return str(tmp_path)


def test_truncated_shard_is_reported_and_skipped(shard_dir) -> None:
    good = os.path.join(shard_dir, "good-000000.tar")
    with open(good, "rb") as f:
        data = f.read()
    with open(os.path.join(shard_dir, "broken-000000.tar"), "wb") as f:
        f.write(data[: len(data) // 3])
    report = ItemReport()
    spec = LabelSpec(tasks=("seg",))
    rows = list(iter_items(shard_dir, spec, POSE, DENSE, report=report, epochs=1))
    assert len(rows) >= 4  # every good sample, plus any read before the truncation point
    assert any("broken-000000.tar" in b.shard for b in report.read.bad)
    with pytest.raises(ShardError, match=r"broken-000000\.tar"):
        list(iter_items(shard_dir, spec, POSE, DENSE, policy="raise", epochs=1))


def test_a_run_decodes_only_the_labels_of_its_tasks(tmp_path) -> None:
    assert LabelSpec(tasks=("pose",)).label_members() == {"pose.json"}
    assert LabelSpec(tasks=("normal",)).label_members() == {"normal.png", "mask.png", "seg.png", "depth.png"}
    assert MULTI.label_members() == {"pose.json", "seg.png", "depth.png", "normal.png", "mask.png"}
    # Shards whose normal maps are corrupt: a pose run never reads them, a normal run reports every one.
    with tarfile.open(tmp_path / "broken-normals-000000.tar", "w") as tar:
        for seed in range(3):
            members = encode(person_sample(seed, *SIZE))
            members["normal.png"] = b"not a png"
            for name, data in members.items():
                if name != "__key__":
                    info = tarfile.TarInfo(f"{members['__key__']}.{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    pose_report, normal_report = ItemReport(), ItemReport()
    pose_spec = LabelSpec(tasks=("pose",), keypoint_set="coco17")
    assert len(list(iter_items(str(tmp_path), pose_spec, POSE, DENSE, report=pose_report, epochs=1))) == 3
    assert pose_report.read.bad == []
    with pytest.raises(ValueError, match="gave no training rows"):
        list(iter_items(str(tmp_path), LabelSpec(tasks=("normal",)), POSE, DENSE, report=normal_report, epochs=1))
    assert len(normal_report.read.bad) == 3 and all("normal.png" in b.reason for b in normal_report.read.bad)


def test_shards_without_the_tasks_labels_fail_with_a_reason(tmp_path) -> None:
    bare = [Sample(key=f"{i:04x}", image=np.zeros((*SIZE, 3), np.uint8)) for i in range(3)]
    write_shards(str(tmp_path / "bare"), bare)
    with pytest.raises(ValueError, match=r"gave no training rows for tasks \['pose'\]"):
        next(iter_items(str(tmp_path), LabelSpec(tasks=("pose",), keypoint_set="coco17"), POSE, DENSE))


def test_stream_is_deterministic_and_ranks_do_not_overlap(shard_dir) -> None:
    spec = LabelSpec(tasks=("seg",))

    def keys(rank: int, world: int, seed: int = 0) -> list[str]:
        return [
            it.key for it in iter_items(shard_dir, spec, POSE, DENSE, seed=seed, rank=rank, world_size=world, epochs=1)
        ]

    first = list(iter_items(shard_dir, spec, POSE, DENSE, seed=3, epochs=1))
    again = list(iter_items(shard_dir, spec, POSE, DENSE, seed=3, epochs=1))
    assert [it.key for it in first] == [it.key for it in again]
    np.testing.assert_array_equal(first[0].image, again[0].image)
    for world in (2, 3):  # 2 shards: split by shard for 2 ranks, by sample for 3
        split = [keys(r, world) for r in range(world)]
        flat = [k for ks in split for k in ks]
        assert sorted(flat) == sorted(keys(0, 1)) and len(set(flat)) == len(flat)


def _multi_cfg(*extra: str):
    from train.finetune_config import load_finetune_config

    return load_finetune_config(
        "configs/finetune/multi_tiny.yaml",
        ["model.depth=1", "model.image_size=[64,48]", "model.head_channels=8", *extra],
    )


def test_multi_task_loss_touches_every_head_even_without_its_rows() -> None:
    from train.finetune import task_losses
    from train.models.multitask import build_model

    cfg = _multi_cfg()
    torch.manual_seed(0)
    model = build_model(cfg.model_spec())
    items = sample_items(only(person_sample(0, *SIZE), "seg", "mask"), MULTI, POSE, DENSE, None, ItemReport())
    batch = {k: torch.from_numpy(v) for k, v in collate(items).items()}
    loss, logs = task_losses(model, batch, cfg, None)
    loss.backward()
    assert set(logs) == {f"{p}_{t}" for p in ("loss", "rows") for t in ("pose", "seg", "depth", "normal")}
    assert logs["rows_seg"] == 1 and logs["rows_pose"] == 0 and logs["loss_pose"] == 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name  # ZeRO needs a gradient for every parameter
    assert all((p.grad == 0).all() for p in model.heads["pose"].parameters())
    assert any((p.grad != 0).any() for p in model.heads["seg"].parameters())


@pytest.fixture(scope="module")
def seg_predictor():
    from train.models.multitask import build_model
    from train.predictor import Predictor

    cfg = _multi_cfg("tasks=[seg]")
    return Predictor.from_model(build_model(cfg.model_spec()), cfg.model_spec())


def test_predictor_rejects_bad_images_and_boxes(seg_predictor) -> None:
    good = np.zeros((40, 30, 3), np.uint8)
    with pytest.raises(ValueError, match=r"image 1: must be \(H, W, 3\) uint8"):
        seg_predictor.dense([good, good.astype(np.float32)])
    with pytest.raises(ValueError, match="image 0: must be"):
        seg_predictor.dense([good[..., 0]])
    with pytest.raises(ValueError, match="image 0: is empty"):
        seg_predictor.dense([np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match="no pose head"):
        seg_predictor.pose([good], [np.array([[0, 0, 10, 10]])])
    with pytest.raises(ValueError, match=r"no \['normal'\] head"):
        seg_predictor.dense([good], tasks=["normal"])
    out = seg_predictor.dense([good, np.zeros((17, 91, 3), np.uint8)])
    assert out[0].seg.shape == (40, 30) and out[1].seg.shape == (17, 91)  # each at its own size


def test_predictor_pose_boxes(tmp_path) -> None:
    from train.models.multitask import build_model
    from train.predictor import Predictor

    cfg = _multi_cfg("tasks=[pose]", "pose.keypoint_set=coco17")
    predictor = Predictor.from_model(build_model(cfg.model_spec()), cfg.model_spec(), batch_size=2)
    image = person_sample(0, *SIZE).image
    with pytest.raises(ValueError, match="1 images but 2 box lists"):
        predictor.pose([image], [[], []])
    with pytest.raises(ValueError, match="x1 > x0"):
        predictor.pose([image], [np.array([[10, 10, 5, 20]])])
    with pytest.raises(ValueError, match="finite"):
        predictor.pose([image], [np.array([[0, 0, np.nan, 20]])])
    out = predictor.pose([image, image, image], [np.zeros((0, 4)), np.array([[5, 5, 40, 60]] * 3), []])
    assert [p.keypoints.shape for p in out] == [(0, 17, 2), (3, 17, 2), (0, 17, 2)]
    assert np.isfinite(out[1].keypoints).all() and out[1].scores.shape == (3, 17)


def test_predictor_rejects_bad_checkpoint_files(tmp_path) -> None:
    from safetensors.torch import save_file

    from train.models.weights import CheckpointError
    from train.predictor import Predictor

    with pytest.raises(CheckpointError, match=r"missing\.safetensors' does not exist"):
        Predictor(str(tmp_path / "missing.safetensors"))
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    with pytest.raises(CheckpointError, match="export it"):
        Predictor(str(empty_run))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match=r"garbage\.safetensors"):
        Predictor(str(garbage))
    no_config = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(no_config))
    with pytest.raises(CheckpointError, match=r"bare\.safetensors: no fine-tuning config"):
        Predictor(str(no_config))


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_batches_continue_the_same_order(shard_dir, workers) -> None:
    """make_batches(start_step=s) yields what an uninterrupted stream yields from batch s on, in and out of
    loader worker processes."""
    from train.finetune import make_batches_fn

    cfg = _multi_cfg("tasks=[seg]", "batch_size=2", f"data.shards={shard_dir}", f"data.num_workers={workers}")
    make = make_batches_fn(cfg)
    whole = make(0, 1, 7, 0)
    expected = [next(whole)["image"] for _ in range(5)]
    for start in (2, 3):
        resumed = make(0, 1, 7, start)
        for want in expected[start:]:
            torch.testing.assert_close(next(resumed)["image"], want, rtol=0, atol=0)
