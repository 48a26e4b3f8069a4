"""Masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022), as
Sapiens pretrains: mask 75% of the patches at random, encode only the visible ones with the ViT, decode
all of them with a light 512-d x 8-layer transformer, and score the masked patches:

    target = per-patch normalised pixels: (p - mean(p)) / sqrt(var(p) + 1e-6)   (norm_pix)
    loss   = sum_i mask_i * mean_j (pred_ij - target_ij)^2 / sum_i mask_i

    mae = MAE(build_vit("sapiens_0.3b", img_size=(1024, 1024)))
    loss, pred, mask = mae(images)            # images (B, 3, H, W) normalised; pred (B, L, 16*16*3); mask (B, L)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from train.models.layers import Block, gathered, init_weights, sincos_pos_embed
from train.models.vit import ViT, ViTConfig, count_params, vit_flops


@dataclass(frozen=True)
class DecoderConfig:
    dim: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: float = 4.0


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L, p*p*3), patches in row-major order, pixels (py, px, channel) inside a patch."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """(B, L, p*p*3) -> (B, 3, H, W): the inverse of `patchify`."""
    b = patches.shape[0]
    x = patches.reshape(b, grid[0], grid[1], patch, patch, 3)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, 3, grid[0] * patch, grid[1] * patch)


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking from uniform noise (B, L): the lowest-noise tokens stay visible.

    Returns ids_keep (B, L_keep), ids_restore (B, L) to undo the shuffle, and mask (B, L) with 1 = masked.
    """
    b, n = noise.shape
    keep = max(1, round(n * (1 - mask_ratio)))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, n, device=noise.device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], ids_restore, torch.gather(mask, 1, ids_restore)


class MAE(nn.Module):
    def __init__(
        self,
        encoder: ViT,
        decoder: DecoderConfig = DecoderConfig(),
        mask_ratio: float = 0.75,
        norm_pix: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix = norm_pix
        self.patch_size = encoder.patch_size
        grid = encoder.grid
        # The encoder's position embedding stays the fixed 2-D sin-cos table while pretraining (MAE, Sapiens):
        # frozen here, so no optimizer group holds it; fine-tuning (a FinetuneModel) learns it from there.
        # Encoders without one (Sapiens2: RoPE) have nothing to freeze.
        if getattr(encoder, "pos_embed", None) is not None:
            encoder.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder.dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder.dim))
        # Fixed (not learned) as in MAE: the decoder only needs to know where a token sits.
        self.register_buffer("decoder_pos_embed", torch.zeros(1, grid[0] * grid[1], decoder.dim), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder.dim, decoder.num_heads, decoder.mlp_ratio) for _ in range(decoder.depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder.dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder.dim, self.patch_size**2 * 3)
        self._grid = grid
        if self.mask_token.device.type != "meta":
            self.decoder_pos_embed.copy_(sincos_pos_embed(decoder.dim, grid).unsqueeze(0))
            decoder_modules = (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred)
            own = [self.mask_token] + [p for m in decoder_modules for p in m.parameters()]
            with gathered(own), torch.no_grad():
                nn.init.normal_(self.mask_token, std=0.02)
                for module in decoder_modules:
                    module.apply(init_weights)

    def layer_id(self, name: str) -> int:
        """Encoder layers as the ViT numbers them; the whole decoder is the last layer."""
        if name.startswith("encoder."):
            return self.encoder.layer_id(name[len("encoder.") :])
        return self.encoder.num_layers - 1

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def forward(
        self, images: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) at the encoder's build size, fp32 (the encoder casts them to its own dtype; the
        target is built from these fp32 pixels, so a bf16 model still learns fp32-normalised patches); noise
        (B, L) uniform, drawn here if None.

        Returns loss (scalar), pred (B, L, p*p*3) in normalised-patch units, mask (B, L) with 1 = masked.
        """
        b, _, h, w = images.shape
        grid = (h // self.patch_size, w // self.patch_size)
        if grid != self._grid:
            raise ValueError(f"MAE was built for a {self._grid} token grid, got images of {h}x{w}")
        n = grid[0] * grid[1]
        if noise is None:
            noise = torch.rand(b, n, device=images.device)
        ids_keep, ids_restore, mask = random_masking(noise, self.mask_ratio)
        latent = self.encoder(images, ids_keep=ids_keep)  # (B, L_keep, C), after any cls / register tokens
        latent = latent[:, getattr(self.encoder, "num_prefix_tokens", 0) :]
        pred = self.forward_decoder(latent, ids_restore)  # (B, L, p*p*3)
        return self.forward_loss(images, pred, mask), pred, mask

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)  # (B, L_keep, D)
        b, keep, d = x.shape
        n = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, n - keep, d)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # back to image order
        x = x + self.decoder_pos_embed.to(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.patch_size).float()
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum()


def mae_params(vit: ViTConfig, decoder: DecoderConfig = DecoderConfig()) -> int:
    """Parameters of the MAE pretraining model (encoder + decoder), counted on the meta device."""
    with torch.device("meta"):
        model = MAE(ViT(vit), decoder)
    return sum(p.numel() for p in model.parameters())


def mae_flops(vit: ViTConfig, decoder: DecoderConfig = DecoderConfig(), mask_ratio: float = 0.75) -> float:
    """Forward FLOPs of one MAE step on one image: encoder on the visible tokens, decoder on all."""
    h, w = vit.img_size
    n = (h // vit.patch_size) * (w // vit.patch_size)
    keep = max(1, round(n * (1 - mask_ratio)))
    dec = ViTConfig(embed_dim=decoder.dim, depth=decoder.depth, num_heads=decoder.num_heads, img_size=vit.img_size)
    dec_flops = vit_flops(dec, tokens=n) - 2 * n * 3 * vit.patch_size**2 * decoder.dim  # no patch conv
    heads = 2 * keep * vit.embed_dim * decoder.dim + 2 * n * decoder.dim * vit.patch_size**2 * 3
    return vit_flops(vit, tokens=keep) + dec_flops + heads


__all__ = [
    "MAE",
    "DecoderConfig",
    "count_params",
    "mae_flops",
    "mae_params",
    "patchify",
    "random_masking",
    "unpatchify",
]
