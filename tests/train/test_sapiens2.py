"""Sapiens2 through transformers: tiny random models saved with `save_pretrained`, converted, loaded back with
`load_finetuned` / `load_init`; features and head outputs must equal transformers' own on the same input."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers

from train.models.convert_sapiens2 import (
    backbone_spec,
    convert_sapiens2,
    is_sapiens2_checkpoint,
)
from train.models.weights import load_finetuned, load_init

SIZE = (64, 48)
TOL = 1e-4
HEADS = {
    # task: (transformers class, num_labels, head_config, output name)
    "pose": ("Sapiens2ForPoseEstimation", 17, {"upsample_out_channels": [16, 8], "conv_out_channels": [8]}, "heatmaps"),
    "seg": (
        "Sapiens2ForSemanticSegmentation", 29,
        {"use_pixel_shuffle": True, "upsample_out_channels": [16, 8, 8, 8], "upsample_kernel_sizes": [3, 3, 3, 3],
         "conv_out_channels": [8], "conv_kernel_sizes": [3]},
        "logits",
    ),
    "normal": (
        "Sapiens2ForNormalEstimation", 3,
        {"use_pixel_shuffle": True, "upsample_out_channels": [8, 8], "upsample_kernel_sizes": [3, 3],
         "conv_out_channels": [8]},
        "normals",
    ),
}  # fmt: skip


def tiny_config(**kwargs):
    from transformers import Sapiens2Config

    return Sapiens2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_attention_heads=2,  # grouped-query attention in the middle layer
        num_first_full_attention_layers=1,
        num_last_full_attention_layers=1,
        num_register_tokens=2,
        image_size=list(SIZE),
        **kwargs,
    )


def randomised(model):
    """Every weight moved off its init (norms at 1 and zero biases would hide a mapping mistake)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def save(model, folder) -> str:
    model.save_pretrained(str(folder))
    return str(folder)


def image(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *SIZE, generator=torch.Generator().manual_seed(1))


def reference_features(base, x: torch.Tensor, registers: int = 2) -> torch.Tensor:
    tokens = base(x).last_hidden_state[:, 1 + registers :]
    return tokens.transpose(1, 2).reshape(x.shape[0], -1, SIZE[0] // 16, SIZE[1] // 16)


@pytest.mark.parametrize("task", list(HEADS))
def test_head_models_convert_and_match(tmp_path, task: str) -> None:
    name, labels, head_config, output = HEADS[task]
    ref = randomised(getattr(transformers, name)(tiny_config(num_labels=labels, head_config=head_config)))
    summary = convert_sapiens2(save(ref, tmp_path / "hf"), str(tmp_path / "ours.safetensors"))
    assert f"task {task}" in summary
    loaded = load_finetuned(str(tmp_path / "ours.safetensors"))
    assert loaded.tasks == (task,) and loaded.spec.arch == "sapiens2"
    assert loaded.spec.head_options[task]["style"] == "sapiens2"
    x = image()
    with torch.no_grad():
        want_features = reference_features(ref.model, x)
        want = getattr(ref(pixel_values=x), output)
        got_features = loaded.model.backbone.forward_features(x)
        got = loaded.model(x)[task]
    assert got_features.shape == want_features.shape == (2, 32, 4, 3)
    assert (got_features - want_features).abs().max() < TOL
    assert got.shape == want.shape
    assert (got - want).abs().max() < TOL
    if task == "seg":
        assert loaded.spec.vocabulary == "sapiens2_29" and got.shape[1] == 29
    if task == "pose":
        assert loaded.spec.keypoint_set == "coco17"


def test_backbone_only_folder_gives_an_init_file(tmp_path) -> None:
    from transformers import Sapiens2Model

    from train.models.multitask import build_model
    from train.models.spec import ModelSpec

    ref = randomised(Sapiens2Model(tiny_config()))
    out = str(tmp_path / "backbone.safetensors")
    assert "backbone only" in convert_sapiens2(save(ref, tmp_path / "hf"), out)
    bspec = backbone_spec(out)
    assert bspec["arch"] == "sapiens2" and bspec["backbone_options"]["hidden_size"] == 32
    with pytest.raises(Exception, match="config"):  # no ModelSpec: not a predictor
        load_finetuned(out)
    spec = ModelSpec(
        arch=bspec["arch"], image_size=SIZE, tasks=("pose",), keypoint_set="coco17",
        backbone_options=bspec["backbone_options"],
    )  # fmt: skip
    model = build_model(spec).eval()
    report = load_init(model, out)
    assert not report.missing and not report.unexpected and len(report.loaded) == len(model.backbone.state_dict())
    x = image()
    with torch.no_grad():
        assert (model.backbone.forward_features(x) - reference_features(ref, x)).abs().max() < TOL


def test_the_convert_command_tells_a_sapiens2_folder_and_init_takes_its_arch(tmp_path, capsys) -> None:
    """`hv train convert-sapiens FOLDER` converts a Sapiens2 folder by itself; `--init` on the backbone file then
    sets model.arch and model.backbone_options, which the user need not know."""
    from transformers import Sapiens2Model

    from humanvision_cli import main
    from train.finetune_config import load_finetune_config

    folder = save(randomised(Sapiens2Model(tiny_config())), tmp_path / "hf")
    out = str(tmp_path / "b.safetensors")
    with pytest.raises(SystemExit) as done:
        main(["train", "convert-sapiens", folder, "--out", out])
    assert done.value.code in (0, None) and "backbone only" in capsys.readouterr().out
    cfg = load_finetune_config(None, ["data.shards=x", "model.image_size=[64,48]"], task="pose", init=out)
    assert cfg.model.arch == "sapiens2" and cfg.model.backbone_options["hidden_size"] == 32
    pinned = load_finetune_config(None, ["model.arch=tiny"], task="pose", init=out)
    assert pinned.model.arch == "tiny"  # what the config or an override sets wins
    with pytest.raises(SystemExit) as done:
        main(["train", "convert-sapiens", folder, "--out", out, "--arch", "sapiens_0.3b"])
    assert done.value.code == 2 and "takes its arch and size from config.json" in capsys.readouterr().err


def test_sharded_folder(tmp_path) -> None:
    from transformers import Sapiens2Model

    ref = randomised(Sapiens2Model(tiny_config()))
    folder = tmp_path / "hf"
    ref.save_pretrained(str(folder), max_shard_size="20KB")
    assert os.path.isfile(folder / "model.safetensors.index.json")
    convert_sapiens2(str(folder), str(tmp_path / "b.safetensors"))


def test_bad_folders_are_refused(tmp_path) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import Sapiens2Model

    with pytest.raises(ValueError, match=r"config\.json"):
        convert_sapiens2(str(tmp_path), str(tmp_path / "x.safetensors"))
    assert not is_sapiens2_checkpoint(str(tmp_path))
    folder = save(randomised(Sapiens2Model(tiny_config())), tmp_path / "hf")
    assert is_sapiens2_checkpoint(folder) and not is_sapiens2_checkpoint(os.path.join(folder, "config.json"))
    weights = os.path.join(folder, "model.safetensors")
    state = load_file(weights)
    # A tensor with no place in our model: refused, listed; allowed (and reported) on request.
    save_file({**state, "foo.bar": torch.zeros(3)}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"foo\.bar"):
        convert_sapiens2(folder, str(tmp_path / "x.safetensors"))
    assert "1 unused tensors dropped" in convert_sapiens2(folder, str(tmp_path / "x.safetensors"), allow_unused=True)
    # A weight of the wrong shape for the config.
    norm = "ln1.weight" if "ln1.weight" in state else "norm.weight"  # the final norm: Meta's name or transformers'
    save_file({**state, norm: torch.ones(7)}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="norm"):
        convert_sapiens2(folder, str(tmp_path / "x.safetensors"))
    # A truncated file.
    save_file(state, weights, metadata={"format": "pt"})
    with open(weights, "rb") as f:
        data = f.read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        convert_sapiens2(folder, str(tmp_path / "x.safetensors"))
    os.remove(weights)
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        convert_sapiens2(folder, str(tmp_path / "x.safetensors"))
    # A head we have no task for.
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["Sapiens2ForPointmapEstimation"]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="Pointmap"):
        convert_sapiens2(folder, str(tmp_path / "x.safetensors"))


def _backbone(**options):
    from train.models.backbones import build_backbone

    cfg = {k: v for k, v in tiny_config(**options).to_dict().items() if k in _keys()}
    return build_backbone("sapiens2", SIZE, **cfg)


def _keys():
    from train.models.sapiens2 import BACKBONE_KEYS

    return BACKBONE_KEYS


def test_bf16_and_kept_tokens() -> None:
    """bf16 runs on CPU close to fp32; MAE's kept-token encoding carries each token's RoPE position (kept in
    order: the full forward; shuffled: the same tokens shuffled)."""
    backbone = _backbone().eval()
    x = image()
    with torch.no_grad():
        full = backbone(x)
        n = (SIZE[0] // 16) * (SIZE[1] // 16)
        order = torch.stack([torch.arange(n), torch.randperm(n, generator=torch.Generator().manual_seed(2))])
        kept = backbone(x, ids_keep=order)
        p = backbone.num_prefix_tokens
        assert (kept[0] - full[0]).abs().max() < TOL
        assert (kept[1, p:] - full[1, p:][order[1]]).abs().max() < TOL
        assert backbone(x, ids_keep=order[:, :5]).shape == (2, p + 5, 32)
        half = backbone.to(torch.bfloat16).forward_features(x)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    ref = full[:, p:].transpose(1, 2).reshape(half.shape)
    assert (half.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_layer_ids_grad_checkpointing_and_mae() -> None:
    from train.config import OptimConfig
    from train.models.mae import MAE, DecoderConfig
    from train.optim import no_weight_decay, param_groups

    backbone = _backbone(pos_embed_rescale=None)
    assert backbone.num_layers == 5
    assert backbone.layer_id("embeddings.register_tokens") == 0
    assert backbone.layer_id("layers.2.mlp.up_proj.weight") == 3
    assert backbone.layer_id("norm.weight") == 4
    groups = param_groups(backbone, OptimConfig(layer_decay=0.9))
    assert sum(len(g["params"]) for g in groups) == len(list(backbone.parameters()))
    for name, p in backbone.named_parameters():
        if name.startswith("embeddings.") and name.endswith(("token", "tokens")):
            assert no_weight_decay(name, p), name  # learned tokens are not decayed
    x = image()
    grads = []
    for ckpt in (False, True):
        backbone.grad_checkpointing = ckpt
        backbone.train().zero_grad()
        backbone.forward_features(x).square().mean().backward()
        grads.append([p.grad.clone() for p in backbone.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))
    mae = MAE(backbone, DecoderConfig(dim=16, depth=1, num_heads=2))
    loss, pred, mask = mae(x)
    loss.backward()
    assert torch.isfinite(loss) and pred.shape == (2, 12, 16 * 16 * 3) and mask.sum() == 2 * 9
    assert backbone.embeddings.patch_embeddings.weight.grad is not None


def test_arch_sizes() -> None:
    """Meta's arch zoo sizes build (on the meta device) to about their names' parameter counts."""
    from train.models.sapiens2 import build_sapiens2

    expect = {"sapiens2_0.1b": 0.1e9, "sapiens2_0.4b": 0.4e9, "sapiens2_0.8b": 0.8e9, "sapiens2_1b": 1.4e9,
              "sapiens2_5b": 5.0e9}  # fmt: skip
    for arch, count in expect.items():
        with torch.device("meta"):
            model = build_sapiens2(arch, (1024, 768))
        params = sum(p.numel() for p in model.parameters())
        assert 0.8 * count < params < 1.2 * count, (arch, params)


@pytest.mark.slow
def test_mae_pretraining_with_a_sapiens2_encoder(tmp_path, shards) -> None:
    """`hv train pretrain` with model.arch=sapiens2: the encoder sees only the kept tokens (with their RoPE
    positions); it starts from a converted transformers backbone (model.init_weights)."""
    from transformers import Sapiens2Model

    import humanvision_cli

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    init = str(tmp_path / "backbone.safetensors")
    convert_sapiens2(save(randomised(Sapiens2Model(tiny_config())), tmp_path / "hf"), init)
    options = json.dumps(backbone_spec(init)["backbone_options"]).replace('"', "")
    out = str(tmp_path / "mae")
    argv = [
        "train", "pretrain", "--config", os.path.join(root, "configs/pretrain/tiny.yaml"), "--out", out,
        "--in-process", f"data.shards={shards}", "steps=2", "data.num_workers=0", "progress=false",
        "tensorboard=false", "model.arch=sapiens2", "model.depth=null", f"model.backbone_options={options}",
        f"model.init_weights={init}",
    ]  # fmt: skip
    args = humanvision_cli.build_parser().parse_args(argv)
    assert int(args.func(args) or 0) == 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2 and all(r["loss"] == r["loss"] for r in rows)


def test_converted_seg_model_predicts_and_exports(tmp_path) -> None:
    """The Predictor (flip test: sapiens2_29's left/right swaps) and a TorchScript export take a converted model."""
    import numpy as np

    from eval.export import ExportFormat, export_checkpoint
    from train.predictor import Predictor

    name, labels, head_config, _ = HEADS["seg"]
    ref = randomised(getattr(transformers, name)(tiny_config(num_labels=labels, head_config=head_config)))
    file = str(tmp_path / "seg.safetensors")
    convert_sapiens2(save(ref, tmp_path / "hf"), file)
    image = np.random.default_rng(0).integers(0, 255, (80, 60, 3), dtype=np.uint8)
    pred = Predictor(file, flip_test=True).dense([image])[0]
    assert pred.seg.shape == (80, 60) and pred.seg.max() < 29
    result = export_checkpoint(file, str(tmp_path / "seg.pt"), ExportFormat.torchscript)
    assert result.max_abs_diff["seg"] < TOL
