"""Configs (load, overrides, errors), DeepSpeed config merging, parameter groups and LR schedules."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from train.config import ConfigError, OptimConfig, Precision, Schedule, TrainConfig, load_config, save_config
from train.engine import deepspeed_config, lr_schedule, param_groups, peak_lr
from train.models.mae import MAE, DecoderConfig
from train.models.vit import build_vit
from train.pretrain import PretrainConfig

TINY = "configs/pretrain/tiny.yaml"


def test_yaml_then_overrides_and_saved_config_round_trips(tmp_path) -> None:
    cfg = load_config(PretrainConfig, TINY, ["steps=7", "data.shards=a/*.tar", "zero_stage=3", "optim.schedule=poly"])
    assert (cfg.steps, cfg.zero_stage, cfg.model.arch, cfg.model.img_size) == (7, 3, "tiny", [64, 64])
    assert cfg.optim.schedule == Schedule.poly and cfg.precision == Precision.fp32
    path = str(tmp_path / "config.yaml")
    save_config(cfg, path)
    assert load_config(PretrainConfig, path) == cfg


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["stpes=3"], "stpes"),
        (["model.depht=2"], "depht"),
        (["steps=many"], "steps"),
        (["steps"], "key=value"),
        (["steps=0"], "steps must be"),
        (["zero_stage=4"], "zero_stage"),
        (["model.arch=vit_huge"], "sapiens_0.3b"),
        (["model.img_size=[60,64]"], "multiple of 16"),
        (["data.shards="], "data.shards"),
        (["optim.betas=[0.9]"], "betas"),
        (["optim.schedule=linear"], "schedule"),
        (["deepspeed_config=/nonexistent.json"], "does not exist"),
    ],
)
def test_bad_configs_fail_at_start_naming_the_key(overrides: list[str], match: str) -> None:
    base = ["data.shards=x/*.tar"]
    with pytest.raises(ConfigError, match=match):
        load_config(PretrainConfig, TINY, base + overrides)


def test_bad_yaml_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {arch: tiny\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(PretrainConfig, str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("modle:\n  arch: tiny\n")
    with pytest.raises(ConfigError, match="modle"):
        load_config(PretrainConfig, str(unknown))


def test_deepspeed_config_file_block_and_typed_fields(tmp_path) -> None:
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 1, "overlap_comm": True}, "train_batch_size": 99}))
    cfg = TrainConfig(batch_size=3, grad_accum=2, zero_stage=2, deepspeed_config=str(ds))
    cfg.deepspeed = {"zero_optimization": {"reduce_bucket_size": 1000}}
    merged, notes = deepspeed_config(cfg, bf16=False)
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 1000}
    assert merged["train_micro_batch_size_per_gpu"] == 3 and merged["gradient_accumulation_steps"] == 2
    assert "train_batch_size" not in merged and merged["bf16"] == {"enabled": False}
    assert any("zero_optimization.stage" in n for n in notes)


def test_param_groups_skip_decay_and_apply_layer_decay() -> None:
    mae = MAE(build_vit("tiny", img_size=(32, 32), depth=2), DecoderConfig(dim=32, depth=1, num_heads=4))
    groups = param_groups(mae, OptimConfig(weight_decay=0.05, layer_decay=0.5))
    names = {id(p): n for n, p in mae.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert len(by_name) == len([p for p in mae.parameters() if p.requires_grad])
    assert "encoder.pos_embed" not in by_name  # fixed sin-cos while pretraining: in no group
    for name in ("mask_token", "encoder.norm.weight", "encoder.blocks.0.attn.qkv.bias"):
        assert by_name[name]["weight_decay"] == 0.0, name
    vit = build_vit("tiny", img_size=(32, 32), depth=1)  # a backbone being fine-tuned learns it, without decay
    vit_groups = param_groups(vit, OptimConfig(weight_decay=0.05))
    assert any(p is vit.pos_embed and g["weight_decay"] == 0.0 for g in vit_groups for p in g["params"])
    assert by_name["encoder.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    # 4 layer ids (embeddings, 2 blocks, norm); the decoder counts as the last layer: full LR.
    assert by_name["encoder.patch_embed.proj.weight"]["lr_scale"] == 0.5**3
    assert by_name["encoder.blocks.1.mlp.fc1.weight"]["lr_scale"] == 0.5
    assert by_name["decoder_pred.weight"]["lr_scale"] == 1.0
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(torch.nn.Linear(2, 2), OptimConfig(layer_decay=0.9))


def test_schedules_warmup_cosine_poly_and_lr_scaling() -> None:
    optim = OptimConfig(warmup_steps=4, warmup_start_factor=0.25, min_lr=0.1)
    lrs = lr_schedule(optim, 20, 1.0)
    assert lrs.shape == (20,) and lrs[0] == 0.25 and lrs[4] == 1.0
    assert all(a < b for a, b in itertools.pairwise(lrs[:5]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:])) and lrs[-1] > 0.1
    poly = lr_schedule(OptimConfig(schedule=Schedule.poly, poly_power=1.0), 10, 1.0)
    assert poly[0] == 1.0 and poly[5] == pytest.approx(0.5)
    cfg = TrainConfig(batch_size=32, grad_accum=2)
    assert peak_lr(cfg, world_size=4) == pytest.approx(1.5e-4 * 256 / 256)
    cfg.optim.lr = 3e-4
    assert peak_lr(cfg, world_size=4) == 3e-4
