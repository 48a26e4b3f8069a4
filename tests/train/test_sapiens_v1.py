"""Released Sapiens v1 checkpoints -> our model file: `hv train convert-sapiens` as a user runs it, on tiny
checkpoints with the released key names and layouts, checked against a plain-torch REFERENCE of Meta's forward.

The references below are rebuilt from the Sapiens code (mmpretrain VisionTransformer; mmpose HeatmapHead;
mmseg VitHead / VitDepthHead / VitNormalHead, which share one forward) and run on the source tensors directly.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import humanvision_cli
from train.models.weights import load_finetuned

C, HEADS, DEPTH = 192, 3, 2  # the tiny arch's width and heads, two blocks
SIZE = (64, 48)  # model input (H, W): a 4 x 3 token grid


def hv(capsys, *argv: str) -> tuple[int, str, str]:
    args = humanvision_cli.build_parser().parse_args(list(argv))
    code = int(args.func(args) or 0)
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------- released key layouts


def _w(*shape: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(*shape) * scale


def backbone_state(depth: int = DEPTH, c: int = C, tokens: int = 12) -> dict[str, torch.Tensor]:
    """mmpretrain VisionTransformer keys (with_cls_token=False: pos_embed has the patch tokens only)."""
    sd = {
        "backbone.pos_embed": _w(1, tokens, c, scale=0.5),
        "backbone.patch_embed.projection.weight": _w(c, 3, 16, 16, scale=0.02),
        "backbone.patch_embed.projection.bias": _w(c),
        "backbone.ln1.weight": 1 + _w(c),
        "backbone.ln1.bias": _w(c),
    }
    for i in range(depth):
        p = f"backbone.layers.{i}."
        sd |= {p + "ln1.weight": 1 + _w(c), p + "ln1.bias": _w(c), p + "ln2.weight": 1 + _w(c), p + "ln2.bias": _w(c)}
        sd |= {p + "attn.qkv.weight": _w(3 * c, c), p + "attn.qkv.bias": _w(3 * c)}
        sd |= {p + "attn.proj.weight": _w(c, c), p + "attn.proj.bias": _w(c)}
        sd |= {p + "ffn.layers.0.0.weight": _w(4 * c, c), p + "ffn.layers.0.0.bias": _w(4 * c)}
        sd |= {p + "ffn.layers.1.weight": _w(c, 4 * c), p + "ffn.layers.1.bias": _w(c)}
    return sd


# task -> (key prefix, final layer name, deconv widths, conv widths, output channels); tiny widths.
HEAD_LAYOUTS = {
    "pose": ("head.", "final_layer", [16, 16], [16, 16], 308),
    "seg": ("decode_head.", "conv_seg", [16, 16, 16], [16, 16, 16], 28),
    "seg_lip": ("decode_head.", "conv_seg", [16, 16, 16], [16, 16, 16], 20),
    "depth": ("decode_head.", "conv_seg", [8, 8, 8, 8], [8, 8], 1),
    "normal": ("decode_head.", "conv_seg", [16, 16, 16], [16, 16, 16], 3),
}


def head_state(kind: str, c: int = C) -> dict[str, torch.Tensor]:
    """HeatmapHead / VitHead keys: deconv_layers.{3i} (ConvTranspose2d, no bias; InstanceNorm has no weights),
    conv_layers.{3i} (Conv2d with bias), then final_layer (pose) or conv_seg (mmseg)."""
    prefix, final, deconv, conv, out = HEAD_LAYOUTS[kind]
    sd, width = {}, c
    for i, ch in enumerate(deconv):
        sd[f"{prefix}deconv_layers.{3 * i}.weight"] = _w(width, ch, 4, 4, scale=0.2)
        width = ch
    for i, ch in enumerate(conv):
        sd[f"{prefix}conv_layers.{3 * i}.weight"] = _w(ch, width, 1, 1, scale=0.3)
        sd[f"{prefix}conv_layers.{3 * i}.bias"] = _w(ch)
        width = ch
    sd[f"{prefix}{final}.weight"] = _w(out, width, 1, 1, scale=0.3)
    sd[f"{prefix}{final}.bias"] = _w(out)
    return sd


def save_release(path, sd: dict[str, torch.Tensor]) -> str:
    torch.save({"meta": {"epoch": 210, "mmengine_version": "0.10.3"}, "state_dict": sd}, path)
    return str(path)


# ------------------------------------------------------------------------------------------- REFERENCE


def reference_backbone(sd: dict[str, torch.Tensor], x: torch.Tensor, padding: int) -> torch.Tensor:
    """REFERENCE: mmpretrain VisionTransformer (pre-norm blocks, LayerNorm eps 1e-6, GELU FFN, final ln1,
    out_type='featmap'), written from Sapiens' code on the released keys. x (B, 3, H, W) -> (B, C, h, w)."""
    g = lambda name: sd["backbone." + name]  # noqa: E731
    t = F.conv2d(x, g("patch_embed.projection.weight"), g("patch_embed.projection.bias"), stride=16, padding=padding)
    b, c, h, w = t.shape
    t = t.flatten(2).transpose(1, 2) + g("pos_embed")
    i = 0
    while f"backbone.layers.{i}.ln1.weight" in sd:
        p = f"layers.{i}."
        y = F.layer_norm(t, (c,), g(p + "ln1.weight"), g(p + "ln1.bias"), eps=1e-6)
        qkv = F.linear(y, g(p + "attn.qkv.weight"), g(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(b, h * w, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (c // HEADS) ** -0.5).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, h * w, c)
        t = t + F.linear(y, g(p + "attn.proj.weight"), g(p + "attn.proj.bias"))
        y = F.layer_norm(t, (c,), g(p + "ln2.weight"), g(p + "ln2.bias"), eps=1e-6)
        y = F.gelu(F.linear(y, g(p + "ffn.layers.0.0.weight"), g(p + "ffn.layers.0.0.bias")))
        t = t + F.linear(y, g(p + "ffn.layers.1.weight"), g(p + "ffn.layers.1.bias"))
        i += 1
    t = F.layer_norm(t, (c,), g("ln1.weight"), g("ln1.bias"), eps=1e-6)
    return t.transpose(1, 2).reshape(b, c, h, w)


def reference_head(sd: dict[str, torch.Tensor], kind: str, feats: torch.Tensor) -> torch.Tensor:
    """REFERENCE: HeatmapHead.forward / VitHead.forward (eval): deconv_layers (ConvTranspose2d k4 s2 p1 + IN + SiLU),
    conv_layers (Conv2d + IN + SiLU), then the final 1x1 conv (cls_seg's dropout is off in eval); no resize."""
    prefix, final, *_ = HEAD_LAYOUTS[kind]
    x, i = feats, 0
    while f"{prefix}deconv_layers.{i}.weight" in sd:
        x = F.silu(F.instance_norm(F.conv_transpose2d(x, sd[f"{prefix}deconv_layers.{i}.weight"], stride=2, padding=1)))
        i += 3
    i = 0
    while f"{prefix}conv_layers.{i}.weight" in sd:
        x = F.conv2d(x, sd[f"{prefix}conv_layers.{i}.weight"], sd[f"{prefix}conv_layers.{i}.bias"])
        x = F.silu(F.instance_norm(x))
        i += 3
    return F.conv2d(x, sd[f"{prefix}{final}.weight"], sd[f"{prefix}{final}.bias"])


# ------------------------------------------------------------------------------------------------ tests

# kind -> (our task, expected patch padding, spec field checked, its value)
EXPECT = {
    "pose": ("pose", 2, "keypoint_set", "all"),
    "seg": ("seg", 0, "vocabulary", "goliath28"),
    "seg_lip": ("seg", 2, "vocabulary", "lip20"),
    "depth": ("depth", 0, None, None),
    "normal": ("normal", 2, None, None),
}


@pytest.mark.parametrize("kind", list(EXPECT))
def test_converted_checkpoint_equals_the_released_forward(tmp_path, capsys, kind) -> None:
    torch.manual_seed(0)
    sd = backbone_state() | head_state(kind)
    src = save_release(tmp_path / f"sapiens_{kind}.pth", sd)
    dst = str(tmp_path / f"{kind}.safetensors")
    code, out, err = hv(capsys, "train", "convert-sapiens", src, "--out", dst, "--img-size", *map(str, SIZE))
    assert code == 0, err
    task, padding, field, value = EXPECT[kind]
    report = json.loads(out)
    assert (report["task"], report["arch"], report["depth"], report["patch_padding"]) == (task, "tiny", DEPTH, padding)

    loaded = load_finetuned(dst)
    spec = loaded.spec
    assert spec.tasks == (task,) and spec.image_size == SIZE
    assert spec.backbone_options == ({"patch_padding": padding} if padding else {})
    assert spec.head_options[task]["style"] == "sapiens_v1"
    if field:
        assert getattr(spec, field) == value
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        feats = loaded.model.backbone.forward_features(x)
        torch.testing.assert_close(feats, reference_backbone(sd, x, padding), atol=1e-4, rtol=1e-4)
        ours = loaded.model(x)[task]
        torch.testing.assert_close(ours, reference_head(sd, kind, feats), atol=1e-4, rtol=1e-4)
    stride = {"pose": 4, "seg": 2, "normal": 2, "depth": 1}[task]
    assert ours.shape[-2:] == (SIZE[0] // stride, SIZE[1] // stride)

    from train.predictor import Predictor

    predictor = Predictor(dst)
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    if task == "pose":
        (pred,) = predictor.pose([image], [np.array([[2.0, 3.0, 28.0, 38.0]])])
        assert pred.keypoints.shape == (1, 308, 2) and np.isfinite(pred.keypoints).all()
    else:
        (pred,) = predictor.dense([image])
        assert next(iter(pred.maps.values())).shape[:2] == (40, 30)


def test_layer_scale_and_other_unknown_keys_are_refused_or_listed(tmp_path, capsys) -> None:
    sd = backbone_state() | head_state("pose")
    sd["backbone.layers.0.attn.gamma1.weight"] = torch.ones(C)
    sd["backbone.layers.1.ffn.gamma2.weight"] = torch.ones(C)
    sd["head.extra.weight"] = torch.ones(3)
    src = save_release(tmp_path / "scaled.pth", sd)
    dst = tmp_path / "out.safetensors"
    code, _, err = hv(capsys, "train", "convert-sapiens", src, "--out", str(dst), "--img-size", *map(str, SIZE))
    assert code == 2 and not dst.exists()
    for key in ("backbone.layers.0.attn.gamma1.weight", "backbone.layers.1.ffn.gamma2.weight", "head.extra.weight"):
        assert key in err
    assert "--allow-unused" in err
    args = ("train", "convert-sapiens", src, "--out", str(dst), "--img-size", *map(str, SIZE), "--allow-unused")
    code, out, err = hv(capsys, *args)
    assert code == 0, err
    assert len(json.loads(out)["unused"]) == 3
    load_finetuned(str(dst))


def test_a_wrong_arch_says_which_shapes_disagree_in_a_few_lines(tmp_path, capsys) -> None:
    src = save_release(tmp_path / "pose.pth", backbone_state() | head_state("pose"))
    args = ("train", "convert-sapiens", src, "--out", str(tmp_path / "o.safetensors"), "--arch", "sapiens_0.3b")
    code, _, err = hv(capsys, *args)
    assert code == 2
    assert len(err.strip().splitlines()) <= 3
    assert "embed dim 1024" in err and "embed dim 192" in err and "patch_embed.projection.weight" in err


def test_torchscript_and_truncated_files_get_clear_messages(tmp_path, capsys) -> None:
    scripted = tmp_path / "sapiens_1b_goliath_best_goliath_AP_639_torchscript.pt2"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 4, 1)), str(scripted))
    code, _, err = hv(capsys, "train", "convert-sapiens", str(scripted), "--out", str(tmp_path / "a.safetensors"))
    assert code == 2 and "TorchScript" in err and ".pth" in err and "corrupt" not in err
    exported = tmp_path / "sapiens_1b_goliath_bfloat16.pt2"
    conv = torch.nn.Conv2d(3, 4, 1)
    torch.export.save(torch.export.export(conv, (torch.randn(1, 3, 8, 8),)), str(exported))
    code, _, err = hv(capsys, "train", "convert-sapiens", str(exported), "--out", str(tmp_path / "e.safetensors"))
    assert code == 2 and "torch.export" in err and ".pth" in err and "corrupt" not in err
    whole = tmp_path / "whole.pth"
    save_release(whole, backbone_state() | head_state("pose"))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: os.path.getsize(whole) // 2])
    code, _, err = hv(capsys, "train", "convert-sapiens", str(cut), "--out", str(tmp_path / "b.safetensors"))
    assert code == 2 and "cut.pth" in err and "download" in err
    assert len(err.strip().splitlines()) == 1


def test_a_backbone_only_checkpoint_stays_an_init_file(tmp_path, capsys) -> None:
    from train.models.multitask import build_model
    from train.models.spec import ModelSpec
    from train.models.weights import load_init

    sd = backbone_state(tokens=16)  # pretraining: a square grid
    sd["backbone.cls_token"] = torch.zeros(1, 1, C)
    src = save_release(tmp_path / "pretrain.pth", sd)
    dst = str(tmp_path / "backbone.safetensors")
    code, out, err = hv(capsys, "train", "convert-sapiens", src, "--out", dst, "--img-size", *map(str, SIZE))
    assert code == 0, err
    assert json.loads(out)["task"] == "backbone" and json.loads(out)["dropped"] == ["cls_token"]
    model = build_model(ModelSpec(arch="tiny", image_size=SIZE, tasks=("pose",), depth=DEPTH, keypoint_set="coco17"))
    load_init(model, dst)
    torch.testing.assert_close(model.backbone.blocks[1].mlp.fc2.weight, sd["backbone.layers.1.ffn.layers.1.weight"])


def test_hv_predict_runs_a_converted_pose_checkpoint(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    src = save_release(tmp_path / "pose.pth", backbone_state() | head_state("pose"))
    ckpt = str(tmp_path / "pose.safetensors")
    assert hv(capsys, "train", "convert-sapiens", src, "--out", ckpt, "--img-size", *map(str, SIZE))[0] == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    image = np.random.default_rng(1).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    cv2.imwrite(str(photos / "person_7.jpg"), image)
    out = tmp_path / "preds"
    code, _, err = hv(capsys, "predict", "--checkpoint", ckpt, str(photos), "--out", str(out), "batch_size=1")
    assert code == 0, err
    result = json.loads((out / "pose" / "person_7.json").read_text())
    assert result["keypoint_set"] == "all"
    assert len(result["persons"]) == 1 and len(result["persons"][0]["keypoints"]) == 308


class _PeakModel(torch.nn.Module):
    """Stands in for a pose model whose heatmaps are at 1/`stride` of the input: one Gaussian peak per keypoint
    at crop point (20.5, 30.5) in input pixels."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.heads = torch.nn.ModuleDict({"pose": torch.nn.Identity()})

    def forward(self, x, routes=None):
        h, w = x.shape[-2] // self.stride, x.shape[-1] // self.stride
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        cx, cy, sigma = 20.5 / self.stride, 30.5 / self.stride, 4.0 / self.stride
        peak = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
        return {"pose": peak.expand(len(x), 17, h, w).clone()}


def test_pose_decoding_follows_the_heatmap_resolution() -> None:
    from train.models.spec import ModelSpec
    from train.predictor import Predictor

    spec = ModelSpec(arch="tiny", image_size=SIZE, tasks=("pose",), keypoint_set="coco17", pose_sigma=1.0)
    image = np.zeros((64, 48, 3), np.uint8)
    box = [np.array([[0.0, 0.0, 48.0, 64.0]])]
    found = [Predictor.from_model(_PeakModel(s), spec).pose([image], box)[0].keypoints[0, 0] for s in (4, 2)]
    np.testing.assert_allclose(found[0], found[1], atol=0.5)


def test_finetune_init_takes_the_model_layout_from_the_converted_file(tmp_path, capsys) -> None:
    from train.finetune_config import load_finetune_config
    from train.models.multitask import build_model
    from train.models.weights import load_init

    torch.manual_seed(0)
    src = save_release(tmp_path / "pose.pth", backbone_state() | head_state("pose"))
    ckpt = str(tmp_path / "pose.safetensors")
    assert hv(capsys, "train", "convert-sapiens", src, "--out", ckpt, "--img-size", *map(str, SIZE))[0] == 0
    config = tmp_path / "ft.yaml"
    config.write_text("task: pose\nmodel:\n  image_size: [64, 48]\n")

    cfg = load_finetune_config(str(config), [], init=ckpt)
    assert (cfg.model.arch, cfg.model.depth, cfg.model.backbone_options) == ("tiny", DEPTH, {"patch_padding": 2})
    assert cfg.model.head_options["pose"]["deconv_channels"] == [16, 16]
    model = build_model(cfg.model_spec())
    report = load_init(model, ckpt)
    assert not report.missing and not report.ignored  # the backbone and the whole head
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["pose"], load_finetuned(ckpt).model(x)["pose"])

    # What the config file or an override sets wins; a seg run takes the backbone layout but not the pose head.
    config.write_text("task: pose\nmodel:\n  image_size: [64, 48]\n  backbone_options: {patch_padding: 0}\n")
    cfg = load_finetune_config(str(config), ["model.depth=1"], init=ckpt)
    assert (cfg.model.depth, cfg.model.backbone_options, cfg.model.arch) == (1, {"patch_padding": 0}, "tiny")
    config.write_text("task: pose\nmodel:\n  image_size: [64, 48]\n")
    cfg = load_finetune_config(str(config), [], task="seg", init=ckpt)
    assert cfg.model.head_options == {} and cfg.model.backbone_options == {"patch_padding": 2}


@pytest.mark.slow  # one real training step through the engine (DeepSpeed start-up): about a minute on 2 cores
def test_hv_train_finetune_starts_from_a_converted_checkpoint(tmp_path, capsys) -> None:
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.join(root, "tests", "finetune"))
    from ft_synthetic import person_sample, write_shards

    write_shards(str(tmp_path / "people"), [person_sample(i, 64, 48) for i in range(2)], max_count=2)
    src = save_release(tmp_path / "pose.pth", backbone_state() | head_state("pose"))
    ckpt = str(tmp_path / "pose.safetensors")
    assert hv(capsys, "train", "convert-sapiens", src, "--out", ckpt, "--img-size", *map(str, SIZE))[0] == 0
    run = str(tmp_path / "run")
    config = os.path.join(root, "configs/finetune/pose_tiny.yaml")
    code, _, err = hv(
        capsys, "train", "finetune", "--task", "pose", "--config", config, "--init", ckpt, "--out", run,
        "--in-process", f"data.shards={tmp_path}", "steps=1", "optim.warmup_steps=0", "batch_size=2",
        "model.image_size=[64,48]", "progress=false", "tensorboard=false", "pose.keypoint_set=all",
    )  # fmt: skip
    assert code == 0, err
    spec = load_finetuned(run).spec
    assert spec.backbone_options == {"patch_padding": 2} and spec.head_options["pose"]["style"] == "sapiens_v1"


class _RunsCodeWhenUnpickled:
    """Unpickling this would call os.mkdir(marker): the stand-in for a crafted file's payload."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_mmengine_meta_objects_are_read_as_placeholders_and_never_run(tmp_path, capsys) -> None:
    """Released .pth files carry mmengine's `meta` (numpy arrays, records) beside the weights, which a weights-only
    load refuses: the converter reads the tensors and leaves every other object inert."""
    torch.manual_seed(0)
    sd = backbone_state() | head_state("pose")
    marker = tmp_path / "payload_ran"
    meta = {"dataset_meta": {"flip_indices": np.arange(4)}, "hook": _RunsCodeWhenUnpickled(str(marker))}
    src = tmp_path / "release.pth"
    torch.save({"meta": meta, "state_dict": sd}, src)
    dst = str(tmp_path / "pose.safetensors")
    code, _, err = hv(capsys, "train", "convert-sapiens", str(src), "--out", dst, "--img-size", *map(str, SIZE))
    assert code == 0, err
    assert not marker.exists()
    converted = load_finetuned(dst).model.state_dict()
    torch.testing.assert_close(converted["heads.pose.final_layer.weight"], sd["head.final_layer.weight"])


@pytest.mark.parametrize(
    ("embed", "blocks", "arch"), [(1024, 24, "sapiens_0.3b"), (1280, 32, "sapiens_0.6b"), (1536, 40, "sapiens_1b"),
                                  (1920, 48, "sapiens_2b")]
)  # fmt: skip
def test_the_released_sizes_are_told_apart_by_their_shapes(embed, blocks, arch) -> None:
    from train.models.convert_sapiens import _match_arch

    shapes = {"patch_embed.projection.weight": torch.empty(embed, 3, 16, 16)}
    shapes |= {f"layers.{i}.ln1.weight": torch.empty(0) for i in range(blocks)}
    assert _match_arch(shapes, None) == (arch, None)
    assert _match_arch(shapes, arch) == (arch, None)


def test_annotation_pre_labels_come_from_a_converted_pose_checkpoint(tmp_path, capsys) -> None:
    """`hv annotate predict --checkpoint` wraps this plug-in: one curated sample in, Label Studio pre-labels out."""
    import sys

    from annotation.model_predictor import model_predictor

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "finetune"))
    from ft_synthetic import person_sample

    src = save_release(tmp_path / "pose.pth", backbone_state() | head_state("pose"))
    ckpt = str(tmp_path / "pose.safetensors")
    assert hv(capsys, "train", "convert-sapiens", src, "--out", ckpt, "--img-size", *map(str, SIZE))[0] == 0
    sample = person_sample(0, 64, 48)
    sample.meta["persons"] = [{"bbox": [4.0, 6.0, 40.0, 60.0], "score": 0.9}]
    prediction = model_predictor(ckpt, "pose", keypoint_threshold=0.0)(sample)
    assert prediction.pose.keypoint_set == "all"
    assert len(prediction.pose.persons) == 1 and prediction.pose.persons[0].keypoints.shape == (308, 3)
