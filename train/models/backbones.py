"""Backbones by arch name: every backbone family the model package can build, behind one function.

    backbone = build_backbone("sapiens_0.3b", (1024, 768), patch_padding=2)
    backbone.forward_features(images)   # (B, C, H/16, W/16): what every head reads
    backbone.embed_dim, backbone.layer_id(name), backbone.num_layers   # what heads and the optimiser need

A family is a name prefix and a module that builds it: the ViT of `train.models.vit` (the Sapiens v1 and small
archs) today. `options` are the family's own arch details a checkpoint implies (for the ViT: `patch_padding`);
a `ModelSpec` stores them as `backbone_options`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn


def _vit(arch: str, img_size: Sequence[int], **kwargs: Any) -> nn.Module:
    from train.models.vit import build_vit

    return build_vit(arch, img_size=img_size, **kwargs)


def _vit_archs() -> tuple[str, ...]:
    from train.models.vit import ARCHS

    return tuple(ARCHS)


def _sapiens2(arch: str, img_size: Sequence[int], **kwargs: Any) -> nn.Module:
    from train.models.sapiens2 import build_sapiens2

    return build_sapiens2(arch, img_size, **kwargs)


def _sapiens2_archs() -> tuple[str, ...]:
    from train.models.sapiens2 import arch_names

    return arch_names()


# family -> (its arch names, its builder(arch, img_size, depth=..., drop_path=..., grad_checkpointing=..., **options))
FAMILIES: dict[str, tuple[Callable[[], tuple[str, ...]], Callable[..., nn.Module]]] = {
    "vit": (_vit_archs, _vit),
    "sapiens2": (_sapiens2_archs, _sapiens2),
}


def arch_names() -> tuple[str, ...]:
    return tuple(name for names, _ in FAMILIES.values() for name in names())


def family_of(arch: str) -> str:
    for family, (names, _) in FAMILIES.items():
        if arch in names():
            return family
    raise ValueError(f"model.arch {arch!r} is not one of {', '.join(arch_names())}")


def build_backbone(
    arch: str,
    img_size: Sequence[int],
    depth: int | None = None,
    drop_path: float = 0.0,
    grad_checkpointing: bool = False,
    **options: Any,
) -> nn.Module:
    """The backbone `arch` at input size (H, W); `depth` overrides its block count (small test models)."""
    _, build = FAMILIES[family_of(arch)]
    extra = {"depth": depth} if depth else {}
    return build(arch, tuple(img_size), drop_path=drop_path, grad_checkpointing=grad_checkpointing, **extra, **options)
