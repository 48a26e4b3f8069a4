"""Every shipped fine-tuning config loads, validates and builds its model (the sapiens sizes on the meta device)."""

from __future__ import annotations

import glob
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs/finetune/*.yaml")))


def test_there_is_a_tiny_config_per_task_and_sapiens_configs_per_size() -> None:
    names = {os.path.basename(p) for p in CONFIGS}
    for task in ("pose", "seg", "depth", "normal"):
        assert f"{task}_tiny.yaml" in names
        for arch in ("sapiens_0.3b", "sapiens_1b", "sapiens_2b"):
            assert f"{task}_{arch}.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_its_model(path) -> None:
    from train.finetune_config import load_finetune_config
    from train.models.multitask import build_model

    cfg = load_finetune_config(path, ["data.shards=unused"])
    assert cfg.task.value == os.path.basename(path).split("_")[0]
    if "sapiens" in path:
        assert cfg.model.image_size == [1024, 768] and cfg.precision.value == "bf16"
        assert cfg.optim.lr == (5e-5 if cfg.task.value == "pose" else 5e-4) and cfg.optim.weight_decay == 0.1
        assert os.path.isfile(os.path.join(ROOT, cfg.deepspeed_config))
    with torch.device("meta"):
        model = build_model(cfg.model_spec())
    assert set(model.tasks) == set(cfg.active_tasks)
    for task, head in model.heads.items():
        assert head.out_channels == cfg.model_spec().out_channels(task)
    if cfg.task.value == "pose" and "sapiens" in path:
        assert model.heads["pose"].out_channels == 308
