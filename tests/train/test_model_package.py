"""train.models: the task table, ModelSpec, and the checkpoint format (new files and those written before it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from train.models.multitask import build_model
from train.models.spec import ModelSpec, SpecError
from train.models.tasks import DENSE_TASKS, TASK_NAMES, TASKS
from train.models.weights import SPEC_KEY, CheckpointError, load_finetuned, read_model_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = ModelSpec(
    arch="tiny", image_size=(32, 32), tasks=tuple(TASK_NAMES), depth=2, head_channels=8, keypoint_set="coco17"
)


def test_every_task_is_described_once_for_every_consumer() -> None:
    from eval.tasks import EVAL_TASKS
    from train.finetune_config import TaskMode

    assert tuple(EVAL_TASKS) == TASK_NAMES and [m.value for m in TaskMode] == [*TASK_NAMES, "multi"]
    model = build_model(SPEC)
    out = model(torch.zeros(2, 3, 32, 32))
    for name, task in TASKS.items():
        assert out[name].shape == (
            2,
            SPEC.out_channels(name),
            32 // task.head.output_stride,
            32 // task.head.output_stride,
        )
        assert (task.rows == "dense") == (name in DENSE_TASKS)
        if task.rows == "dense":  # a dense task must say how a view gives its targets and how an output maps back
            assert task.view_targets is not None and task.to_image is not None
    assert SPEC.out_channels("pose") == 17 and SPEC.out_channels("seg") == 28
    assert bool((out["depth"] > 0).all()), "the depth head's softplus keeps depth positive"


def test_the_task_table_loads_without_torch() -> None:
    """Configs and command lines check task names through train.models.tasks: it must stay light."""
    code = "import sys, train.models.tasks, train.models.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_spec_round_trips_and_refuses_what_cannot_be_a_model() -> None:
    assert ModelSpec.from_json(SPEC.to_json()) == SPEC
    assert ModelSpec(arch="tiny", image_size=[64, 48], tasks=("seg", "pose")).tasks == ("pose", "seg")
    with pytest.raises(SpecError, match=r"model\.arch 'huge'"):
        ModelSpec(arch="huge", image_size=(32, 32), tasks=("pose",))
    with pytest.raises(SpecError, match="multiple of 16"):
        ModelSpec(arch="tiny", image_size=(30, 32), tasks=("pose",))
    with pytest.raises(SpecError, match="albedo"):
        ModelSpec(arch="tiny", image_size=(32, 32), tasks=("albedo",))  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="unknown fields \\['colour'\\]"):
        ModelSpec.from_dict({**json.loads(SPEC.to_json()), "colour": 1})
    with pytest.raises(SpecError, match="not JSON"):
        ModelSpec.from_json("{arch")


def test_a_spec_from_an_old_config_is_the_configs_model() -> None:
    from train.finetune_config import load_finetune_config

    cfg = load_finetune_config(
        os.path.join(ROOT, "configs/finetune/multi_tiny.yaml"),
        ["model.image_size=[64,48]", "tasks=[seg,pose]", "pose.sigma=3.0", "seg.vocabulary=lip20"],
    )
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    spec = ModelSpec.from_config_dict(raw)  # type: ignore[arg-type]
    assert spec == cfg.model_spec()
    assert spec.tasks == ("pose", "seg") and spec.vocabulary == "lip20" and spec.pose_sigma == 3.0


def _write(path: str, spec: ModelSpec, metadata: dict[str, str], seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in build_model(spec).state_dict().items()}
    save_file(state, path, metadata=metadata)
    return state


def test_old_and_new_checkpoints_load_to_the_same_model(tmp_path) -> None:
    """A file from before `model_spec` (its config only) and one with the spec load to equal models and predictions."""
    from train.predictor import Predictor

    spec = ModelSpec(arch="tiny", image_size=(32, 32), tasks=("pose", "seg"), depth=2, head_channels=8,
                     keypoint_set="coco17")  # fmt: skip
    model = {"arch": "tiny", "image_size": [32, 32], "depth": 2, "head_channels": 8}
    old_config = {"task": "multi", "tasks": ["pose", "seg"], "model": model, "pose": {"keypoint_set": "coco17"}}
    old_config["optim"] = {"lr": 1e-3, "a_key_of_another_version": 1}  # training sections do not matter
    import yaml

    old, new = str(tmp_path / "old.safetensors"), str(tmp_path / "new.safetensors")
    _write(old, spec, {"config": yaml.safe_dump(old_config)})
    _write(new, spec, {SPEC_KEY: spec.to_json()})
    assert read_model_spec(old) == read_model_spec(new) == spec
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    results = []
    for path in (old, new):
        loaded = load_finetuned(path)
        assert loaded.spec == spec and loaded.tasks == ("pose", "seg")
        predictor = Predictor(path, flip_test=True)
        pose = predictor.pose([image], [np.array([[2.0, 3.0, 28.0, 37.0]])])[0]
        seg = predictor.dense([image])[0]
        assert seg.seg.shape == (40, 30) and seg.depth is None and set(seg.maps) == {"seg", "seg_probs"}
        results.append((pose.keypoints, seg.seg))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_bad_checkpoints_are_refused_with_the_file_and_the_reason(tmp_path) -> None:
    path = str(tmp_path / "m.safetensors")
    state = _write(path, SPEC, {SPEC_KEY: SPEC.to_json()})
    with pytest.raises(CheckpointError, match=r"m\.safetensors: model spec: model\.arch 'huge'"):
        save_file(state, path, metadata={SPEC_KEY: SPEC.to_json().replace('"tiny"', '"huge"')})
        load_finetuned(path)
    wrong = {**state, "heads.seg.out.weight": torch.zeros(3, 8, 1, 1)}
    save_file(wrong, path, metadata={SPEC_KEY: SPEC.to_json()})
    with pytest.raises(CheckpointError, match=r"1 wrong shape \(heads\.seg\.out\.weight \(3, 8, 1, 1\) vs \(28, 8"):
        load_finetuned(path)
    with open(path, "r+b") as f:  # truncated mid-tensor
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_finetuned(path)


def test_export_weights_of_a_finetune_run_writes_its_spec() -> None:
    """`hv train export-weights` (and the end of a fine-tuning run) put the spec in the header."""
    from train.export import _finetune_spec

    config = "task: seg\nmodel:\n  arch: tiny\n  image_size: [64, 48]\nseg:\n  vocabulary: lip20\n"
    spec = ModelSpec.from_json(_finetune_spec(config) or "")
    assert spec.tasks == ("seg",) and spec.vocabulary == "lip20" and spec.image_size == (64, 48)
    assert _finetune_spec("model:\n  arch: tiny\n  img_size: [64, 64]\n") is None  # a pretraining run: no heads
