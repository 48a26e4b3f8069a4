"""Each loss against a direct numpy computation of its docstring formula, including empty masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.losses import (
    gradient_matching_loss,
    heatmap_mse,
    heatmap_ohkm_mse,
    normal_loss,
    silog_loss,
    ssi_loss,
    weighted_ce,
)

RNG = np.random.default_rng(0)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def test_heatmap_mse_matches_numpy() -> None:
    pred, target = RNG.random((3, 5, 8, 6)), RNG.random((3, 5, 8, 6))
    weight = (RNG.random((3, 5)) > 0.4).astype(np.float64)
    expected = (((pred - target) ** 2).mean(axis=(2, 3)) * weight).sum() / weight.sum()
    got = heatmap_mse(_t(pred), _t(target), _t(weight))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_foreground_weighted_heatmap_mse_matches_numpy_in_both_pose_losses() -> None:
    pred, target = RNG.random((3, 5, 8, 6)), RNG.random((3, 5, 8, 6))
    weight = (RNG.random((3, 5)) > 0.4).astype(np.float64)
    per_keypoint = ((1 + 20 * target) * (pred - target) ** 2).mean(axis=(2, 3))
    expected = (per_keypoint * weight).sum() / weight.sum()
    got = heatmap_mse(_t(pred), _t(target), _t(weight), foreground_weight=20)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # OHKM keeping every keypoint is the same loss; the plain MSE is the f = 0 case, and f < 0 is refused.
    assert heatmap_ohkm_mse(_t(pred), _t(target), _t(weight), 5, 20).item() == pytest.approx(expected, rel=1e-10)
    assert heatmap_mse(_t(pred), _t(target), _t(weight)).item() < expected
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="foreground_weight must be a finite number >= 0"):
            heatmap_mse(_t(pred), _t(target), _t(weight), foreground_weight=bad)


def test_heatmap_mse_all_unweighted_is_zero_with_gradient() -> None:
    pred = torch.rand(2, 3, 4, 4, requires_grad=True)
    loss = heatmap_mse(pred, torch.rand(2, 3, 4, 4), torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None and torch.all(pred.grad == 0)


def test_heatmap_mse_rejects_bad_weight_shape() -> None:
    with pytest.raises(ValueError, match="weight"):
        heatmap_mse(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.ones(2, 4))


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_weighted_ce_matches_numpy_with_ignore() -> None:
    logits = RNG.normal(size=(2, 4, 5, 6))
    target = RNG.integers(0, 4, (2, 5, 6))
    target[0, :2] = 255
    weight = np.array([0.5, 1.0, 2.0, 3.0])
    logp = _np_log_softmax(logits)
    valid = target != 255
    t = np.where(valid, target, 0)
    nll = -np.take_along_axis(logp, t[:, None], 1)[:, 0]
    w = weight[t] * valid
    expected = (nll * w).sum() / w.sum()
    got = weighted_ce(_t(logits), _t(target), _t(weight))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # PyTorch's own weighted mean agrees where it is defined.
    ref = torch.nn.functional.cross_entropy(_t(logits), _t(target), weight=_t(weight), ignore_index=255)
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)


def test_weighted_ce_resizes_half_resolution_logits() -> None:
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 8, 8))
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    assert weighted_ce(logits, target, None).item() == pytest.approx(
        torch.nn.functional.cross_entropy(up, target).item(), rel=1e-6
    )


def test_weighted_ce_all_ignored_or_zero_weight_is_zero_not_nan() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    assert weighted_ce(logits, torch.full((1, 4, 4), 255), None).item() == 0.0
    only_class0 = torch.zeros(1, 4, 4, dtype=torch.long)
    loss = weighted_ce(logits, only_class0, torch.tensor([0.0, 1.0, 1.0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_weighted_ce_rejects_out_of_vocabulary_ids() -> None:
    with pytest.raises(ValueError, match="class ids"):
        weighted_ce(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 7), None)


@pytest.mark.parametrize(("lam", "offset"), [(0.0, 0.0), (0.5, 0.0), (1.0, 0.0), (0.5, 1.0), (1.0, 0.25)])
def test_silog_matches_numpy_per_image_mean(lam: float, offset: float) -> None:
    pred = RNG.uniform(0.05, 1.0, (3, 1, 6, 5))
    target = RNG.uniform(0.0, 1.0, (3, 1, 6, 5))
    target[0, 0, :2] = 0.0  # the person's nearest point: it drops out without an offset, counts with one
    mask = RNG.random((3, 6, 5)) > 0.3
    mask[2] = False  # an image with no valid pixel does not count
    losses = []
    for b in range(3):
        t, p = target[b, 0] + offset, pred[b, 0] + offset
        valid = mask[b] & (t > 1e-6)
        if not valid.any():
            continue
        d = np.log(t[valid]) - np.log(p[valid])
        losses.append(np.sqrt((d**2).mean() - lam * d.mean() ** 2))
    got = silog_loss(_t(pred), _t(target), _t(mask), lam=lam, offset=offset)
    assert got.item() == pytest.approx(np.mean(losses), rel=1e-9)


def test_silog_offset_stops_the_nearest_pixels_dominating() -> None:
    # Min-max normalised depth: one pixel just behind the nearest point (target 0.001), the rest spread over
    # [0.2, 1]. A prediction 0.05 off everywhere: without an offset that one pixel's log error (about 4) takes
    # most of the gradient (94% here); with offset 1 it takes a few percent, like the other 63 pixels.
    target = torch.linspace(0.2, 1.0, 64).reshape(1, 1, 8, 8)
    target[0, 0, 0, 0] = 0.001
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    pred = (target + 0.05).requires_grad_(True)
    silog_loss(pred, target, mask).backward()
    plain = pred.grad.abs().flatten()
    pred.grad = None
    silog_loss(pred, target, mask, offset=1.0).backward()
    shifted = pred.grad.abs().flatten()
    assert plain[0] > 0.5 * plain.sum()
    assert shifted[0] < 0.1 * shifted.sum()
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="offset must be a finite number >= 0"):
            silog_loss(pred, target, mask, offset=bad)


def test_silog_is_scale_invariant_in_its_mean_term() -> None:
    target = torch.rand(2, 1, 8, 8) + 0.1
    mask = torch.ones(2, 8, 8, dtype=torch.bool)
    # A prediction off by a constant factor loses only the sqrt(0.5) * |mean| part, not the full error.
    loss = silog_loss(target * 2.0, target, mask).item()
    assert loss == pytest.approx(np.sqrt(0.5) * np.log(2.0), rel=1e-5)
    # lam = 1: each image's own scale costs nothing, as in a scale-aligned evaluation; the shape error still does.
    scaled = target * torch.tensor([2.0, 0.25])[:, None, None, None]
    assert silog_loss(scaled, target, mask, lam=1.0).item() == pytest.approx(0.0, abs=1e-5)
    assert silog_loss(scaled + torch.rand_like(target), target, mask, lam=1.0).item() > 0.01
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="lam must be in"):
            silog_loss(target, target, mask, lam=bad)


def test_silog_empty_mask_is_zero_with_gradient() -> None:
    pred = torch.rand(2, 1, 4, 4, requires_grad=True)
    loss = silog_loss(pred, torch.rand(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_silog_exact_prediction_has_finite_gradient() -> None:
    target = torch.rand(1, 1, 4, 4) + 0.1
    pred = target.clone().requires_grad_(True)
    loss = silog_loss(pred, target, torch.ones(1, 4, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() < 1e-5 and torch.isfinite(pred.grad).all()


def test_ssi_matches_numpy_and_ignores_only_shift_and_positive_scale() -> None:
    pred = RNG.uniform(0.05, 1.0, (3, 1, 6, 5))
    target = RNG.uniform(0.0, 1.0, (3, 1, 6, 5))
    mask = RNG.random((3, 6, 5)) > 0.3
    mask[2] = False  # an image with no valid pixel does not count

    def normalised(x: np.ndarray) -> np.ndarray:
        centred = x - np.sort(x)[(len(x) - 1) // 2]  # the lower median, as torch's
        return centred / np.abs(centred).mean()

    expected = [np.abs(normalised(pred[b, 0][mask[b]]) - normalised(target[b, 0][mask[b]])).mean() for b in (0, 1)]
    assert ssi_loss(_t(pred), _t(target), _t(mask)).item() == pytest.approx(np.mean(expected), rel=1e-9)
    t, m = _t(target), _t(mask)
    assert ssi_loss(3.0 * t + 2.0, t, m).item() == pytest.approx(0.0, abs=1e-9)
    assert ssi_loss(-t, t, m).item() > 1.0  # near and far swapped: the sign is not forgiven
    flat = torch.ones_like(t, requires_grad=True)
    loss = ssi_loss(flat, t, m)
    loss.backward()
    assert loss.item() == pytest.approx(1.0, rel=1e-6) and torch.isfinite(flat.grad).all()
    empty = ssi_loss(flat, t, torch.zeros_like(m))
    assert empty.item() == 0.0


def test_gradient_matching_matches_numpy_and_forgives_only_shift_and_positive_scale() -> None:
    pred = RNG.uniform(0.05, 1.0, (3, 1, 9, 7))
    target = RNG.uniform(0.0, 1.0, (3, 1, 9, 7))
    mask = RNG.random((3, 9, 7)) > 0.25
    mask[2] = False  # an image with no valid pixel does not count

    def normalised(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        values = x[valid]
        centred = values - np.sort(values)[(len(values) - 1) // 2]  # the lower median, as torch's
        out = np.zeros_like(x)
        out[valid] = centred / np.abs(centred).mean()
        return out

    def reference(b: int) -> float:
        r = normalised(pred[b, 0], mask[b]) - normalised(target[b, 0], mask[b])
        total = 0.0
        for k in range(4):
            rk, vk = r[:: 2**k, :: 2**k], mask[b][:: 2**k, :: 2**k]
            steps = 0.0
            for i in range(rk.shape[0]):
                for j in range(rk.shape[1]):
                    if j + 1 < rk.shape[1] and vk[i, j] and vk[i, j + 1]:
                        steps += abs(rk[i, j + 1] - rk[i, j])
                    if i + 1 < rk.shape[0] and vk[i, j] and vk[i + 1, j]:
                        steps += abs(rk[i + 1, j] - rk[i, j])
            total += steps / max(vk.sum(), 1)
        return total

    got = gradient_matching_loss(_t(pred), _t(target), _t(mask)).item()
    assert got == pytest.approx(np.mean([reference(0), reference(1)]), rel=1e-9)
    t, m = _t(target), _t(mask)
    assert gradient_matching_loss(3.0 * t + 2.0, t, m).item() == pytest.approx(0.0, abs=1e-9)
    assert gradient_matching_loss(-t, t, m).item() > 1.0  # near and far swapped
    # The L1 term cannot tell a smooth error from a rough one of the same size; this term charges the rough one.
    rows = torch.arange(9, dtype=torch.float64)[:, None].expand(9, 7)
    smooth = gradient_matching_loss(t + 0.3 * rows / 8, t, m).item()
    rough = gradient_matching_loss(t + 0.3 * (rows % 2), t, m).item()
    assert 0 < smooth < rough
    flat = torch.ones_like(t, requires_grad=True)
    loss = gradient_matching_loss(flat, t, m)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(flat.grad).all()
    assert gradient_matching_loss(flat, t, torch.zeros_like(m)).item() == 0.0
    with pytest.raises(ValueError, match="scales must be >= 1"):
        gradient_matching_loss(t, t, m, scales=0)


def test_normal_loss_matches_numpy() -> None:
    pred = RNG.normal(size=(2, 3, 5, 4))
    target = RNG.normal(size=(2, 3, 5, 4))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    target[1, :, 0] = 0.0  # no surface
    mask = RNG.random((2, 5, 4)) > 0.2
    n_hat = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    valid = mask & (np.abs(target).sum(1) > 0)
    per_pixel = np.abs(target - n_hat).sum(1) + 1 - (target * n_hat).sum(1)
    expected = per_pixel[valid].mean()
    assert normal_loss(_t(pred), _t(target), _t(mask)).item() == pytest.approx(expected, rel=1e-10)


def test_normal_loss_perfect_is_zero_and_empty_is_zero() -> None:
    target = torch.nn.functional.normalize(torch.randn(1, 3, 4, 4), dim=1)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    assert normal_loss(target * 3.0, target, mask).item() == pytest.approx(0.0, abs=1e-6)
    pred = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = normal_loss(pred, target, torch.zeros(1, 4, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_normal_loss_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match="normal_loss"):
        normal_loss(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))


def test_losses_never_read_a_device_value_on_the_host() -> None:
    """On the meta device any host read (`bool(t)`, `float(t)`, `if t == 0`) raises: a stand-in for the GPU
    sync each would force on every step."""
    with torch.device("meta"):
        heat, weight = torch.rand(2, 5, 8, 6), torch.rand(2, 5)
        assert heatmap_mse(heat, heat, weight).shape == ()
        assert heatmap_ohkm_mse(heat, heat, weight, 3).shape == ()
        logits, classes = torch.rand(2, 4, 8, 6), torch.randint(0, 4, (2, 16, 12))
        assert weighted_ce(logits, classes, torch.rand(4)).shape == ()
        depth, valid = torch.rand(2, 1, 16, 12), torch.rand(2, 16, 12) > 0.5
        assert silog_loss(depth, depth, valid).shape == ()
        assert ssi_loss(depth, depth, valid).shape == ()
        assert gradient_matching_loss(depth, depth, valid).shape == ()
        assert normal_loss(torch.rand(2, 3, 8, 6), torch.rand(2, 3, 16, 12), valid).shape == ()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_predictions_give_fp32_losses(dtype: torch.dtype) -> None:
    """A bf16 model's heads feed the losses: each is computed in fp32 on the (rounded) predictions."""
    g = torch.Generator().manual_seed(0)
    heat, target, weight = torch.rand(2, 5, 8, 6, generator=g), torch.rand(2, 5, 8, 6, generator=g), torch.ones(2, 5)
    low = heat.to(dtype)
    got = heatmap_mse(low, target, weight)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(heatmap_mse(low.float(), target, weight).item())
    logits, classes = torch.randn(2, 4, 8, 6, generator=g).to(dtype), torch.randint(0, 4, (2, 8, 6), generator=g)
    assert weighted_ce(logits, classes, None).dtype == torch.float32
    depth, valid = torch.rand(2, 1, 8, 6, generator=g) + 0.5, torch.ones(2, 8, 6, dtype=torch.bool)
    assert silog_loss(depth.to(dtype), depth, valid).dtype == torch.float32
    assert ssi_loss(depth.to(dtype), depth, valid).dtype == torch.float32
    assert gradient_matching_loss(depth.to(dtype), depth, valid).dtype == torch.float32
    normals = torch.randn(2, 3, 8, 6, generator=g)
    assert normal_loss(normals.to(dtype), normals / normals.norm(dim=1, keepdim=True), valid).dtype == torch.float32


def test_depth_silog_lambda_and_log_offset_reach_the_training_loss() -> None:
    import os

    from train.finetune import task_losses
    from train.finetune_config import load_finetune_config
    from train.models.multitask import build_model

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "configs/finetune/depth_tiny.yaml")
    options = [(0.5, 0.0), (1.0, 0.0), (0.5, 1.0)]
    cfgs = {
        (lam, offset): load_finetune_config(
            path, ["data.shards=x", f"depth.silog_lambda={lam}", f"depth.log_offset={offset}"]
        )
        for lam, offset in options
    }
    default = load_finetune_config(path, ["data.shards=x"]).depth
    assert (default.silog_lambda, default.log_offset) == (0.5, 0.0)  # Sapiens' loss by default
    torch.manual_seed(0)
    model = build_model(cfgs[0.5, 0.0].model_spec()).eval()
    h, w = cfgs[0.5, 0.0].model.image_size
    batch = {
        "image": torch.randn(2, 3, h, w),
        "depth_index": torch.arange(2),
        "depth": torch.rand(2, h, w) + 0.5,
        "depth_mask": torch.rand(2, h, w) > 0.3,
    }
    with torch.no_grad():
        pred = model(batch["image"])["depth"]
        losses = {}
        for (lam, offset), cfg in cfgs.items():
            losses[lam, offset], _ = task_losses(model, batch, cfg, None)
            expected = silog_loss(pred, batch["depth"], batch["depth_mask"], lam=lam, offset=offset)
            assert losses[lam, offset].item() == pytest.approx(expected.item(), rel=1e-6)
        assert losses[1.0, 0.0] < losses[0.5, 0.0]
        ssi, _ = task_losses(model, batch, load_finetune_config(path, ["data.shards=x", "depth.loss=ssi"]), None)
        assert ssi.item() == pytest.approx(ssi_loss(pred, batch["depth"], batch["depth_mask"]).item(), rel=1e-6)
        overrides = ["data.shards=x", "depth.loss=ssi", "depth.grad_weight=0.5"]
        both, _ = task_losses(model, batch, load_finetune_config(path, overrides), None)
        matching = gradient_matching_loss(pred, batch["depth"], batch["depth_mask"])
        assert both.item() == pytest.approx(ssi.item() + 0.5 * matching.item(), rel=1e-6) and matching.item() > 0
        assert losses[0.5, 1.0] != pytest.approx(losses[0.5, 0.0].item(), rel=1e-3)
