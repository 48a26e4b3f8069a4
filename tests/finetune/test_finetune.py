"""Fine-tuning end to end: each task overfits a handful of synthetic people through the real DeepSpeed engine,
then the exported checkpoint predicts them back through the Predictor, on the images and on their mirrors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from ft_synthetic import person_sample, write_shards

from data_engine import schema

SIZE = (64, 48)
NUM_SAMPLES = 8
# Augmentation off except the horizontal flip: the model must learn both orientations with the classes and
# keypoints swapped, which is what the flip-consistency checks below rely on.
NO_AUG = [
    "pose.scale_range=[1,1]",
    "pose.rotation_prob=0",
    "pose.shift=0",
    "pose.flip_prob=0.5",
    "augment.scale_range=[1,1]",
    "augment.rotation_prob=0",
    "augment.shift=0",
    "augment.flip_prob=0.5",
    "augment.background_prob=0",
]


@pytest.fixture(scope="module")
def samples():
    return [person_sample(i, *SIZE) for i in range(NUM_SAMPLES)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, samples):
    folder = tmp_path_factory.mktemp("shards")
    return write_shards(str(folder / "people"), samples, max_count=4)


def train(task: str, out: str, shards: list[str], steps: int, *extra: str):
    from train.finetune import run
    from train.finetune_config import load_finetune_config

    overrides = [
        f"data.shards={','.join(shards)}",
        f"steps={steps}",
        f"model.image_size=[{SIZE[0]},{SIZE[1]}]",
        "model.depth=2",
        "model.head_channels=32",
        "batch_size=8",
        "log_every=1",
        "progress=false",
        "tensorboard=false",
        *NO_AUG,
        *extra,
    ]
    cfg = load_finetune_config(f"configs/finetune/{task}_tiny.yaml", overrides)
    result = run(cfg, out)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return result, rows


def loss_drop(rows: list[dict], key: str = "loss") -> float:
    first = rows[0][key]
    last = np.mean([r[key] for r in rows[-5:]])
    return first / last


def mirror_keypoints(keypoints: np.ndarray, width: int, flip: np.ndarray) -> np.ndarray:
    """Image-space mirror of (..., K, 2) keypoints, slots swapped left/right."""
    out = keypoints[..., flip, :].copy()
    out[..., 0] = width - out[..., 0]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        [],
        # the head drops a deconvolution: heatmaps stay at 1/4 (4x the tokens learn more slowly at this size)
        ["model.backbone_options={patch_size: 8}", "steps=200"],
        # heatmaps at 1/2 the input: the targets follow the head's real size (4x the pixels spread the mean-squared
        # loss thinner over the peaks, so it takes more steps again)
        ["model.backbone_options={patch_size: 8}", "model.head_options={pose: {num_deconv: 2}}", "steps=300"],
    ],
    ids=["patch16", "patch8", "patch8-stride2"],
)
def test_pose_overfits_and_predicts_flip_consistently(tmp_path, shards, samples, model: list[str]) -> None:
    from train.predictor import Predictor

    result, rows = train("pose", str(tmp_path / "run"), shards, 100, *model)
    assert result.step == len(rows) and loss_drop(rows) >= 5
    predictor = Predictor(str(tmp_path / "run"))
    assert predictor.keypoint_names == schema.subset_names("coco17")
    images = [s.image for s in samples]
    boxes = [np.array([s.pose.persons[0].bbox]) for s in samples]
    truth = np.stack([s.pose.persons[0].keypoints[:, :2] for s in samples])
    pred = np.stack([p.keypoints[0] for p in predictor.pose(images, boxes)])
    error = np.linalg.norm(pred - truth, axis=-1)
    assert np.median(error) < 1.5, f"median keypoint error {np.median(error):.2f} px"
    # Flip consistency: predict the mirrored image and box, mirror the answer back: the same keypoints.
    flip = schema.subset_flip_indices("coco17")
    w = SIZE[1]
    mirrored_boxes = [np.array([[w - b[0, 2], b[0, 1], w - b[0, 0], b[0, 3]]]) for b in boxes]
    mirrored = predictor.pose([np.ascontiguousarray(im[:, ::-1]) for im in images], mirrored_boxes)
    unflipped = np.stack([mirror_keypoints(p.keypoints[0], w, flip) for p in mirrored])
    assert np.median(np.linalg.norm(unflipped - truth, axis=-1)) < 1.5
    # Test-time flip averaging gives answers as good as the plain ones.
    tta = Predictor(str(tmp_path / "run"), flip_test=True).pose(images, boxes)
    assert np.median(np.linalg.norm(np.stack([p.keypoints[0] for p in tta]) - truth, axis=-1)) < 1.5


@pytest.mark.slow
def test_seg_overfits_and_predicts_flip_consistently(tmp_path, shards, samples) -> None:
    from train.predictor import Predictor

    _, rows = train("seg", str(tmp_path / "run"), shards, 100)
    assert loss_drop(rows) >= 5, loss_drop(rows)
    predictor = Predictor(str(tmp_path / "run" / "model.safetensors"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "model.safetensors"), framework="pt") as f:
        assert '"tasks": ["seg"]' in f.metadata()["model_spec"]  # the run's export carries its ModelSpec
    lut = schema.vocabulary("goliath28").flip_lut()
    images = [s.image for s in samples]
    plain = predictor.dense(images)
    mirrored = predictor.dense([np.ascontiguousarray(im[:, ::-1]) for im in images])
    for s, p, m in zip(samples, plain, mirrored, strict=True):
        assert p.seg.shape == s.seg.shape and p.depth is None and p.normal is None
        person = s.mask
        assert (p.seg[person] == s.seg[person]).mean() > 0.8
        unflipped = lut[m.seg[:, ::-1]]  # mirror back and swap left/right classes
        assert (unflipped[person] == s.seg[person]).mean() > 0.8


@pytest.mark.slow
def test_depth_overfits(tmp_path, shards, samples) -> None:
    from train.predictor import Predictor
    from train.transforms.dense import normalize_depth

    _, rows = train("depth", str(tmp_path / "run"), shards, 80)
    assert loss_drop(rows) >= 5, loss_drop(rows)
    preds = Predictor(str(tmp_path / "run")).dense([s.image for s in samples])
    for s, p in zip(samples, preds, strict=True):
        target, valid = normalize_depth(s.depth, s.mask)
        # Relative depth: judged after the least-squares scale and shift, as evaluation does.
        a = np.column_stack([p.depth[valid], np.ones(valid.sum())])
        coef, *_ = np.linalg.lstsq(a, target[valid], rcond=None)
        rmse = np.sqrt(np.mean((a @ coef - target[valid]) ** 2))
        assert rmse < 0.15, f"aligned depth RMSE {rmse:.3f}"


@pytest.mark.slow
def test_normal_overfits(tmp_path, shards, samples) -> None:
    from train.predictor import Predictor

    _, rows = train("normal", str(tmp_path / "run"), shards, 80)
    assert loss_drop(rows) >= 5, loss_drop(rows)
    images = [s.image for s in samples]
    predictor = Predictor(str(tmp_path / "run"))
    mirrored = predictor.dense([im[:, ::-1].copy() for im in images])
    for s, p, m in zip(samples, predictor.dense(images), mirrored, strict=True):
        valid = s.mask
        cos = np.clip((p.normal[valid] * s.normal[valid]).sum(-1), -1, 1)
        assert np.degrees(np.arccos(cos)).mean() < 15
        back = m.normal[:, ::-1] * np.array([-1, 1, 1], np.float32)  # un-mirror: negate x
        cos = np.clip((back[valid] * s.normal[valid]).sum(-1), -1, 1)
        assert np.degrees(np.arccos(cos)).mean() < 15


@pytest.mark.slow
def test_multi_task_from_mixed_shards(tmp_path, samples) -> None:
    """One backbone, four heads, shards whose samples carry different labels: every head learns from the
    samples that have its labels, and the data report counts the rows each task got."""
    from data_engine.sample import Sample

    def keep(s: Sample, *members: str) -> Sample:
        kept = {m: getattr(s, m) for m in ("pose", "seg", "depth", "normal", "mask") if m in members}
        return Sample(key=s.key, image=s.image, meta=dict(s.meta), **kept)

    mixed = [keep(s, "pose") for s in samples[:4]]  # annotated photos: keypoints only
    mixed += [keep(s, "seg", "depth", "normal", "mask") for s in samples[4:]]  # renders: dense labels only
    shards = write_shards(str(tmp_path / "mixed"), mixed, max_count=4)
    _, rows = train("multi", str(tmp_path / "run"), shards, 80)
    for task in ("pose", "seg", "depth", "normal"):
        assert loss_drop(rows, f"loss_{task}") >= 3, (task, loss_drop(rows, f"loss_{task}"))
    assert loss_drop(rows) >= 5, loss_drop(rows)
    with open(tmp_path / "run" / "data_report.json") as f:
        report = json.load(f)
    per_pass = {"pose": 4, "seg": 4, "depth": 4, "normal": 4}
    assert {t: n % 4 for t, n in report["rows"].items()} == {t: 0 for t in per_pass}
    assert report["rows"]["pose"] == report["rows"]["seg"] and report["unused_labels"] == {}
