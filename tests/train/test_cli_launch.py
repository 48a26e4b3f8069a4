"""`hv train ...` end to end: two CPU processes through the deepspeed launcher at ZeRO-2 and ZeRO-3,
export-weights consolidation, and bad input failing at start-up with a message naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from train.distributed import SHM_DIR, SHM_PREFIX
from train.export import load_vit

HV = [sys.executable, "-c", "from humanvision_cli import main; main()"]
TINY = "configs/pretrain/tiny.yaml"


def hv(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    return subprocess.run([*HV, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_cpu_processes_train_checkpoint_and_export(tmp_path, shards: str, stage: int) -> None:
    run = str(tmp_path / "run")
    overrides = [f"data.shards={shards}", "steps=4", "batch_size=4", f"zero_stage={stage}", "ckpt_every=2"]
    shm_before = set(SHM_DIR.glob(f"{SHM_PREFIX}*"))
    done = hv("train", "pretrain", "--config", TINY, "--out", run, "--cpus", "2", "progress=false", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    # DeepSpeed's CPU all-reduce buffers (69 MB of RAM per rank) are gone with the ranks
    assert set(SHM_DIR.glob(f"{SHM_PREFIX}*")) <= shm_before
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["images_per_s"] > 0 for r in rows)
    ckpt = os.path.join(run, "checkpoints", "step_00000004")
    shards_written = sorted(n for n in os.listdir(ckpt) if "optim_states" in n)
    assert len(shards_written) == 2  # one optimizer partition per rank
    with open(os.path.join(run, "deepspeed_config.json")) as f:
        assert json.load(f)["zero_optimization"]["stage"] == stage

    exported = hv("train", "export-weights", run, "--part", "encoder")
    assert exported.returncode == 0, exported.stderr[-2000:]
    vit = load_vit(os.path.join(run, "encoder.safetensors")).eval()
    with torch.no_grad():
        out = vit.forward_features(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 192, 4, 4) and torch.isfinite(out).all()


@pytest.mark.slow
def test_in_process_run_with_bad_shards_reports_them(tmp_path, broken_shards) -> None:
    pattern, _ = broken_shards
    run = str(tmp_path / "run")
    args = ["--in-process", f"data.shards={pattern}", "steps=2", "batch_size=2", "data.num_workers=0", "progress=false"]
    done = hv("train", "pretrain", "--config", TINY, "--out", run, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 bad samples skipped" in done.stdout
    assert os.path.isdir(os.path.join(run, "bad_samples"))


def test_bad_input_fails_before_launching(tmp_path, shards: str) -> None:
    run = str(tmp_path / "run")
    cases = [
        (["stepz=3", f"data.shards={shards}"], "stepz"),
        ([f"data.shards={tmp_path}/nothing-*.tar"], "no shards match"),
        (["model.arch=vit_g", f"data.shards={shards}"], "unknown"),
    ]
    for overrides, message in cases:
        done = hv("train", "pretrain", "--config", TINY, "--out", run, "--cpus", "2", *overrides)
        assert done.returncode == 2 and message in done.stderr, (overrides, done.stderr)
    assert not os.path.exists(os.path.join(run, "checkpoints"))
    done = hv("train", "export-weights", str(tmp_path / "no-run"))
    assert done.returncode == 2 and "no checkpoints" in done.stderr


def test_archs_lists_every_arch_with_counts() -> None:
    done = hv("train", "archs", "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["arch"]: r for r in json.loads(done.stdout)}
    assert set(rows) == {"tiny", "small", "sapiens_0.3b", "sapiens_0.6b", "sapiens_1b", "sapiens_2b"}
    assert abs(rows["sapiens_1b"]["mae_params"] - 1.17e9) / 1.17e9 < 0.03
    assert rows["sapiens_2b"]["gflops"] > rows["sapiens_0.3b"]["gflops"] > 0
