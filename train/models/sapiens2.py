"""The Sapiens2 backbone (Meta, 2026) and its task heads, through the reference implementation in `transformers`.

    backbone = build_sapiens2("sapiens2_0.4b", (1024, 768))
    backbone.forward_features(images)           # (B, 3, 1024, 768) -> (B, 1024, 64, 48), register tokens dropped
    backbone.embed_dim, backbone.layer_id(name), backbone.num_layers
    tokens = backbone(images, ids_keep=ids)     # MAE: only the kept patch tokens (each with its own RoPE position)

Sapiens2 is a pre-norm ViT with RMSNorm, QK-norm, RoPE on the patch tokens, a cls token and register tokens,
a SwiGLU MLP, layer scale on the attention branch and grouped-query attention in its middle layers. The
modules are `transformers`' own (`Sapiens2Embeddings`, `Sapiens2Layer`, `Sapiens2RMSNorm`), so a
`save_pretrained` folder's tensors load unchanged (`train.models.convert_sapiens2`); this module only lays
them out the way the rest of the package expects and adds layer ids, stochastic depth and MAE token dropping.

Arch sizes (`ARCHS`) are those of Meta's reference code (facebookresearch/sapiens2,
`sapiens/backbones/standalone/sapiens2.py`, `arch_zoo`): hidden size, layers, heads, a SwiGLU width of 4x
the hidden size, 8 register ("storage") tokens, full attention in the first and last 8 layers and half the
key/value heads in between. `options` are any `Sapiens2Config` backbone fields and override the arch (a
converted checkpoint stores its whole backbone config as `ModelSpec.backbone_options`, so any size builds).

Heads (`Sapiens2Head`, head style "sapiens2"): the decode head of `Sapiens2For{Pose,Normal}Estimation` and
`Sapiens2ForSemanticSegmentation`, built from its `Sapiens2HeadConfig` fields (JSON, `ModelSpec.head_options`).
Its output stride is what its config makes it (the released seg and normal heads predict at the input's
size, the pose head at 1/4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from train.models.layers import DropPath, gathered

# Meta's arch_zoo (see the module docstring): hidden size, layers, heads.
_ZOO: dict[str, tuple[int, int, int]] = {
    "sapiens2_0.1b": (768, 12, 12),
    "sapiens2_0.4b": (1024, 24, 16),
    "sapiens2_0.8b": (1280, 32, 16),
    "sapiens2_1b": (1536, 40, 24),
    "sapiens2_5b": (2432, 56, 32),
}


def _arch(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "num_key_value_attention_heads": heads // 2,
        "num_first_full_attention_layers": 8,
        "num_last_full_attention_layers": 8,
        "num_register_tokens": 8,
        "use_gated_mlp": True,
        "use_qk_norm": True,
        "layerscale_value": 1e-4,  # Meta's layer_scale_init_value
    }


# "sapiens2": transformers' `Sapiens2Config` defaults, for any size given whole in `options` (what a converted
# checkpoint whose size is none of the zoo's names, such as a small test model, is built as).
ARCHS: dict[str, dict[str, Any]] = {**{name: _arch(*size) for name, size in _ZOO.items()}, "sapiens2": {}}

# The `Sapiens2Config` fields that shape the backbone (what `backbone_options` may hold); the rest of a config is
# its head's (`head_config`, `num_labels`, `flip_pairs`, ...) or transformers' bookkeeping.
BACKBONE_KEYS: tuple[str, ...] = (
    "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
    "attention_dropout", "initializer_range", "rope_theta", "num_channels", "query_bias", "key_bias", "value_bias",
    "proj_bias", "mlp_bias", "layerscale_value", "drop_path_rate", "use_gated_mlp", "num_register_tokens",
    "pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale", "use_mask_token", "rms_norm_eps", "use_qk_norm",
    "num_key_value_heads_per_layer", "num_key_value_attention_heads", "num_first_full_attention_layers",
    "num_last_full_attention_layers",
)  # fmt: skip


def backbone_config(arch: str, depth: int | None = None, **options: Any) -> dict[str, Any]:
    """The `Sapiens2Config` backbone fields of `arch` with `options` over them; `depth` overrides the layer count.
    ValueError naming the unknown arch or option."""
    if arch not in ARCHS:
        raise ValueError(f"unknown Sapiens2 arch {arch!r}; choose one of {', '.join(ARCHS)}")
    bad = sorted(set(options) - set(BACKBONE_KEYS))
    if bad:
        raise ValueError(f"unknown Sapiens2 backbone option(s) {bad}; known: {', '.join(BACKBONE_KEYS)}")
    cfg = {**ARCHS[arch], **options}
    if depth:
        cfg["num_hidden_layers"] = int(depth)
        per_layer = cfg.get("num_key_value_heads_per_layer")
        if per_layer is not None and len(per_layer) != depth:
            cfg.pop("num_key_value_heads_per_layer")  # re-derived from the first/last full-attention counts
    return cfg


def _import_transformers() -> None:
    """Import transformers' Sapiens2 modules, stepping outside `deepspeed.zero.Init`'s patches for it the first
    time: importing them imports torch._dynamo, which fails on the Tensor constructor zero.Init patches."""
    import sys

    name = "transformers.models.sapiens2.modeling_sapiens2"
    if name in sys.modules:
        return
    zero = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    patched = zero is not None and getattr(zero, "top_level_context", None) is not None
    if patched:
        zero.shutdown_init_context()
    try:
        import transformers.models.sapiens2.modeling_sapiens2  # noqa: F401
    finally:
        if patched:
            zero.restore_init_context()


class Sapiens2Backbone(nn.Module):
    """transformers' Sapiens2 encoder laid out as `embeddings`, `layers.N`, `norm` (the final RMSNorm).

    forward(images (B, 3, H, W), ids_keep (B, L) or None) -> normalised tokens (B, 1 + R + L, C): the cls token,
    R register tokens, then the patch tokens (all of them, or those of ids_keep in that order).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        img_size: Sequence[int],
        drop_path: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _import_transformers()
        from transformers import Sapiens2Config
        from transformers.models.sapiens2.modeling_sapiens2 import (
            Sapiens2Embeddings,
            Sapiens2Layer,
            Sapiens2RMSNorm,
        )

        h, w = (int(v) for v in img_size)
        self.config = Sapiens2Config(**{**config, "drop_path_rate": 0.0}, image_size=[h, w])
        self.config._attn_implementation = "sdpa"
        cfg = self.config
        self.patch_size = int(cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0])
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {self.patch_size}")
        self.embed_dim = cfg.hidden_size
        self.depth = cfg.num_hidden_layers
        self.num_prefix_tokens = 1 + cfg.num_register_tokens
        self.grid = (h // self.patch_size, w // self.patch_size)
        self.grad_checkpointing = grad_checkpointing
        self.embeddings = Sapiens2Embeddings(cfg)
        self.layers = nn.ModuleList(Sapiens2Layer(cfg, layer_idx=i) for i in range(self.depth))
        self.norm = Sapiens2RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        # Stochastic depth rising linearly to `drop_path` at the last layer (as this package's ViT; transformers
        # uses one rate for all layers).
        for i, layer in enumerate(self.layers):
            rate = drop_path * i / max(self.depth - 1, 1)
            layer.drop_path = DropPath(rate) if rate > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """transformers' initialisation (`Sapiens2PreTrainedModel._init_weights`), done here so that it also
        holds under `deepspeed.zero.Init`, where each weight is partitioned as soon as its module is built."""
        if self.embeddings.cls_token.device.type == "meta":
            return
        std = self.config.initializer_range
        with gathered(list(self.parameters())), torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.init.trunc_normal_(module.weight, std=std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            nn.init.trunc_normal_(self.embeddings.cls_token, std=std)
            nn.init.trunc_normal_(self.embeddings.register_tokens, std=std)
            if self.embeddings.mask_token is not None:
                nn.init.zeros_(self.embeddings.mask_token)
            for name, p in self.named_parameters():
                if name.endswith("lambda1"):
                    p.fill_(self.config.layerscale_value)
                elif name.endswith("norm.weight") or name.endswith(("norm1.weight", "norm2.weight")):
                    p.fill_(1.0)

    # ------------------------------------------------------------------------------------------ forward

    def rope(self, grid: tuple[int, int], dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(cos, sin), each (h*w, head_dim), of the patch grid: transformers' `Sapiens2RopePositionEmbedding`,
        computed in fp32 from the config every call (a buffer cast to bf16 with the model would lose precision);
        in training the coordinates get the config's random shift / jitter / rescale."""
        from transformers.models.sapiens2.modeling_sapiens2 import (
            augment_patches_center_coordinates,
            get_patches_center_coordinates,
        )

        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        coords = get_patches_center_coordinates(grid[0], grid[1], dtype=torch.float32, device=device)
        if self.training:
            coords = augment_patches_center_coordinates(
                coords, shift=cfg.pos_embed_shift, jitter=cfg.pos_embed_jitter, rescale=cfg.pos_embed_rescale
            )
        inv_freq = 1 / cfg.rope_theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32, device=device)
        angles = (2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]).flatten(1, 2).tile(2)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        grid = self.token_grid(x)
        # transformers' attention by name, read by every layer: SDPA, or its plain-matmul twin while tracing for
        # an export (the ONNX exporter has no SDPA with grouped-query heads).
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        self.config._attn_implementation = "eager" if tracing else "sdpa"
        x = x.to(self.embeddings.patch_embeddings.weight.dtype)
        tokens = self.embeddings(x)  # (B, P + h*w, C)
        cos, sin = self.rope(grid, x.dtype, x.device)
        if ids_keep is not None:
            p = self.num_prefix_tokens
            index = ids_keep.unsqueeze(-1)
            patches = torch.gather(tokens[:, p:], 1, index.expand(-1, -1, tokens.shape[-1]))
            tokens = torch.cat([tokens[:, :p], patches], dim=1)
            # Per-sample positions (B, 1, L, D): broadcast over the heads as the shared (L, D) ones are.
            cos = torch.gather(cos.expand(len(ids_keep), -1, -1), 1, index.expand(-1, -1, cos.shape[-1]))[:, None]
            sin = torch.gather(sin.expand(len(ids_keep), -1, -1), 1, index.expand(-1, -1, sin.shape[-1]))[:, None]
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(layer, tokens, None, (cos, sin), use_reentrant=False)
            else:
                tokens = layer(tokens, position_embeddings=(cos, sin))
        return self.norm(tokens)

    def token_grid(self, x: torch.Tensor) -> tuple[int, int]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not divisible by the patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/16, W/16): the final normalised patch tokens (cls and registers dropped)."""
        grid = self.token_grid(x)
        patches = self(x)[:, self.num_prefix_tokens :]
        b, _, c = patches.shape
        return patches.transpose(1, 2).reshape(b, c, grid[0], grid[1])

    # ----------------------------------------------------------------------------- layer-wise LR decay

    def layer_id(self, name: str) -> int:
        """0 for the embeddings (patch conv, cls and register tokens), i + 1 for layer i, depth + 1 for the norm."""
        if name.startswith("embeddings."):
            return 0
        if name.startswith("layers."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    @property
    def num_layers(self) -> int:
        return self.depth + 2


def build_sapiens2(
    arch: str,
    img_size: Sequence[int],
    depth: int | None = None,
    drop_path: float = 0.0,
    grad_checkpointing: bool = False,
    **options: Any,
) -> Sapiens2Backbone:
    """The backbone family's builder (`train.models.backbones.FAMILIES["sapiens2"]`)."""
    return Sapiens2Backbone(backbone_config(arch, depth, **options), img_size, drop_path, grad_checkpointing)


def arch_names() -> tuple[str, ...]:
    return tuple(ARCHS)


# ----------------------------------------------------------------------------------------------- heads


def build_sapiens2_head(task: str, in_channels: int, out_channels: int, channels: int | None = None, **options):
    """transformers' `Sapiens2Head` on a backbone of width `in_channels` predicting `out_channels`; `options` are
    the `Sapiens2HeadConfig` fields (`upsample_out_channels`, `conv_out_channels`, `use_pixel_shuffle`, ...).
    `channels` (this package's head width) does not apply: the head config sets every width."""
    _import_transformers()
    from transformers import Sapiens2Config
    from transformers.models.sapiens2.modeling_sapiens2 import Sapiens2Head

    if not options.get("upsample_out_channels"):
        raise ValueError(f"{task}: a sapiens2 head needs head_options upsample_out_channels (a list of widths)")
    head_cfg = {k: v for k, v in options.items() if k in _HEAD_KEYS}
    bad = sorted(set(options) - set(_HEAD_KEYS))
    if bad:
        raise ValueError(f"{task}: unknown sapiens2 head option(s) {bad}; known: {', '.join(_HEAD_KEYS)}")
    head_cfg.setdefault("conv_out_channels", [])
    cfg = Sapiens2Config(hidden_size=in_channels, num_labels=out_channels, head_config=head_cfg, num_hidden_layers=1)
    return Sapiens2Head(cfg)


_HEAD_KEYS = (
    "upsample_out_channels", "upsample_kernel_sizes", "upsample_kernel_size", "use_pixel_shuffle",
    "conv_out_channels", "conv_kernel_sizes", "conv_kernel_size",
)  # fmt: skip


def head_options(head_config: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able head options (style "sapiens2") of a transformers `head_config` dict."""
    out: dict[str, Any] = {"style": "sapiens2"}
    for key in _HEAD_KEYS:
        if head_config.get(key) is not None:
            out[key] = head_config[key]
    return out
