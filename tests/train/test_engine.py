"""The DeepSpeed engine in one process: crash + resume repeats the uninterrupted run, checkpoints are
pruned, and exported weights (ZeRO 0 to 3, loaded weights-only) load strictly into a plain model with equal outputs."""

from __future__ import annotations

import json

import pytest
import torch

from train.config import OptimConfig, TrainConfig
from train.engine import fit
from train.export import consolidated_state_dict, export_weights, load_vit, read_weights
from train.models.mae import MAE, DecoderConfig
from train.models.vit import build_vit


def tiny_mae() -> MAE:
    return MAE(build_vit("tiny", img_size=(32, 32), depth=2), DecoderConfig(dim=32, depth=1, num_heads=4))


def make_batches(rank: int, world: int, seed: int, start: int):
    images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    i = start
    while True:
        yield {"images": images[(i * 4) % 32 : (i * 4) % 32 + 4]}
        i += 1


def make_batches_like_a_dataloader(rank: int, world: int, seed: int, start: int):
    """As `make_batches`, but the first next() draws from the global torch RNG, as a DataLoader with workers
    does for their base seed: on a resumed run that first next() falls in a later step."""
    torch.empty((), dtype=torch.int64).random_()
    yield from make_batches(rank, world, seed, start)


def mae_loss(engine, batch):
    loss, _, mask = engine(batch["images"])
    return loss, {"masked": float(mask.mean())}


def config(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=4, log_every=1, ckpt_every=3, progress=False, optim=OptimConfig(lr=2e-3))
    base.update(kw)
    return TrainConfig(**base)


def rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
@pytest.mark.parametrize("batches", [make_batches, make_batches_like_a_dataloader])
def test_resume_after_a_crash_repeats_the_uninterrupted_run(tmp_path, batches) -> None:
    straight = fit(tiny_mae, mae_loss, batches, config(zero_stage=1), str(tmp_path / "a"))
    expected = rows(straight.metrics)
    assert [r["step"] for r in expected] == list(range(1, 9))
    assert {"loss", "lr", "images_per_s", "step_time_s", "masked"} <= set(expected[0])
    assert expected[0]["masked"] == pytest.approx(0.75)

    calls = {"n": 0}

    def crashing_loss(engine, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # dies during step 5, after the step-3 checkpoint
            raise RuntimeError("killed")
        return mae_loss(engine, batch)

    out = str(tmp_path / "b")
    with pytest.raises(RuntimeError, match="killed"):
        fit(tiny_mae, crashing_loss, batches, config(zero_stage=1), out)
    resumed = fit(tiny_mae, mae_loss, batches, config(zero_stage=1), out)
    got = rows(resumed.metrics)
    assert [r["step"] for r in got] == list(range(1, 9))  # the crashed run's step-4 row is replaced
    for a, b in zip(expected, got, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
        assert a["lr"] == b["lr"]
    # keep_checkpoints=2: steps 6 and 8 remain.
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000008"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_exported_weights_load_strictly_and_match(tmp_path, stage: int) -> None:
    import deepspeed

    run = str(tmp_path / f"z{stage}")
    result = fit(tiny_mae, mae_loss, make_batches, config(steps=3, zero_stage=stage), run)
    x = torch.randn(2, 3, 32, 32)
    model = result.model
    model.eval()
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # ZeRO-3's hooks gather (and release) the weights around each module's forward
        expected = model.encoder.forward_features(x)
    state = consolidated_state_dict(run)
    assert set(state) == set(trained)
    for k, v in state.items():
        torch.testing.assert_close(v, trained[k].float(), msg=k)

    # The run's config is needed to rebuild the model: write the one this test used.
    (tmp_path / f"z{stage}" / "config.yaml").write_text("model:\n  arch: tiny\n  img_size: [32, 32]\n  depth: 2\n")
    path = export_weights(run, part="encoder")
    vit = load_vit(path).eval()  # strict load inside
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), expected)
    full = tiny_mae()
    full.load_state_dict(read_weights(export_weights(run))[0], strict=True)


def test_export_errors_name_the_run(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        export_weights(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="latest"):
        export_weights(str(tmp_path))
    (tmp_path / "checkpoints" / "latest").write_text("step_00000009")
    with pytest.raises(FileNotFoundError, match="step_00000009"):
        export_weights(str(tmp_path))
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="safetensors"):
        read_weights(str(bad))
