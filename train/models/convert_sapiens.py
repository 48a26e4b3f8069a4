"""Meta's released Sapiens weights (mmpretrain VisionTransformer key names) -> this project's ViT.

    hv train convert-sapiens sapiens_0.3b_epoch_1600_clean.pth --arch sapiens_0.3b --out sapiens_0.3b.safetensors
    vit = build_vit("sapiens_0.3b", img_size=(1024, 768)); load_into(vit, "sapiens_0.3b.safetensors")

The mapping (per block i; prefixes `backbone.`, `module.` and a `state_dict`/`model` wrapper are removed):

| Sapiens (mmpretrain)                         | ours                                  |
|----------------------------------------------|---------------------------------------|
| patch_embed.projection.{weight,bias}         | patch_embed.proj.{weight,bias}        |
| pos_embed (1, 1 + h*w, C), cls slot first    | pos_embed (1, h*w, C), resampled      |
| cls_token                                    | dropped (no cls token here)           |
| layers.i.ln1 / ln2                           | blocks.i.norm1 / norm2                |
| layers.i.attn.qkv / attn.proj                | blocks.i.attn.qkv / attn.proj         |
| layers.i.ffn.layers.0.0 / ffn.layers.1       | blocks.i.mlp.fc1 / mlp.fc2            |
| ln1 (final norm; `pre_norm` is not used)     | norm                                  |

Anything else (a task head, an MAE decoder) is reported as ignored, never silently loaded. The public
pretraining checkpoints hold the encoder only. Pose checkpoints were trained with patch padding 2:
build the ViT with `patch_padding=2` to use them as trained.
"""

from __future__ import annotations

import math
import re

import torch

from train.models.layers import resize_pos_embed

_BLOCK_MAP = {
    "ln1": "norm1",
    "ln2": "norm2",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.proj",
    "ffn.layers.0.0": "mlp.fc1",
    "ffn.layers.1": "mlp.fc2",
}
_BLOCK_RE = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_PREFIXES = ("module.", "backbone.")


def unwrap(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (mmengine saves {'meta', 'state_dict', ...})."""
    for key in ("state_dict", "model", "module"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            return unwrap(checkpoint[key])
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def convert_state_dict(
    checkpoint: dict, grid: tuple[int, int], source_grid: tuple[int, int] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our ViT state dict, ignored source keys). `grid` is the target token grid (H/16, W/16);
    `source_grid` the checkpoint's (inferred when its position embedding is square, as in pretraining)."""
    src = {_strip(k): v for k, v in unwrap(checkpoint).items()}
    if not any(k.startswith("layers.") for k in src):
        raise ValueError("not a Sapiens/mmpretrain ViT checkpoint: no 'layers.N.*' keys")
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in src.items():
        value = value.float()
        m = _BLOCK_RE.match(key)
        if m and m.group(2) in _BLOCK_MAP:
            out[f"blocks.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}.{m.group(3)}"] = value
        elif key.startswith("patch_embed.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key in ("ln1.weight", "ln1.bias"):
            out["norm." + key.split(".")[1]] = value
        elif key == "pos_embed":
            out["pos_embed"] = _convert_pos_embed(value, grid, source_grid)
        else:
            ignored.append(key)
    return out, ignored


def _convert_pos_embed(pos: torch.Tensor, grid: tuple[int, int], source_grid: tuple[int, int] | None) -> torch.Tensor:
    n = pos.shape[1]
    if source_grid is not None:
        tokens = source_grid[0] * source_grid[1]
        if n not in (tokens, tokens + 1):
            raise ValueError(f"pos_embed has {n} tokens, source grid {source_grid} needs {tokens} (+1 cls)")
    else:
        side = math.isqrt(n - 1)
        if side * side == n - 1:
            tokens, source_grid = n - 1, (side, side)
        elif math.isqrt(n) ** 2 == n:
            tokens, source_grid = n, (math.isqrt(n), math.isqrt(n))
        else:
            raise ValueError(f"pos_embed has {n} tokens, not a square grid: pass the source grid (H/16, W/16)")
    patch_pos = pos[:, n - tokens :]  # the cls slot, if any, comes first
    return resize_pos_embed(patch_pos, source_grid, grid)


def load_checkpoint_file(path: str) -> dict:
    """A .pth/.pt checkpoint (tensors only, `weights_only`) or a TorchScript export's state dict."""
    import zipfile

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as first:
        if zipfile.is_zipfile(path):
            try:
                return dict(torch.jit.load(path, map_location="cpu").state_dict())
            except Exception:
                pass
        raise ValueError(
            f"{path}: cannot read it as a tensors-only checkpoint ({type(first).__name__}: {first}). "
            "If you trust the file, re-save it with only its state_dict."
        ) from None
