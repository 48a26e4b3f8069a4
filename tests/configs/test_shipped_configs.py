"""Every shipped config is a tested config: each YAML under configs/ runs its own command as a user would, and
each DeepSpeed JSON under configs/deepspeed/ trains, with only sizes shrunk.

Training configs train 2 steps through `hv train pretrain|finetune --config FILE --in-process` in their own
precision (bf16 runs on CPU), ZeRO stage, DeepSpeed JSON, augmentation and schedule; the overrides are the arch
(`tiny`, 2 blocks), the image size, the MAE decoder / head widths, the run length and loader processes (at most
2 on a 2-core machine). The other configs run their command on tiny data. A config added later is picked up
by the globs below; one in a folder this file does not know fails `test_every_config_folder_has_a_runner`.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ft_synthetic import person_sample, write_shards
from omegaconf import OmegaConf

import humanvision_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YAMLS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
JSONS = sorted(glob.glob(os.path.join(ROOT, "configs", "deepspeed", "*.json")))
KNOWN_FOLDERS = {"pretrain", "finetune", "curate", "synth", "eval", "annotation"}
IMAGE_HW = (64, 48)
MULTI_TINY = os.path.join(ROOT, "configs/finetune/multi_tiny.yaml")


def folder_of(path: str) -> str:
    return os.path.relpath(path, os.path.join(ROOT, "configs")).split(os.sep)[0]


def configs_in(folder: str) -> list[str]:
    return [p for p in YAMLS if folder_of(p) == folder]


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def hv(*argv: str) -> int:
    """An `hv` command in this process (as `--in-process` training runs); its exit code."""
    args = humanvision_cli.build_parser().parse_args(list(argv))
    return int(args.func(args) or 0)


def hv_subprocess(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """An `hv` command in its own process (jobs that start Ray or render)."""
    return subprocess.run(
        [sys.executable, "-m", "humanvision_cli", *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def shipped(path: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path)) or {}


def loader_workers(raw: dict) -> str:
    """data.num_workers as shipped, capped at 2 (this machine's cores): the loader-process path still runs."""
    return f"data.num_workers={min(int(raw.get('data', {}).get('num_workers', 0)), 2)}"


def metrics_of(run: str) -> list[dict]:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def check_trained_as_shipped(run: str, raw: dict, steps: int = 2) -> None:
    """The run trained `steps` finite steps in the config's own precision and ZeRO stage."""
    rows = metrics_of(run)
    assert [r["step"] for r in rows][-1] == steps and all(np.isfinite(r["loss"]) for r in rows), rows
    with open(os.path.join(run, "deepspeed_config.json")) as f:
        ds = json.load(f)
    assert ds["bf16"]["enabled"] is (raw.get("precision") == "bf16")
    assert ds["zero_optimization"]["stage"] == raw.get("zero_stage", 0)


# The shrink every training run gets: 2 blocks, small images and heads, 2 steps, no progress bar or TensorBoard.
SHRUNK = ["model.depth=2", "steps=2", "optim.warmup_steps=1", "batch_size=2", "progress=false", "tensorboard=false"]
FINETUNE_SIZE = [f"model.image_size=[{IMAGE_HW[0]},{IMAGE_HW[1]}]", "model.head_channels=8"]
MAE_SIZE = ["model.img_size=[64,64]", "model.decoder_dim=64", "model.decoder_depth=1", "model.decoder_heads=4"]


def train(stage: str, config: str, run: str, shards: str, *overrides: str) -> int:
    """`hv train pretrain|finetune --config CONFIG --out RUN --in-process` on `shards`, shrunk."""
    argv = ["train", stage, "--config", config, "--out", run, "--in-process", f"data.shards={shards}"]
    return hv(*argv, *SHRUNK, *overrides)


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> str:
    """Synthetic people with every label (coco17 pose, seg, depth, normal, mask), 8 shards of 2."""
    folder = tmp_path_factory.mktemp("people")
    write_shards(str(folder / "people"), [person_sample(i, *IMAGE_HW) for i in range(16)], max_count=2)
    return str(folder)


def test_every_config_folder_has_a_runner() -> None:
    assert YAMLS and JSONS
    assert {folder_of(p) for p in YAMLS} <= KNOWN_FOLDERS | {"deepspeed"}


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.slow
@pytest.mark.parametrize("path", configs_in("pretrain"), ids=rel)
def test_pretrain_config_trains_as_shipped(path: str, people: str, tmp_path: Path) -> None:
    raw = shipped(path)
    run = str(tmp_path / "run")
    assert train("pretrain", path, run, people, "model.arch=tiny", *MAE_SIZE, loader_workers(raw)) == 0
    check_trained_as_shipped(run, raw)


@pytest.mark.slow
@pytest.mark.parametrize("path", configs_in("finetune"), ids=rel)
def test_finetune_config_trains_as_shipped(path: str, people: str, tmp_path: Path) -> None:
    """bf16 fine-tuning of every task included: the images reach a bf16 model cast, the losses are fp32."""
    from train.predictor import Predictor

    raw = shipped(path)
    run = str(tmp_path / "run")
    overrides = ["model.arch=tiny", *FINETUNE_SIZE, "data.shuffle_buffer=4", loader_workers(raw)]
    assert train("finetune", path, run, people, *overrides) == 0
    check_trained_as_shipped(run, raw)
    rows = metrics_of(run)
    for task in Predictor(run).tasks:  # each head was trained on rows of its own, with a finite fp32 loss
        assert sum(r[f"rows_{task}"] for r in rows) > 0 and all(np.isfinite(r[f"loss_{task}"]) for r in rows)


@pytest.mark.slow
def test_depth_loss_option_trains_as_a_user_sets_it(people: str, tmp_path: Path) -> None:
    """`depth.loss=ssi depth.grad_weight=0.5` (README: MiDaS's loss, both terms) on the shipped tiny depth config,
    in bf16: finite losses, and the run's saved config says what it trained with."""
    path = os.path.join(ROOT, "configs", "finetune", "depth_tiny.yaml")
    run = str(tmp_path / "run")
    overrides = ["model.arch=tiny", *FINETUNE_SIZE, "depth.loss=ssi", "depth.grad_weight=0.5", "precision=bf16"]
    assert train("finetune", path, run, people, *overrides) == 0
    rows = metrics_of(run)
    assert rows[-1]["step"] == 2 and all(np.isfinite(r["loss_depth"]) and r["loss_depth"] > 0 for r in rows)
    depth = OmegaConf.load(os.path.join(run, "config.yaml")).depth
    assert (depth.loss, depth.grad_weight) == ("ssi", 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("path", JSONS, ids=rel)
def test_deepspeed_json_trains(path: str, people: str, tmp_path: Path) -> None:
    """Each DeepSpeed JSON under the tiny multi-task fine-tuning, at the ZeRO stage the file names."""
    with open(path) as f:
        stage = json.load(f)["zero_optimization"]["stage"]
    run = str(tmp_path / "run")
    assert (
        train("finetune", MULTI_TINY, run, people, *FINETUNE_SIZE, f"deepspeed_config={path}", f"zero_stage={stage}")
        == 0
    )
    with open(os.path.join(run, "deepspeed_config.json")) as f:
        used = json.load(f)
    with open(path) as f:
        for key, value in json.load(f)["zero_optimization"].items():
            assert used["zero_optimization"][key] == value  # the file's settings reached DeepSpeed unchanged
    assert len(metrics_of(run)) >= 1 and os.path.isfile(os.path.join(run, "model.safetensors"))


# -------------------------------------------------------------------------------------- eval and predict


@pytest.fixture(scope="module")
def tiny_model(people: str, tmp_path_factory) -> str:
    run = str(tmp_path_factory.mktemp("multi"))
    assert train("finetune", MULTI_TINY, run, people, *FINETUNE_SIZE) == 0
    return run


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in configs_in("eval") if "predict" not in os.path.basename(p)], ids=rel)
def test_eval_config_scores_a_checkpoint(path: str, people: str, tiny_model: str, tmp_path: Path) -> None:
    for task, metric in (("pose", "AP"), ("seg", "mIoU"), ("depth", "rmse"), ("normal", "mean")):
        out = tmp_path / task
        argv = ["eval", task, "--checkpoint", tiny_model, "--shards", people, "--config", path, "--out-dir", str(out)]
        assert hv(*argv, "pictures=1") == 0
        text = (out / "metrics.json").read_text()
        assert metric in text, (task, text[:300])


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in configs_in("eval") if "predict" in os.path.basename(p)], ids=rel)
def test_predict_config_runs_a_checkpoint(path: str, people: str, tiny_model: str, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    assert hv("predict", people, "--checkpoint", tiny_model, "--out", str(out), "--config", path) == 0
    assert any(out.rglob("*.png")) and any(out.rglob("*.json"))


# -------------------------------------------------------------------------------- curation, synth, annotation


def write_onnx_person_detector(path: Path) -> Path:
    """A tiny YOLOv5-layout ONNX model that finds one person filling the letterboxed input (obj 0.95)."""
    import torch

    class WholeImage(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, 1, 7)
            side = float(x.shape[-1])
            box = torch.tensor([side / 2, side / 2, side * 0.9, side * 0.9, 0.95, 1.0, 0.0])
            return box.expand(x.shape[0], 1, 7) + x[:, :1, :1, :1].reshape(-1, 1, 1) * 0

    torch.onnx.export(
        WholeImage(), (torch.zeros(1, 3, 64, 64),), str(path), input_names=["images"], output_names=["output"],
        dynamic_axes={"images": {0: "n"}, "output": {0: "n"}}, dynamo=False,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three distinct textured photos, large enough for the shipped quality thresholds (short side 256)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        base = rng.integers(0, 255, (48, 36, 3), dtype=np.uint8)
        Image.fromarray(base).resize((288, 384), Image.BICUBIC).save(folder / f"photo{i}.jpg", quality=90)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("path", configs_in("curate"), ids=rel)
def test_curate_config_runs(path: str, photos: Path, tmp_path: Path) -> None:
    extra = []
    if shipped(path).get("detector", {}).get("name") == "onnx":
        extra = [f"detector.weights={write_onnx_person_detector(tmp_path / 'person.onnx')}", "detector.min_height=1"]
    out = tmp_path / "out"
    done = hv_subprocess("curate", str(photos), "--out", str(out), "--config", path, *extra)
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["inputs"] == 3, stats  # every input accounted for under the shipped thresholds


@pytest.mark.slow
@pytest.mark.parametrize("path", configs_in("synth"), ids=rel)
def test_synth_config_renders(path: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = hv_subprocess(
        "synth", "--out", str(out), "--config", path, "--bodies", "1", "--views", "1", "--size", "64x48",
        "--workers", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    from data_engine.shards import iter_samples

    samples = list(iter_samples([str(p) for p in out.rglob("*.tar")]))
    assert len(samples) == 1 and samples[0].image.shape[:2] == (48, 64) and samples[0].depth is not None


@pytest.mark.parametrize("path", configs_in("annotation"), ids=rel)
@pytest.mark.parametrize("task", ["pose", "seg", "bbox"])
def test_annotation_config_builds_labeling_configs(path: str, task: str, capsys) -> None:
    """Offline: the labeling config the settings imply (push/predict/pull run against a real server in
    tests/annotation)."""
    assert hv("annotate", "config", "--task", task, "--config", path) == 0
    xml = capsys.readouterr().out
    assert xml.lstrip().startswith("<View") and ("KeyPoint" in xml or "Brush" in xml or "Rectangle" in xml)
