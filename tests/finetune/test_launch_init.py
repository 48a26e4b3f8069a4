"""`hv train finetune` from a real MAE pretraining export, in one process and in two CPU processes at ZeRO-2
through the deepspeed launcher; start-up errors for bad commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ft_synthetic import person_sample, write_shards

import humanvision_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hv(*argv: str) -> int:
    """Run an `hv` command in this process; its exit code."""
    args = humanvision_cli.build_parser().parse_args(list(argv))
    return int(args.func(args) or 0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("people")
    write_shards(str(folder / "people"), [person_sample(i, 64, 48) for i in range(6)], max_count=3)
    return str(folder)


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, shards) -> str:
    """A real MAE pretraining run (tiny, 2 blocks, 64x64) with its exported weights."""
    out = str(tmp_path_factory.mktemp("mae"))
    code = hv(
        "train", "pretrain", "--config", os.path.join(ROOT, "configs/pretrain/tiny.yaml"), "--out", out,
        "--in-process", f"data.shards={shards}", "steps=2", "data.num_workers=0", "progress=false",
        "tensorboard=false",
    )  # fmt: skip
    assert code == 0
    assert hv("train", "export-weights", out) == 0
    return out


def tiny_model(depth: int = 2):
    from train.finetune_config import load_finetune_config
    from train.models.multitask import build_model

    cfg = load_finetune_config(
        os.path.join(ROOT, "configs/finetune/multi_tiny.yaml"), [f"model.depth={depth}", "model.image_size=[64,48]"]
    )
    return build_model(cfg.model_spec())


@pytest.mark.slow
def test_init_from_pretrain_export_loads_every_backbone_weight(pretrain_run) -> None:
    from train.export import read_weights
    from train.models.weights import load_init

    model = tiny_model()
    report = load_init(model, os.path.join(pretrain_run, "weights.safetensors"))
    assert report.loaded == sorted(model.backbone.state_dict())
    assert report.missing == [] and report.unexpected == []
    assert report.resized == ["pos_embed"]  # 64x64 pretraining grid -> 64x48 fine-tuning grid
    assert report.ignored and all(k.startswith(("decoder", "mask_token")) for k in report.ignored)
    stored, _ = read_weights(os.path.join(pretrain_run, "weights.safetensors"))
    for name, value in model.backbone.state_dict().items():
        if name != "pos_embed":
            torch.testing.assert_close(value, stored[f"encoder.{name}"], rtol=0, atol=0)
    # A run folder works too, and so does one never exported (consolidated from its checkpoint).
    assert load_init(tiny_model(), pretrain_run).missing == []
    os.remove(os.path.join(pretrain_run, "weights.safetensors"))
    try:
        assert load_init(tiny_model(), pretrain_run).loaded == report.loaded
    finally:
        assert hv("train", "export-weights", pretrain_run) == 0


@pytest.mark.slow
def test_init_with_the_wrong_depth_names_the_source_arch(pretrain_run) -> None:
    from train.models.weights import load_init

    with pytest.raises(ValueError, match=r"missing \['blocks.2.*arch=tiny depth=2"):
        load_init(tiny_model(depth=4), pretrain_run)


@pytest.mark.slow
def test_two_cpu_processes_at_zero2_from_pretrain(tmp_path, shards, pretrain_run) -> None:
    """The launcher path: two gloo ranks, ZeRO-2, a seg run initialised from the MAE export; the export at the
    end loads into a Predictor."""
    from train.predictor import Predictor

    out = str(tmp_path / "run")
    cmd = [
        sys.executable, "-m", "humanvision_cli", "train", "finetune", "--task", "seg",
        "--config", "configs/finetune/seg_tiny.yaml", "--out", out, "--init", pretrain_run, "--cpus", "2",
        f"data.shards={shards}", "zero_stage=2", "steps=3", "optim.warmup_steps=1", "log_every=1", "model.depth=2",
        "model.image_size=[64,48]", "model.head_channels=16", "batch_size=2", "progress=false", "tensorboard=false",
    ]  # fmt: skip
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "init from" in proc.stderr and "0 missing" in proc.stderr
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss_seg"]) for r in rows)
    with open(os.path.join(out, "deepspeed_config.json")) as f:
        assert json.load(f)["zero_optimization"]["stage"] == 2
    with open(os.path.join(out, "data_report.json")) as f:
        report = json.load(f)
    assert report["rows"]["seg"] > 0 and report["bad_samples"] == []
    predictor = Predictor(out)
    assert predictor.tasks == ("seg",)
    pred = predictor.dense([person_sample(0, 64, 48).image])[0]
    assert pred.seg.shape == (64, 48) and pred.seg.max() < 28


@pytest.mark.parametrize(
    "extra,message",
    [
        (["bogus=1"], "bogus"),
        (["model.arch=huge"], "model.arch"),
        (["model.image_size=[60,48]"], "multiple of 16"),
        (["pose.keypoint_set=elbows"], "unknown keypoint subset"),
        (["seg.vocabulary=pascal"], "expected one of [goliath28, lip20, sapiens2_29]"),
        (["data.shards=''"], "data.shards is empty"),
        (["data.shards=/nonexistent/*.tar"], "no shards match"),
        (["--init", "/nonexistent/run"], "no such weights file"),
        (["tasks=[pose,keypoints]"], "tasks"),
    ],
)
def test_bad_commands_fail_at_start_up(tmp_path, shards, capsys, extra, message) -> None:
    argv = ["train", "finetune", "--config", os.path.join(ROOT, "configs/finetune/pose_tiny.yaml")]
    argv += ["--out", str(tmp_path / "run"), "--in-process"]
    overrides = [e for e in extra if "=" in e and not e.startswith("--")]
    flags = [e for e in extra if e not in overrides]
    if not any(o.startswith("data.shards=") for o in overrides):
        overrides.append(f"data.shards={shards}")
    assert hv(*argv, *flags, *overrides) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_missing_config_file_is_named(tmp_path, capsys) -> None:
    assert hv("train", "finetune", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_multi_task_at_zero3_with_heads_missing_rows(tmp_path) -> None:
    """ZeRO-3 builds the model inside deepspeed.zero.Init; batches that lack a task's rows still step (the
    absent head runs on one row, times zero) and the export consolidates the partitioned weights."""
    from data_engine.sample import Sample
    from train.predictor import Predictor

    people = [person_sample(i, 64, 48) for i in range(4)]
    only_pose = [Sample(key=s.key, image=s.image, meta=dict(s.meta), pose=s.pose) for s in people[:2]]
    only_seg = [Sample(key=s.key, image=s.image, meta=dict(s.meta), seg=s.seg, mask=s.mask) for s in people[2:]]
    write_shards(str(tmp_path / "mixed"), only_pose + only_seg, max_count=2)
    out = str(tmp_path / "run")
    code = hv(
        "train", "finetune", "--task", "multi", "--config", os.path.join(ROOT, "configs/finetune/multi_tiny.yaml"),
        "--out", out, "--in-process", f"data.shards={tmp_path}", "tasks=[pose,seg,depth]", "zero_stage=3",
        "steps=3", "optim.warmup_steps=1", "batch_size=2", "data.shuffle_buffer=1", "log_every=1", "model.depth=2",
        "model.image_size=[64,48]", "model.head_channels=8", "progress=false", "tensorboard=false",
    )  # fmt: skip
    assert code == 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 3 and all(np.isfinite(r["loss"]) for r in rows)
    assert all(r["rows_depth"] == 0 and r["loss_depth"] == 0 for r in rows)  # no sample has depth
    assert any(r["rows_pose"] == 0 for r in rows) or any(r["rows_seg"] == 0 for r in rows)
    assert Predictor(out).tasks == ("pose", "seg", "depth")
    # zero.Init's process-wide replacement of F.linear is undone after training (a TorchScript export of the
    # model in this process would fail on DeepSpeed's autograd function otherwise).
    assert torch.nn.functional.linear is torch._C._nn.linear
