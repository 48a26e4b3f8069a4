"""OHKM heatmap loss: against a direct numpy computation, equal to the MSE at topk >= K, and it picks the worst."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.losses import heatmap_mse, heatmap_ohkm_mse


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _numpy_ohkm(pred: np.ndarray, target: np.ndarray, weight: np.ndarray, topk: int) -> float:
    """The docstring formula, one sample at a time: rank the labelled keypoints by weighted loss, keep topk."""
    num, den = 0.0, 0.0
    per_keypoint = ((pred - target) ** 2).mean(axis=(2, 3)) * weight
    for b in range(pred.shape[0]):
        labelled = np.flatnonzero(weight[b] > 0)
        worst = labelled[np.argsort(-per_keypoint[b, labelled], kind="stable")[:topk]]
        num += per_keypoint[b, worst].sum()
        den += weight[b, worst].sum()
    return num / den


@pytest.mark.parametrize("topk", [1, 3, 7, 12])
@pytest.mark.parametrize("seed", range(3))
def test_ohkm_matches_numpy(topk, seed) -> None:
    rng = np.random.default_rng(seed)
    pred, target = rng.random((4, 12, 6, 5)), rng.random((4, 12, 6, 5))
    weight = (rng.random((4, 12)) > 0.3).astype(np.float64)
    weight[0, :] = 0.0
    weight[0, 5] = 1.0  # a sample with one labelled keypoint: fewer than topk, none diluted
    got = heatmap_ohkm_mse(_t(pred), _t(target), _t(weight), topk)
    assert got.item() == pytest.approx(_numpy_ohkm(pred, target, weight, topk), rel=1e-10)


def test_ohkm_with_topk_k_equals_mse() -> None:
    rng = np.random.default_rng(3)
    pred, target = _t(rng.random((3, 9, 8, 6))), _t(rng.random((3, 9, 8, 6)))
    weight = _t((rng.random((3, 9)) > 0.4).astype(np.float64) * rng.uniform(0.5, 2.0, (3, 9)))
    expected = heatmap_mse(pred, target, weight).item()
    assert heatmap_ohkm_mse(pred, target, weight, 9).item() == pytest.approx(expected, rel=1e-12)
    assert heatmap_ohkm_mse(pred, target, weight, 500).item() == pytest.approx(expected, rel=1e-12)


def test_ohkm_keeps_only_the_hardest_keypoints_and_only_they_get_gradient() -> None:
    target = torch.zeros(2, 5, 4, 4)
    errors = torch.tensor([[0.1, 0.9, 0.3, 0.7, 0.5], [0.8, 0.2, 0.6, 0.4, 1.0]])
    pred = (errors[:, :, None, None] * torch.ones(2, 5, 4, 4)).requires_grad_()
    weight = torch.ones(2, 5)
    weight[1, 4] = 0.0  # the worst keypoint of sample 1 is unlabelled: never picked
    loss = heatmap_ohkm_mse(pred, target, weight, topk=2)
    expected = (0.9**2 + 0.7**2 + 0.8**2 + 0.6**2) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    touched = (pred.grad.abs().sum(dim=(2, 3)) > 0).tolist()
    assert touched == [[False, True, False, True, False], [True, False, True, False, False]]


def test_ohkm_all_unweighted_is_zero_with_gradient() -> None:
    pred = torch.rand(2, 3, 4, 4, requires_grad=True)
    loss = heatmap_ohkm_mse(pred, torch.rand(2, 3, 4, 4), torch.zeros(2, 3), topk=2)
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None and torch.all(pred.grad == 0)


@pytest.mark.parametrize(
    ("pred", "target", "weight", "topk", "message"),
    [
        ((2, 3, 4, 4), (2, 3, 4, 5), (2, 3), 2, "differ"),
        ((2, 3, 4, 4), (2, 3, 4, 4), (2, 4), 2, "weight"),
        ((2, 3, 4, 4), (2, 3, 4, 4), (2, 3), 0, "topk"),
    ],
)
def test_ohkm_rejects_bad_input(pred, target, weight, topk, message) -> None:
    with pytest.raises(ValueError, match=message):
        heatmap_ohkm_mse(torch.rand(pred), torch.rand(target), torch.ones(weight), topk)


def _config(*overrides: str):
    import os

    from train.finetune_config import load_finetune_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return load_finetune_config(os.path.join(root, "configs/finetune/pose_tiny.yaml"), ["data.shards=x", *overrides])


def test_pose_loss_key_selects_ohkm_in_the_training_loss() -> None:
    from train.finetune import task_losses
    from train.finetune_config import PoseLoss
    from train.models.multitask import build_model

    mse_cfg, ohkm_cfg = _config(), _config("pose.loss=ohkm", "pose.ohkm_topk=4")
    fg_cfg = _config("pose.foreground_weight=20")
    assert mse_cfg.pose.loss == PoseLoss.mse and ohkm_cfg.pose.loss == PoseLoss.ohkm
    torch.manual_seed(0)
    model = build_model(mse_cfg.model_spec()).eval()
    h, w = mse_cfg.model.image_size
    batch = {
        "image": torch.randn(2, 3, h, w),
        "pose_index": torch.arange(2),
        "pose_heatmaps": torch.rand(2, 17, h // 4, w // 4),
        "pose_weights": (torch.rand(2, 17) > 0.3).float(),
    }
    with torch.no_grad():
        pred = model(batch["image"])["pose"]
        mse, _ = task_losses(model, batch, mse_cfg, None)
        ohkm, logs = task_losses(model, batch, ohkm_cfg, None)
        foreground, _ = task_losses(model, batch, fg_cfg, None)
    expected = heatmap_ohkm_mse(pred, batch["pose_heatmaps"], batch["pose_weights"], 4)
    assert ohkm.item() == pytest.approx(expected.item(), rel=1e-5) and logs["loss_pose"] == pytest.approx(ohkm.item())
    assert mse.item() == pytest.approx(heatmap_mse(pred, batch["pose_heatmaps"], batch["pose_weights"]).item())
    assert ohkm.item() > mse.item()  # the hardest 4 of 17 keypoints lose more than the average
    fg_expected = heatmap_mse(pred, batch["pose_heatmaps"], batch["pose_weights"], foreground_weight=20)
    assert foreground.item() == pytest.approx(fg_expected.item(), rel=1e-5) and foreground.item() > mse.item()


@pytest.mark.parametrize(("overrides", "message"), [(["pose.ohkm_topk=18"], r"\[1, 17\]"), (["pose.ohkm_topk=0"], "")])
def test_ohkm_topk_outside_the_keypoint_set_fails_at_start_up(overrides, message) -> None:
    from train.config import ConfigError

    with pytest.raises(ConfigError, match=rf"pose\.ohkm_topk.*{message}"):
        _config("pose.loss=ohkm", *overrides)
    with pytest.raises(ConfigError, match=r"pose\.loss"):
        _config("pose.loss=focal")
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(ConfigError, match=r"pose\.foreground_weight must be a finite number >= 0"):
            _config(f"pose.foreground_weight={bad}")
    with pytest.raises(ConfigError, match=r"depth\.loss"):
        _config("depth.loss=l2")
    for bad in ("-0.5", "1.5", "nan"):
        with pytest.raises(ConfigError, match=r"depth\.silog_lambda must be in \[0, 1\]"):
            _config(f"depth.silog_lambda={bad}")
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(ConfigError, match=r"depth\.log_offset must be a finite number >= 0"):
            _config(f"depth.log_offset={bad}")
        with pytest.raises(ConfigError, match=r"depth\.grad_weight must be a finite number >= 0"):
            _config(f"depth.grad_weight={bad}")


def test_sapiens_1b_config_uses_ohkm_top128_and_the_others_mse() -> None:
    import os

    from train.finetune_config import PoseLoss, load_finetune_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for size, loss in (("0.3b", PoseLoss.mse), ("1b", PoseLoss.ohkm), ("2b", PoseLoss.mse)):
        cfg = load_finetune_config(os.path.join(root, f"configs/finetune/pose_sapiens_{size}.yaml"), ["data.shards=x"])
        assert cfg.pose.loss == loss
    assert cfg.pose.ohkm_topk == 8
    assert load_finetune_config(os.path.join(root, "configs/finetune/pose_sapiens_1b.yaml")).pose.ohkm_topk == 128
