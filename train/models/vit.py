"""The Sapiens ViT backbone: patch 16, pre-norm blocks, learnable patch position embeddings, no cls token.

    from train.models.vit import ARCHS, build_vit
    vit = build_vit("sapiens_0.3b", img_size=(1024, 768))
    feats = vit.forward_features(images)                 # (B, 3, 1024, 768) -> (B, 1024, 64, 48)
    maps = vit.forward_intermediates(images, [5, 11, 17, 23])

Any H x W divisible by 16 works: position embeddings are resampled (bicubic) from the grid the model
was built for. The cls token of the public Sapiens checkpoints is dropped (their fine-tuning does not
use it either: with_cls_token=False, out_type='featmap'), so every token is a patch.

ZeRO-3 note: parameters are gathered by hooks around `Module.__call__`, so the feature methods go
through `self(...)` rather than touching `pos_embed` outside `forward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from train.models.layers import Block, PatchEmbed, gathered, init_weights, resize_pos_embed, sincos_pos_embed


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    mlp_ratio: float = 4.0
    img_size: tuple[int, int] = (1024, 1024)  # the grid position embeddings are stored for (pretraining size)
    patch_padding: int = 0  # 2 for Sapiens' pose checkpoints
    drop_path: float = 0.0  # stochastic depth rate of the last block (linear from 0); fine-tuning uses it
    grad_checkpointing: bool = False  # recompute blocks in backward: ~1/3 more compute, far less activation memory


# From DESIGN.md and the public Sapiens configs; tiny/small are DeiT's sizes, for CPU tests and demos.
ARCHS: dict[str, ViTConfig] = {
    "tiny": ViTConfig(embed_dim=192, depth=12, num_heads=3, img_size=(224, 224)),
    "small": ViTConfig(embed_dim=384, depth=12, num_heads=6, img_size=(224, 224)),
    "sapiens_0.3b": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    "sapiens_0.6b": ViTConfig(embed_dim=1280, depth=32, num_heads=16),
    "sapiens_1b": ViTConfig(embed_dim=1536, depth=40, num_heads=24),
    "sapiens_2b": ViTConfig(embed_dim=1920, depth=48, num_heads=32),
}


def arch_config(arch: str, img_size: Sequence[int] | None = None, **overrides) -> ViTConfig:
    """The ViTConfig of a named arch with overrides; a bad name or field fails with the list of good ones."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    cfg = ARCHS[arch]
    if img_size is not None:
        overrides["img_size"] = tuple(int(v) for v in img_size)
    bad = sorted(set(overrides) - set(ViTConfig.__dataclass_fields__))
    if bad:
        raise ValueError(f"unknown ViT option(s) {bad}; known: {sorted(ViTConfig.__dataclass_fields__)}")
    return replace(cfg, **overrides)


def build_vit(arch: str, img_size: Sequence[int] | None = None, **overrides) -> ViT:
    return ViT(arch_config(arch, img_size, **overrides))


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        h, w = cfg.img_size
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {cfg.patch_size}")
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.depth = cfg.depth
        self.grid = (h // cfg.patch_size, w // cfg.patch_size)
        self.grad_checkpointing = cfg.grad_checkpointing
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim, padding=cfg.patch_padding)
        # Learnable, started from sin-cos so that a fresh model already knows where each patch is.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], cfg.embed_dim))
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.pos_embed.device.type == "meta":
            return
        with gathered(list(self.parameters())), torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed(self.embed_dim, self.grid).unsqueeze(0))
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer over the flattened patch (MAE)
            nn.init.zeros_(self.patch_embed.proj.bias)
            self.blocks.apply(init_weights)
            init_weights(self.norm)

    # ------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Images (B, 3, H, W) -> normalised tokens (B, L, C).

        ids_keep: (B, L) indices of the patch tokens to keep (MAE's visible set); all tokens if None.
        indices: return the tokens after these blocks instead (a list of (B, L, C); the last block's
            output is normalised, as timm does, so index -1 equals the features).
        """
        tokens, grid = self.patch_embed(x)  # (B, h*w, C)
        tokens = tokens + resize_pos_embed(self.pos_embed, self.grid, grid)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        wanted = None if indices is None else {self._block_index(i) for i in indices}
        outs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if wanted is not None and i in wanted:
                outs[i] = self.norm(tokens) if i == self.depth - 1 else tokens
        if indices is None:
            return self.norm(tokens)
        return [outs[self._block_index(i)] for i in indices]

    def _block_index(self, i: int) -> int:
        j = i + self.depth if i < 0 else i
        if not 0 <= j < self.depth:
            raise IndexError(f"block index {i} out of range for depth {self.depth}")
        return j

    def token_grid(self, x: torch.Tensor) -> tuple[int, int]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not divisible by the patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    def _to_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/16, W/16) feature map of the final (normalised) tokens."""
        grid = self.token_grid(x)
        return self._to_map(self(x), grid)

    def forward_intermediates(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, C, H/16, W/16) map per block index (negative counts from the end)."""
        grid = self.token_grid(x)
        return [self._to_map(t, grid) for t in self(x, indices=list(indices))]

    # ----------------------------------------------------------------------------- layer-wise LR decay

    def layer_id(self, name: str) -> int:
        """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm (layer-wise LR decay)."""
        if name.startswith(("patch_embed", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    @property
    def num_layers(self) -> int:
        """How many layer ids `layer_id` can return (depth + 2)."""
        return self.depth + 2


def count_params(cfg: ViTConfig) -> int:
    """Parameters of a ViTConfig, counted on the meta device (no memory, any size)."""
    with torch.device("meta"):
        model = ViT(cfg)
    return sum(p.numel() for p in model.parameters())


def vit_flops(cfg: ViTConfig, img_size: Sequence[int] | None = None, tokens: int | None = None) -> float:
    """Forward FLOPs for one image (2 per multiply-add): linears, attention scores and weighting, patch conv.

    Norms, GELU and softmax are left out (under 1% at these sizes). `tokens` overrides the token count
    (the MAE encoder sees a quarter of them).
    """
    h, w = img_size if img_size is not None else cfg.img_size
    n_all = (h // cfg.patch_size) * (w // cfg.patch_size)
    n = n_all if tokens is None else tokens
    c, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    per_block = 2 * n * (3 * c * c + c * c + 2 * c * hidden) + 2 * 2 * n * n * c
    patch = 2 * n_all * 3 * cfg.patch_size**2 * c
    return float(cfg.depth * per_block + patch)
