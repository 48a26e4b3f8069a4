"""Task heads on the ViT feature map (B, C, H/16, W/16), after the Sapiens heads (DESIGN.md):

| task   | upsampling                     | then                          | output                      |
|--------|--------------------------------|-------------------------------|-----------------------------|
| pose   | 2 deconv k4 s2 (x4 -> 1/4)     | 2 conv1x1, conv1x1 -> K       | K heatmaps at 1/4 the input |
| seg    | 3 deconv k4 s2 (x8 -> 1/2)     | 3 conv1x1, conv1x1 -> classes | logits at 1/2 the input     |
| normal | 3 deconv k4 s2 (x8 -> 1/2)     | 3 conv1x1, conv1x1 -> 3       | raw vectors at 1/2          |
| depth  | 4 deconv k4 s2 (x16 -> 1/1)    | 2 conv1x1, conv1x1 -> 1       | positive depth at 1/1       |

Every deconv and conv is followed by InstanceNorm + SiLU (as in the Sapiens heads). Channel widths are
768 (pose, seg, normal) and 384 (depth) at the sapiens sizes; the tiny configs shrink them. Heads see only
the backbone's `forward_features` output, so any backbone with that method fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Task = Literal["pose", "seg", "depth", "normal"]
TASKS: tuple[Task, ...] = ("pose", "seg", "depth", "normal")


@dataclass(frozen=True)
class HeadSpec:
    """The shape of one head: how many x2 deconvolutions, how many 1x1 convs after them, default widths."""

    num_deconv: int
    num_conv: int
    channels: int  # default width at the sapiens sizes


HEAD_SPECS: dict[Task, HeadSpec] = {
    "pose": HeadSpec(num_deconv=2, num_conv=2, channels=768),
    "seg": HeadSpec(num_deconv=3, num_conv=3, channels=768),
    "normal": HeadSpec(num_deconv=3, num_conv=3, channels=768),
    "depth": HeadSpec(num_deconv=4, num_conv=2, channels=384),
}


def output_stride(task: Task) -> int:
    """Input pixels per output pixel: 16 / 2^num_deconv (4 for pose, 2 for seg/normal, 1 for depth)."""
    return 16 // (2 ** HEAD_SPECS[task].num_deconv)


class UpsampleHead(nn.Module):
    """`num_deconv` x (ConvTranspose2d k4 s2 p1 + InstanceNorm + SiLU), then `num_conv` x (conv1x1 + IN + SiLU),
    then a conv1x1 to `out_channels`.

    forward: (B, in_channels, h, w) -> (B, out_channels, h * 2^num_deconv, w * 2^num_deconv)
    """

    def __init__(self, in_channels: int, out_channels: int, num_deconv: int, num_conv: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(num_deconv):
            # k4 s2 p1 doubles the size exactly; no bias since InstanceNorm removes it anyway.
            layers += [nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1, bias=False), *_norm_act(channels)]
            width = channels
        for _ in range(num_conv):
            layers += [nn.Conv2d(width, channels, 1, bias=False), *_norm_act(channels)]
            width = channels
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(features))


def _norm_act(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(channels, affine=True), nn.SiLU(inplace=True)]


class DepthHead(UpsampleHead):
    """The depth head ends in a softplus: relative depth is positive, so log(pred) in the SiLog loss is defined
    everywhere and no pixel loses its gradient to a clamp (as a raw output clamped at eps would)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.softplus(super().forward(features))


def build_head(task: Task, in_channels: int, out_channels: int, channels: int | None = None) -> UpsampleHead:
    """The head for `task` on a backbone of width `in_channels`; `channels` overrides the spec's width."""
    if task not in HEAD_SPECS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    spec = HEAD_SPECS[task]
    cls = DepthHead if task == "depth" else UpsampleHead
    return cls(in_channels, out_channels, spec.num_deconv, spec.num_conv, channels or spec.channels)
