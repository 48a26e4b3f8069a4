"""Pose augmentation settings: on by default and in the sapiens configs, off in the tiny ones, checked at start-up,
and carried through `data_params` into the rows the data stream makes."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from ft_synthetic import person_sample

from train.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name: str, *overrides: str):
    from train.finetune_config import load_finetune_config

    return load_finetune_config(os.path.join(ROOT, "configs/finetune", name), ["data.shards=x", *overrides])


def test_defaults_are_the_papers_and_reach_the_crop_params() -> None:
    from train.data_finetune import data_params
    from train.finetune_config import FinetuneConfig

    cfg = FinetuneConfig()
    assert cfg.pose.half_body.prob == 0.3 and cfg.pose.photometric.enabled
    _, pose, _ = data_params(cfg)
    hb, ph = pose.augment.half_body, pose.augment.photometric
    assert hb.prob == 0.3 and hb.upper_prob == 0.7 and hb.padding == 1.5
    assert hb.min_keypoints == 9 and hb.min_upper == 2 and hb.min_lower == 3
    assert ph.enabled and list(ph.dropout_size_range) == [0.2, 0.4] and list(ph.contrast_range) == [0.5, 1.5]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs/finetune/pose_sapiens_*.yaml"))))
def test_sapiens_pose_configs_turn_augmentation_on(path) -> None:
    from train.data_finetune import data_params

    _, pose, _ = data_params(_load(os.path.basename(path)))
    aug = pose.augment
    assert aug.half_body.prob == 0.3 and aug.photometric.enabled and aug.photometric.dropout_prob == 1.0


@pytest.mark.parametrize("name", ["pose_tiny.yaml", "multi_tiny.yaml"])
def test_tiny_configs_turn_it_off_and_overrides_turn_it_back_on(name) -> None:
    from train.data_finetune import data_params

    _, pose, _ = data_params(_load(name))
    assert pose.augment.half_body.prob == 0.0 and not pose.augment.photometric.enabled
    _, pose, _ = data_params(_load(name, "pose.half_body.prob=0.5", "pose.photometric.enabled=true"))
    assert pose.augment.half_body.prob == 0.5 and pose.augment.photometric.enabled


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pose.half_body.prob=1.5", "pose.half_body.prob"),
        ("pose.half_body.upper_prob=-0.1", "pose.half_body.upper_prob"),
        ("pose.half_body.min_upper=0", "pose.half_body"),
        ("pose.half_body.padding=0", "pose.half_body"),
        ("pose.photometric.dropout_prob=2", "dropout_prob"),
        ("pose.photometric.dropout_size_range=[0.5,0.2]", "dropout_size_range"),
        ("pose.photometric.dropout_size_range=[0.2,1.5]", "dropout_size_range"),
        ("pose.photometric.blur_max_kernel=4", "blur_max_kernel"),
        ("pose.photometric.contrast_range=[1.5]", "contrast_range"),
        ("pose.photometric.saturation_range=[0,1]", "saturation_range"),
        ("pose.photometric.hue_delta=270", "hue_delta"),
        ("pose.photometric.brightness=3", "brightness"),
        ("pose.half_body.prob=often", "prob"),
    ],
)
def test_bad_augmentation_settings_fail_at_start_up(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _load("pose_tiny.yaml", override)


def test_data_stream_makes_half_body_rows_for_the_models_keypoint_set() -> None:
    """sample_items passes the keypoint set's lower-body mask: with half-body always on and the upper body
    preferred, no row of a standing figure carries an ankle, and every row still carries the shoulders."""
    from train.data_finetune import ItemReport, data_params, sample_items

    cfg = _load(
        "pose_tiny.yaml", "pose.half_body.prob=1.0", "pose.half_body.upper_prob=1.0", "pose.scale_range=[1,1]",
        "pose.rotation_prob=0", "pose.shift=0", "pose.flip_prob=0", "pose.photometric.enabled=true",
    )  # fmt: skip
    spec, pose, dense = data_params(cfg)
    rng, report = np.random.default_rng(0), ItemReport()
    rows = [
        it for seed in range(6) for it in sample_items(person_sample(seed, 160, 120), spec, pose, dense, rng, report)
    ]
    assert len(rows) == 6 and report.items["pose"] == 6
    weights = np.stack([r.targets["pose_weights"] for r in rows])  # (6, 17), coco17 order
    assert not weights[:, 15:].any() and weights[:, 5:7].all()
