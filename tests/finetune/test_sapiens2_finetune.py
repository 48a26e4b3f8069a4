"""A tiny Sapiens2 model fine-tuned through `hv train finetune --in-process`: at ZeRO-3 (built inside
deepspeed.zero.Init, a sapiens2 pose head), and from a converted transformers checkpoint (`--init`)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from ft_synthetic import person_sample, write_shards

import humanvision_cli

pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_attention_heads": 2, "num_first_full_attention_layers": 1, "num_last_full_attention_layers": 0,
    "num_register_tokens": 2,
}  # fmt: skip
HEAD = {"style": "sapiens2", "upsample_out_channels": [8, 8], "conv_out_channels": [8]}


def hv(*argv: str) -> int:
    args = humanvision_cli.build_parser().parse_args(list(argv))
    return int(args.func(args) or 0)


def flow(mapping: dict) -> str:
    """A dict as a one-line YAML flow mapping (the value of a `key=value` override)."""
    return json.dumps(mapping).replace('"', "")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("people")
    write_shards(str(folder / "people"), [person_sample(i, 64, 48) for i in range(4)], max_count=2)
    return str(folder)


def finetune(out: str, shards: str, *extra: str, flags: tuple[str, ...] = ()) -> list[dict]:
    code = hv(
        "train", "finetune", *flags, "--task", "pose",
        "--config", os.path.join(ROOT, "configs/finetune/pose_tiny.yaml"), "--out", out, "--in-process",
        f"data.shards={shards}", "steps=2", "optim.warmup_steps=1", "batch_size=2",
        "data.shuffle_buffer=1", "log_every=1", "model.image_size=[64,48]", "progress=false", "tensorboard=false",
        *extra,
    )  # fmt: skip
    assert code == 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    return rows


@pytest.mark.slow
def test_sapiens2_pose_at_zero3(tmp_path, shards) -> None:
    from train.predictor import Predictor

    out = str(tmp_path / "run")
    finetune(
        out, shards, "zero_stage=3", "model.arch=sapiens2", f"model.backbone_options={flow(TINY)}",
        f"model.head_options={flow({'pose': HEAD})}", "model.grad_checkpointing=true",
    )  # fmt: skip
    predictor = Predictor(out)
    assert predictor.tasks == ("pose",)
    assert predictor.model.backbone.depth == 2 and predictor.spec.head_options["pose"]["style"] == "sapiens2"


@pytest.mark.slow
def test_sapiens2_init_from_converted_checkpoint(tmp_path, shards) -> None:
    from transformers import Sapiens2Config, Sapiens2ForPoseEstimation

    from train.models.convert_sapiens2 import convert_sapiens2

    config = Sapiens2Config(
        **TINY, image_size=[64, 48], num_labels=17, head_config={k: v for k, v in HEAD.items() if k != "style"}
    )
    Sapiens2ForPoseEstimation(config).save_pretrained(str(tmp_path / "hf"))
    init = str(tmp_path / "pose.safetensors")
    convert_sapiens2(str(tmp_path / "hf"), init)
    from train.models.weights import read_model_spec

    spec = read_model_spec(init)
    finetune(
        str(tmp_path / "run"), shards, "model.arch=sapiens2", f"model.backbone_options={flow(spec.backbone_options)}",
        f"model.head_options={flow(spec.head_options)}", "precision=bf16", flags=("--init", init),
    )  # fmt: skip
