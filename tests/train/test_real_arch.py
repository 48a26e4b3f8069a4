"""The real `sapiens_0.3b` (full width and depth, gradient checkpointing, bf16), not only the tiny arch: one MAE
step and one pose fine-tuning step at a reduced resolution, two CPU processes at ZeRO-3 through the real
`hv train` commands and the deepspeed launcher; the exported fp32 weights load strictly into a plain model.

Peak memory per process (the largest rank's, from metrics.jsonl) is printed: run with `-s` to see it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = (128, 96)  # H x W: an 8 x 6 token grid (the backbone is full width and depth)


def hv(*argv: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "humanvision_cli", *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


def last_row(run: str) -> dict:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f][-1]


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> str:
    """Four 256x192 synthetic people with coco17 poses (the fine-tuning tests' stick figures)."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "finetune"))
    from ft_synthetic import person_sample, write_shards

    folder = tmp_path_factory.mktemp("people")
    write_shards(str(folder / "people"), [person_sample(i, *SIZE) for i in range(4)])
    return str(folder)


COMMON = ["zero_stage=3", "steps=1", "optim.warmup_steps=0", "batch_size=1", "data.num_workers=0"]
COMMON += ["progress=false", "tensorboard=false", "log_every=1"]


@pytest.mark.slow
def test_sapiens_03b_mae_step_at_zero3_bf16_in_two_processes(people: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from train.models.vit import build_vit

    run = str(tmp_path / "mae")
    done = hv(
        "train", "pretrain", "--config", os.path.join(ROOT, "configs/pretrain/sapiens_0.3b.yaml"), "--out", run,
        "--cpus", "2", f"data.shards={people}", f"model.img_size=[{SIZE[0]},{SIZE[1]}]", *COMMON,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    row = last_row(run)
    print(f"\nsapiens_0.3b MAE, ZeRO-3 bf16, 2 CPU processes: peak {row['peak_mem_mb']:.0f} MiB per process")
    assert np.isfinite(row["loss"]) and row["loss"] > 0
    assert hv("train", "export-weights", run, "--part", "encoder").returncode == 0
    state = load_file(os.path.join(run, "encoder.safetensors"))
    plain = build_vit("sapiens_0.3b", img_size=SIZE)
    plain.load_state_dict(state, strict=True)  # every backbone tensor, full size, fp32
    assert all(v.dtype == torch.float32 for v in state.values())
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in plain.parameters()) > 300e6


@pytest.mark.slow
def test_sapiens_03b_pose_finetune_step_at_zero3_bf16_in_two_processes(people: str, tmp_path: Path) -> None:
    from train.predictor import Predictor

    run = str(tmp_path / "pose")
    done = hv(
        "train", "finetune", "--config", os.path.join(ROOT, "configs/finetune/pose_sapiens_0.3b.yaml"), "--out", run,
        "--cpus", "2", f"data.shards={people}", f"model.image_size=[{SIZE[0]},{SIZE[1]}]", *COMMON,
        "model.head_channels=64",  # the backbone is full size; the 768-channel deconv head alone doubles the step
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    row = last_row(run)
    print(f"\nsapiens_0.3b pose fine-tune, ZeRO-3 bf16, 2 CPU processes: peak {row['peak_mem_mb']:.0f} MiB per process")
    assert np.isfinite(row["loss_pose"]) and row["rows_pose"] == 1
    predictor = Predictor(run)  # the consolidated fp32 export, loaded strictly into a plain model
    assert predictor.tasks == ("pose",)
    params = sum(p.numel() for p in predictor.model.backbone.parameters())
    assert params > 300e6 and all(p.dtype == torch.float32 for p in predictor.model.parameters())
