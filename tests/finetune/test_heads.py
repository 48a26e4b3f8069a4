"""Every head on a tiny backbone: output shape at its stride, finite values, gradients reach every parameter."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from train.models.heads import build_head
from train.models.tasks import TASKS, output_stride


@pytest.mark.parametrize("task,channels", [("pose", 17), ("seg", 28), ("normal", 3), ("depth", 1)])
def test_head_shapes_and_backward(task, channels) -> None:
    torch.manual_seed(0)
    head = build_head(task, in_channels=32, out_channels=channels, channels=16)
    features = torch.randn(2, 32, 4, 3, requires_grad=True)  # a 64x48 input at patch 16
    out = head(features)
    stride = output_stride(task)
    assert out.shape == (2, channels, 64 // stride, 48 // stride)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    if task == "depth":
        assert (out > 0).all()  # softplus: log(depth) is always defined


def test_strides_follow_the_design() -> None:
    assert {t: output_stride(t) for t in TASKS} == {"pose": 4, "seg": 2, "depth": 1, "normal": 2}
    assert TASKS["depth"].head.channels == 384 and TASKS["pose"].head.channels == 768


def test_unknown_task_names_the_choices() -> None:
    with pytest.raises(ValueError, match="pose, seg, depth, normal"):
        build_head("keypoints", 8, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backbone_options", "head_options", "pose_size"),
    [
        ({}, {}, (16, 12)),  # patch 16, two x2 deconvolutions: 1/4 of 64x48
        ({"patch_size": 8}, {}, (16, 12)),  # patch 8: one deconvolution fewer, the same 1/4
        ({"patch_size": 8}, {"pose": {"num_deconv": 2}}, (32, 24)),  # asked for: 1/2
        ({}, {"pose": {"style": "sapiens_v1", "deconv_channels": [8, 8, 8], "deconv_kernels": [4, 4, 4]}}, (32, 24)),
    ],
)
def test_head_output_sizes_match_a_real_forward(backbone_options, head_options, pose_size) -> None:
    from train.models.multitask import build_model, head_output_sizes
    from train.models.spec import ModelSpec

    spec = ModelSpec(
        arch="tiny", image_size=(64, 48), tasks=("pose", "seg"), depth=1, head_channels=8,
        backbone_options=backbone_options, head_options=head_options,
    )  # fmt: skip
    sizes = head_output_sizes(spec)
    real = build_model(spec)(torch.zeros(1, 3, 64, 48))
    assert sizes == {task: tuple(t.shape[-2:]) for task, t in real.items()}
    assert sizes["pose"] == pose_size


def test_a_patch_size_no_deconvolution_count_can_serve_names_the_option() -> None:
    from train.models.multitask import build_model
    from train.models.spec import ModelSpec

    spec = ModelSpec(arch="tiny", image_size=(48, 48), tasks=("pose",), depth=1, backbone_options={"patch_size": 12})
    with pytest.raises(ValueError, match=r"head_options\.pose\.num_deconv"):
        build_model(spec)


def test_a_head_width_option_sets_one_heads_channels_and_survives_the_spec_file() -> None:
    from train.models.multitask import build_model
    from train.models.spec import ModelSpec

    spec = ModelSpec(
        arch="tiny", image_size=(64, 48), tasks=("pose", "depth"), depth=1, head_channels=8,
        head_options={"pose": {"width": 24}},
    )  # fmt: skip
    model = build_model(spec)
    assert model.heads["pose"].out.in_channels == 24  # the option
    assert model.heads["depth"].out.in_channels == 8  # every other head keeps head_channels
    # The checkpoint's spec (model.yaml / safetensors metadata) carries it, so eval and export rebuild the same head.
    assert build_model(ModelSpec.from_json(spec.to_json())).heads["pose"].out.in_channels == 24
    with pytest.raises(ValueError, match=r"head_options\.pose\.width must be an integer >= 1"):
        build_model(dataclasses.replace(spec, head_options={"pose": {"width": 0}}))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.head_options.pose.width=0", r"model\.head_options\.pose\.width must be an integer >= 1, got 0"),
        ("model.head_options.pose.width=64.5", r"model\.head_options\.pose\.width must be an integer"),
        ("model.head_options.pose.width=abc", r"model\.head_options\.pose\.width must be an integer"),
        ("model.head_options.pose.width=true", r"model\.head_options\.pose\.width must be an integer"),
        ("model.head_options.seg.num_conv=-1", r"model\.head_options\.seg\.num_conv must be an integer >= 0"),
        ("model.head_options.pose.widht=64", r"model\.head_options\.pose: unknown keys \['widht'\]"),
    ],
)
def test_bad_head_options_fail_at_start_up_naming_the_key(override: str, message: str) -> None:
    import os

    from train.config import ConfigError
    from train.finetune_config import load_finetune_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "configs/finetune/multi_tiny.yaml")
    with pytest.raises(ConfigError, match=message):
        load_finetune_config(path, ["data.shards=x", override])
    assert load_finetune_config(path, ["data.shards=x", "model.head_options.pose.width=64"]).model_spec().head_options
