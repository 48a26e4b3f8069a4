"""The Sapiens (mmpretrain) checkpoint converter, on a state dict built with the public names and shapes."""

from __future__ import annotations

import pytest
import torch

from train.models.convert_sapiens import convert_state_dict, load_checkpoint_file
from train.models.vit import build_vit


def mmpretrain_state(depth: int = 2, c: int = 192, grid: int = 4) -> dict:
    sd = {
        "backbone.cls_token": torch.randn(1, 1, c),
        "backbone.pos_embed": torch.randn(1, 1 + grid * grid, c),
        "backbone.patch_embed.projection.weight": torch.randn(c, 3, 16, 16),
        "backbone.patch_embed.projection.bias": torch.randn(c),
        "backbone.ln1.weight": torch.randn(c),
        "backbone.ln1.bias": torch.randn(c),
        "head.final_layer.weight": torch.randn(308, 768, 1, 1),
    }
    for i in range(depth):
        p = f"backbone.layers.{i}."
        sd.update({p + "ln1.weight": torch.randn(c), p + "ln1.bias": torch.randn(c)})
        sd.update({p + "ln2.weight": torch.randn(c), p + "ln2.bias": torch.randn(c)})
        sd.update({p + "attn.qkv.weight": torch.randn(3 * c, c), p + "attn.qkv.bias": torch.randn(3 * c)})
        sd.update({p + "attn.proj.weight": torch.randn(c, c), p + "attn.proj.bias": torch.randn(c)})
        sd.update({p + "ffn.layers.0.0.weight": torch.randn(4 * c, c), p + "ffn.layers.0.0.bias": torch.randn(4 * c)})
        sd.update({p + "ffn.layers.1.weight": torch.randn(c, 4 * c), p + "ffn.layers.1.bias": torch.randn(c)})
    return {"meta": {"epoch": 1600}, "state_dict": sd}


def test_converted_weights_load_strictly_and_keep_values(tmp_path) -> None:
    ckpt = mmpretrain_state()
    path = tmp_path / "sapiens.pth"
    torch.save(ckpt, path)
    state, ignored = convert_state_dict(load_checkpoint_file(str(path)), grid=(4, 4))
    assert ignored == ["cls_token", "head.final_layer.weight"]
    vit = build_vit("tiny", img_size=(64, 64), depth=2)
    vit.load_state_dict(state, strict=True)
    src = ckpt["state_dict"]
    torch.testing.assert_close(vit.blocks[1].mlp.fc1.weight, src["backbone.layers.1.ffn.layers.0.0.weight"])
    torch.testing.assert_close(vit.norm.bias, src["backbone.ln1.bias"])
    torch.testing.assert_close(vit.pos_embed, src["backbone.pos_embed"][:, 1:])  # the cls slot dropped
    # To a 1024x768-like (4 x 3) grid: resampled, not cut.
    state, _ = convert_state_dict(ckpt, grid=(4, 3))
    build_vit("tiny", img_size=(64, 48), depth=2).load_state_dict(state, strict=True)


def test_converter_rejects_what_it_cannot_map(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a Sapiens"):
        convert_state_dict({"weight": torch.zeros(2)}, grid=(4, 4))
    odd = mmpretrain_state()
    odd["state_dict"]["backbone.pos_embed"] = torch.zeros(1, 13, 192)
    with pytest.raises(ValueError, match="square"):
        convert_state_dict(odd, grid=(4, 4))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        load_checkpoint_file(str(junk))
