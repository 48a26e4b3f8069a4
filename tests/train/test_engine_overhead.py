"""The engine's per-step savings keep training exact: DeepSpeed as `fit` builds it (device settings, fused
AdamW, the skipped all-reduce in a world of one) takes the same steps as a plain PyTorch loop, and the loss
sums kept on the device log the same figures as per-step floats did.

    .venv/bin/pytest tests/train/test_engine_overhead.py
"""

from __future__ import annotations

import json

import pytest
import torch

from train.config import OptimConfig, TrainConfig
from train.engine import deepspeed_config, fit, for_device, init_distributed, make_optimizer, tune_engine
from train.models.mae import MAE, DecoderConfig
from train.models.vit import build_vit

CPU = torch.device("cpu")


def tiny_mae() -> MAE:
    torch.manual_seed(0)
    return MAE(build_vit("tiny", img_size=(32, 32), depth=2), DecoderConfig(dim=32, depth=1, num_heads=4))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(4, 3, 32, 32, generator=g), torch.rand(4, 4, generator=g)


def rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------- device settings


@pytest.mark.parametrize("stage", [1, 2])
def test_cpu_zero12_drops_the_contiguous_bucket_unless_the_user_set_it(stage: int) -> None:
    ds, _ = deepspeed_config(TrainConfig(zero_stage=stage), bf16=False)
    tuned = for_device(ds, CPU)
    assert tuned["zero_optimization"] == {"stage": stage, "contiguous_gradients": False}
    assert "contiguous_gradients" not in ds["zero_optimization"]  # the input is not modified

    user = TrainConfig(zero_stage=stage, deepspeed={"zero_optimization": {"contiguous_gradients": True}})
    ds, _ = deepspeed_config(user, bf16=False)
    assert for_device(ds, CPU)["zero_optimization"]["contiguous_gradients"] is True


@pytest.mark.parametrize(("stage", "device"), [(0, "cpu"), (3, "cpu"), (1, "cuda"), (2, "cuda")])
def test_other_stages_and_gpus_keep_deepspeed_defaults(stage: int, device: str) -> None:
    ds, _ = deepspeed_config(TrainConfig(zero_stage=stage), bf16=False)
    assert for_device(ds, torch.device(device)) == ds


def test_optimizer_is_fused_and_keeps_group_settings() -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))
    groups = [{"params": [a], "weight_decay": 0.0, "lr_scale": 0.5}, {"params": [b], "weight_decay": 0.05}]
    opt = make_optimizer(groups, TrainConfig(optim=OptimConfig(betas=[0.8, 0.9], eps=1e-6)), 1e-3, CPU)
    assert opt.defaults["fused"] is True
    assert [g["lr_scale"] for g in opt.param_groups[:1]] == [0.5]
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[1]["weight_decay"] == 0.05
    # Devices without torch's fused kernel get the plain loop rather than an error at the first step.
    assert make_optimizer(groups, TrainConfig(), 1e-3, torch.device("xpu")).defaults["fused"] is False


# ------------------------------------------------------------------------- same steps as a plain PyTorch loop


def plain_weights(steps: int, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    model = tiny_mae()
    opt = make_optimizer([{"params": list(model.parameters()), "weight_decay": 0.05}], cfg, 1e-2, CPU)
    images, noise = batch()
    for _ in range(steps):
        loss, _, _ = model(images, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_tuned_engine_takes_the_same_steps_as_a_plain_loop(stage: int) -> None:
    import deepspeed

    _, world, _ = init_distributed()
    # Clipping acts on every step. A large eps makes Adam's step nearly linear in the gradient, so a wrong
    # gradient scale shows, and keeps it from blowing rounding noise up to full steps where the exact gradient
    # is zero (attention key biases: softmax ignores a shift).
    optim = OptimConfig(clip_grad=0.05, eps=1e-3)
    cfg = TrainConfig(batch_size=4, zero_stage=stage, optim=optim)
    ds = for_device(deepspeed_config(cfg, bf16=False)[0], CPU)
    model = tiny_mae()
    opt = make_optimizer([{"params": list(model.parameters()), "weight_decay": 0.05}], cfg, 1e-2, CPU)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    tune_engine(engine, world)
    assert engine.enable_backward_allreduce is (stage != 0 or world != 1)

    images, noise = batch()
    for _ in range(4):
        loss, _, _ = engine(images, noise)
        engine.backward(loss)
        engine.step()
    expected = plain_weights(4, cfg)
    got = engine.module.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # The check can fail: clipping at half the norm moves the weights far beyond the tolerance.
    half = plain_weights(4, TrainConfig(optim=OptimConfig(clip_grad=0.025, eps=1e-3)))
    assert max((half[k] - v).abs().max().item() for k, v in expected.items()) > 1e-4


def test_allreduce_kept_where_it_is_not_a_no_op() -> None:
    import deepspeed

    init_distributed()
    ds = deepspeed_config(TrainConfig(batch_size=4, zero_stage=0), bf16=False)[0]
    model = tiny_mae()
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=ds)
    tune_engine(engine, world=2)
    assert engine.enable_backward_allreduce is True


# ---------------------------------------------------------------------------------------- logged figures


def make_batches(rank: int, world: int, seed: int, start: int):
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    i = start
    while True:
        yield {"images": images[(i * 4) % 16 : (i * 4) % 16 + 4]}
        i += 1


def test_logged_figures_are_window_means_of_tensor_and_float_logs(tmp_path, capsys) -> None:
    seen: list[tuple[float, float]] = []

    def loss_fn(engine, b):
        loss, _, mask = engine(b["images"])
        seen.append((float(loss.detach()), float(b["images"].mean())))
        # A tensor figure (stays on the device until the log step) and a plain float one.
        return loss, {"pixel_mean": b["images"].mean(), "masked": float(mask.mean())}

    cfg = TrainConfig(
        steps=6, batch_size=4, grad_accum=2, zero_stage=1, log_every=3, ckpt_every=0, tensorboard=False, seed=5
    )
    result = fit(tiny_mae, loss_fn, make_batches, cfg, str(tmp_path / "run"))
    got = rows(result.metrics)
    assert [r["step"] for r in got] == [3, 6]
    assert len(seen) == 12  # 6 steps x 2 micro-batches
    for row, window in zip(got, (seen[:6], seen[6:]), strict=True):
        assert row["loss"] == pytest.approx(sum(x for x, _ in window) / 6, rel=1e-9, abs=1e-12)
        assert row["pixel_mean"] == pytest.approx(sum(m for _, m in window) / 6, rel=1e-6, abs=1e-9)
        assert row["masked"] == pytest.approx(0.75)
        assert row["grad_norm"] > 0 and {"lr", "images_per_s", "step_time_s"} <= set(row)
    assert result.last_loss == got[-1]["loss"]
    assert "loss=" in capsys.readouterr().err  # the progress bar shows the last logged loss


@pytest.mark.parametrize(
    ("figure", "match"),
    [(torch.ones(3), r"'bad' must be a scalar, got a tensor of shape \(3,\)"), ("high", "'bad' must be a number")],
)
def test_a_figure_that_is_not_a_scalar_fails_naming_it(tmp_path, figure, match: str) -> None:
    def loss_fn(engine, b):
        loss, _, _ = engine(b["images"])
        return loss, {"bad": figure}

    cfg = TrainConfig(steps=2, batch_size=4, log_every=1, ckpt_every=0, tensorboard=False, progress=False)
    with pytest.raises(ValueError, match=match):
        fit(tiny_mae, loss_fn, make_batches, cfg, str(tmp_path / "run"))
