"""The multistep LR schedule (Sapiens pose: x0.1 at epochs 170 and 200 of 210, after a linear warmup)."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from train.config import ConfigError, OptimConfig, Schedule, TrainConfig, load_config
from train.engine import lr_schedule, multistep_steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_multistep_values_around_the_milestones() -> None:
    optim = OptimConfig(
        schedule=Schedule.multistep, milestones=[0.5, 0.8], gamma=0.1, warmup_steps=10, warmup_start_factor=0.1
    )
    lrs = lr_schedule(optim, 100, 2.0)
    assert multistep_steps(optim, 100) == [50, 80]
    np.testing.assert_allclose(lrs[:10], 2.0 * (0.1 + 0.9 * np.arange(10) / 10))  # warmup untouched
    np.testing.assert_allclose(lrs[10:50], 2.0)  # peak from the end of warmup up to the first milestone
    np.testing.assert_allclose(lrs[50:80], 0.2)  # the milestone step itself already runs decayed
    np.testing.assert_allclose(lrs[80:], 0.02)
    assert lrs[49] == 2.0 and lrs[50] == pytest.approx(0.2) and lrs[79] == pytest.approx(0.2)


def test_multistep_ignores_min_lr_and_follows_gamma() -> None:
    optim = OptimConfig(schedule=Schedule.multistep, milestones=[0.25], gamma=0.5, min_lr=0.7)
    lrs = lr_schedule(optim, 8, 1.0)
    np.testing.assert_allclose(lrs, [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])


def test_multistep_milestones_scale_with_steps() -> None:
    # Fractions, so `steps=` overrides keep the decay at the same point of the run (Sapiens: 170/210, 200/210).
    optim = OptimConfig(schedule=Schedule.multistep)
    assert multistep_steps(optim, 210) == [170, 200]
    assert multistep_steps(optim, 2100) == [1700, 2000]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.milestones=[0.8,0.5]"], "increasing"),
        (["optim.milestones=[0.5,0.5]"], "increasing"),
        (["optim.milestones=[1.5]"], r"\(0, 1\)"),
        (["optim.milestones=[0]"], r"\(0, 1\)"),
        (["optim.milestones=[0.05]", "optim.warmup_steps=10"], "warmup"),
        (["optim.gamma=0"], "gamma"),
        (["optim.gamma=2"], "gamma"),
        (["optim.milestones=abc"], "milestones"),
    ],
)
def test_bad_multistep_settings_fail_at_start_up(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, ["steps=100", "optim.schedule=multistep", *overrides])


def test_bad_milestones_are_not_checked_for_other_schedules() -> None:
    cfg = load_config(TrainConfig, None, ["optim.schedule=cosine", "optim.milestones=[0.9,0.1]"])
    assert cfg.optim.schedule == Schedule.cosine


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs/finetune/pose_sapiens_*.yaml"))))
def test_sapiens_pose_configs_use_the_papers_multistep(path) -> None:
    from train.finetune_config import load_finetune_config

    cfg = load_finetune_config(path, ["data.shards=unused", "steps=2100"])
    assert cfg.optim.schedule == Schedule.multistep and cfg.optim.gamma == 0.1
    assert multistep_steps(cfg.optim, 2100) == [1700, 2000]
    lrs = lr_schedule(cfg.optim, 2100, 5e-5)
    assert lrs[1699] == pytest.approx(5e-5) and lrs[1700] == pytest.approx(5e-6) and lrs[2000] == pytest.approx(5e-7)
