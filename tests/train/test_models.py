"""The ViT and the MAE: every arch builds, shapes, position-embedding resampling, masking, overfitting."""

from __future__ import annotations

import pytest
import torch

from train.config import OptimConfig
from train.models.layers import resize_pos_embed, sincos_pos_embed
from train.models.mae import MAE, DecoderConfig, mae_params, patchify, random_masking, unpatchify
from train.models.vit import ARCHS, ViT, arch_config, build_vit, count_params, vit_flops

# DESIGN.md's parameter counts: the public figures are the MAE pretraining model (encoder + decoder).
DESIGN_PARAMS = {"sapiens_0.3b": 0.34e9, "sapiens_0.6b": 0.66e9, "sapiens_1b": 1.17e9, "sapiens_2b": 2.16e9}


@pytest.mark.parametrize("arch", ["tiny", "small"])
def test_small_archs_forward_backward(arch: str) -> None:
    torch.manual_seed(0)
    vit = build_vit(arch, img_size=(64, 48), depth=2)
    x = torch.randn(2, 3, 64, 48)
    feats = vit.forward_features(x)
    assert feats.shape == (2, ARCHS[arch].embed_dim, 4, 3)
    assert torch.isfinite(feats).all()
    feats.square().mean().backward()
    grads = [p.grad for p in vit.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert vit.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", [a for a in ARCHS if a.startswith("sapiens")])
def test_sapiens_archs_on_meta_match_design_counts(arch: str) -> None:
    cfg = ARCHS[arch]
    with torch.device("meta"):
        vit = ViT(cfg)
        out = vit.forward_features(torch.empty(1, 3, 1024, 768))
    assert out.shape == (1, cfg.embed_dim, 64, 48)
    total = mae_params(cfg)
    assert abs(total - DESIGN_PARAMS[arch]) / DESIGN_PARAMS[arch] < 0.03
    # The backbone alone is the 12 * C^2 per block of a ViT plus embeddings: a sanity bound on the formula.
    assert 12 * cfg.embed_dim**2 * cfg.depth < count_params(cfg) < total


def test_unknown_arch_and_option_fail_with_choices() -> None:
    with pytest.raises(ValueError, match=r"sapiens_0\.3b"):
        build_vit("sapiens_3b")
    with pytest.raises(ValueError, match="unknown ViT option"):
        arch_config("tiny", embed_dims=3)
    with pytest.raises(ValueError, match="divisible"):
        build_vit("tiny", img_size=(60, 64))
    vit = build_vit("tiny", img_size=(64, 64), depth=1)
    with pytest.raises(ValueError, match="divisible"):
        vit.forward_features(torch.zeros(1, 3, 50, 64))
    with pytest.raises(IndexError):
        vit.forward_intermediates(torch.zeros(1, 3, 64, 64), [3])


def test_intermediates_last_equals_features_and_order() -> None:
    torch.manual_seed(0)
    vit = build_vit("tiny", img_size=(32, 32), depth=3).eval()
    x = torch.randn(1, 3, 32, 32)
    maps = vit.forward_intermediates(x, [0, 1, -1])
    assert [m.shape for m in maps] == [(1, 192, 2, 2)] * 3
    torch.testing.assert_close(maps[-1], vit.forward_features(x))
    assert not torch.allclose(maps[0], maps[1])


def test_other_resolution_resamples_position_embeddings() -> None:
    torch.manual_seed(0)
    vit = build_vit("tiny", img_size=(64, 64), depth=1).eval()
    out = vit.forward_features(torch.randn(1, 3, 96, 48))
    assert out.shape == (1, 192, 6, 3)
    # Resampling a grid to itself is the identity; a sin-cos table resampled stays close to the exact one.
    pos = sincos_pos_embed(32, (4, 4)).unsqueeze(0)
    assert resize_pos_embed(pos, (4, 4), (4, 4)) is pos
    resized = resize_pos_embed(sincos_pos_embed(32, (8, 8)).unsqueeze(0), (8, 8), (16, 16))
    assert resized.shape == (1, 256, 32)
    with pytest.raises(ValueError, match="tokens"):
        resize_pos_embed(pos, (5, 5), (4, 4))


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    plain = build_vit("tiny", img_size=(32, 32), depth=2)
    ckpt = build_vit("tiny", img_size=(32, 32), depth=2, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for model in (plain, ckpt):
        model.forward_features(x).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_layer_ids_cover_embeddings_blocks_and_norm() -> None:
    vit = build_vit("tiny", img_size=(32, 32), depth=3)
    ids = {name: vit.layer_id(name) for name, _ in vit.named_parameters()}
    assert ids["pos_embed"] == 0 and ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.2.mlp.fc2.bias"] == 3
    assert ids["norm.weight"] == 4 == vit.num_layers - 1


def test_flops_formula_counts_linears_and_attention() -> None:
    cfg = arch_config("tiny", img_size=(32, 32), depth=1)
    n, c = 4, 192
    expected = 2 * n * 12 * c * c + 4 * n * n * c + 2 * n * 3 * 256 * c
    assert vit_flops(cfg) == expected


def test_patchify_roundtrip_and_masking() -> None:
    x = torch.randn(2, 3, 32, 48)
    p = patchify(x, 16)
    assert p.shape == (2, 6, 768)
    torch.testing.assert_close(p[0, 1], x[0, :, 0:16, 16:32].permute(1, 2, 0).reshape(-1))
    torch.testing.assert_close(unpatchify(p, 16, (2, 3)), x)
    noise = torch.rand(3, 16)
    keep, restore, mask = random_masking(noise, 0.75)
    assert keep.shape == (3, 4) and mask.sum().item() == 3 * 12
    # Kept tokens are the unmasked ones, and restore undoes the shuffle.
    assert torch.all(torch.gather(mask, 1, keep) == 0)
    assert torch.equal(torch.gather(torch.argsort(noise, 1), 1, restore), torch.arange(16).expand(3, 16))


def test_mae_overfits_eight_images() -> None:
    torch.manual_seed(0)
    mae = MAE(build_vit("tiny", img_size=(32, 32), depth=2), DecoderConfig(dim=64, depth=1, num_heads=4))
    images = torch.randn(8, 3, 32, 32)
    noise = torch.rand(8, 4)
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, pred, mask = mae(images, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert pred.shape == (8, 4, 768) and mask.shape == (8, 4)
    assert losses[-1] < 0.6 * losses[0]  # memorising noise patches: steady, not fast


def test_mae_rejects_wrong_size_and_ratio() -> None:
    mae = MAE(build_vit("tiny", img_size=(32, 32), depth=1), DecoderConfig(dim=64, depth=1, num_heads=4))
    with pytest.raises(ValueError, match="token grid"):
        mae(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="mask_ratio"):
        MAE(build_vit("tiny", img_size=(32, 32), depth=1), mask_ratio=1.0)


def test_mae_keeps_the_encoder_position_embedding_fixed_sincos() -> None:
    """MAE and Sapiens pretrain with the fixed 2-D sin-cos table; fine-tuning learns it from there."""
    from train.engine import param_groups
    from train.models.multitask import FinetuneModel

    torch.manual_seed(0)
    mae = MAE(build_vit("tiny", img_size=(32, 32), depth=1), DecoderConfig(dim=64, depth=1, num_heads=4))
    table = sincos_pos_embed(192, (2, 2)).unsqueeze(0)
    assert not mae.encoder.pos_embed.requires_grad and torch.equal(mae.encoder.pos_embed, table)
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=1e-2)
    loss, _, _ = mae(torch.randn(4, 3, 32, 32))
    loss.backward()
    opt.step()
    assert torch.equal(mae.encoder.pos_embed, table)
    in_groups = {id(p) for g in param_groups(mae, OptimConfig()) for p in g["params"]}
    assert id(mae.encoder.pos_embed) not in in_groups
    assert build_vit("tiny", img_size=(32, 32), depth=1).pos_embed.requires_grad  # a backbone to fine-tune learns it
    assert FinetuneModel(build_vit("tiny", img_size=(32, 32), depth=1), {}).backbone.pos_embed.requires_grad


def test_bf16_mae_takes_fp32_images_and_builds_its_target_from_them() -> None:
    """The encoder casts the images to its dtype; the norm-pix target comes from the fp32 pixels (bf16 keeps 8
    bits of mantissa: a target from bf16 pixels would be off by up to ~0.4% of each pixel)."""
    torch.manual_seed(0)
    mae = MAE(build_vit("tiny", img_size=(32, 32), depth=1), DecoderConfig(dim=64, depth=1, num_heads=4))
    mae = mae.to(torch.bfloat16)
    images, noise = torch.randn(2, 3, 32, 32) * 3 + 1, torch.rand(2, 4)
    loss, pred, mask = mae(images, noise=noise)
    assert pred.dtype == torch.bfloat16 and loss.dtype == torch.float32

    def expected(pixels: torch.Tensor) -> torch.Tensor:
        target = patchify(pixels.float(), 16)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        return (((pred.float() - target) ** 2).mean(-1) * mask).sum() / mask.sum()

    assert loss.item() == pytest.approx(expected(images).item(), rel=1e-6)
    assert abs(expected(images.bfloat16()).item() - loss.item()) > 1e-5  # the test can tell the two apart
