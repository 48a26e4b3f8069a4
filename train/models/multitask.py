"""The fine-tuned model: one backbone, one head per task.

    model = build_model(ModelSpec(arch="tiny", image_size=(256, 192), tasks=("pose", "seg")))
    out = model(images)                              # {"pose": (B, K, 64, 48), "seg": (B, C, 128, 96)}
    out = model(images, {"pose": rows_with_people})  # each head on its rows only

The backbone's `forward_features` (B, C, H/16, W/16) feeds every head (`train.models.heads`); a batch may mix
pose crops with whole-image views, and `routes` says which rows each head sees.
"""

from __future__ import annotations

import torch
from torch import nn

from train.models.heads import build_head
from train.models.spec import ModelSpec


class FinetuneModel(nn.Module):
    """A backbone with one head per task.

    forward(images (B, 3, H, W), routes {task: (N_t,) row indices} or None) -> {task: head output on those
    rows}; routes None runs every head on every row. Heads: pose (N, K, H/4, W/4) heatmaps, seg (N, C, H/2, W/2)
    logits, depth (N, 1, H, W) positive relative depth, normal (N, 3, H/2, W/2) unnormalised vectors.
    """

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.heads.keys())

    def forward(self, images: torch.Tensor, routes: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        features = self.backbone.forward_features(images)  # (B, C, H/16, W/16)
        out = {}
        for task, head in self.heads.items():
            if routes is None:
                out[task] = head(features)
            elif task in routes and len(routes[task]) > 0:
                out[task] = head(features[routes[task]])
        return out


def build_model(spec: ModelSpec, drop_path: float = 0.0, grad_checkpointing: bool = False) -> FinetuneModel:
    """The model a spec describes, randomly initialised; `drop_path` and `grad_checkpointing` are training-only."""
    from train.models.backbones import build_backbone

    backbone = build_backbone(
        spec.arch, spec.image_size, spec.depth, drop_path, grad_checkpointing, **spec.backbone_options
    )
    heads = {
        task: build_head(
            task, backbone.embed_dim, spec.out_channels(task), spec.head_channels, **_head_options(spec, task, backbone)
        )
        for task in spec.tasks
    }
    return FinetuneModel(backbone, heads)


def _head_options(spec: ModelSpec, task: str, backbone: nn.Module) -> dict:
    """The spec's options for `task`'s head; this package's own head style also learns the backbone's patch size."""
    options = dict(spec.head_options.get(task, {}))
    if options.get("style", "humanvision") == "humanvision":
        options.setdefault("patch_size", int(getattr(backbone, "patch_size", 16)))
    return options


def head_output_sizes(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """Each head's output size (h, w) for the spec's input size, by a forward pass on the `meta` device (no
    memory, no compute): a patch size or head layout other than the defaults changes the pose heatmap stride,
    and the training targets must be drawn at the size the head really outputs."""
    with torch.device("meta"):
        model = build_model(spec)
        out = model(torch.empty(1, 3, *spec.image_size))
    return {task: (int(t.shape[-2]), int(t.shape[-1])) for task, t in out.items()}
