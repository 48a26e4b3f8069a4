"""Task heads on the ViT feature map (B, C, H/16, W/16), after the Sapiens heads (DESIGN.md).

A head is `num_deconv` x2 upsamplings then `num_conv` 1x1 convs, every one followed by InstanceNorm + SiLU
(as in the Sapiens heads), then a 1x1 conv to the task's channels. Each task's shape (pose 2 + 2 at 1/4 the
input, seg and normal 3 + 3 at 1/2, depth 4 + 2 at 1/1, widths 768 / 384 at the sapiens sizes; the tiny
configs shrink them) is its `TaskDef.head` in `train.models.tasks`. Heads see only the backbone's
`forward_features` output, so any backbone with that method fits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from train.models.tasks import HeadSpec, Task, task_def


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


class PositiveHead(UpsampleHead):
    """A head whose output ends in a softplus. Relative depth is positive, so log(pred) in the SiLog loss is
    defined everywhere and no pixel loses its gradient to a clamp (as a raw output clamped at eps would)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.softplus(super().forward(features))


def _default_head(
    task: Task,
    in_channels: int,
    out_channels: int,
    channels: int | None,
    num_deconv: int | None = None,
    num_conv: int | None = None,
    patch_size: int = 16,
    width: int | None = None,
) -> nn.Module:
    """The task's `HeadSpec`. Unless `num_deconv` is given, the deconvolutions follow the backbone's patch size
    so that the output keeps the task's stride (pose 1/4, seg and normal 1/2, depth 1/1): a patch-8 backbone
    gets one fewer, not heatmaps at twice the size for four times the head's compute. `width` (a spec's
    `head_options[task]["width"]`) sets this one head's channels over `channels` (the spec's `head_channels`):
    a head's cost grows with its output size, so a small pose map can afford a width the full-size depth map
    cannot."""
    spec: HeadSpec = task_def(task).head
    if num_deconv is None:
        num_deconv = _deconvs_for_stride(task, patch_size, spec.output_stride)
    cls = PositiveHead if spec.positive else UpsampleHead
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"{task} head: head_options.{task}.width must be an integer >= 1, got {width!r}")
    width = width or channels or spec.channels
    return cls(in_channels, out_channels, num_deconv, spec.num_conv if num_conv is None else num_conv, width)


def _deconvs_for_stride(task: Task, patch_size: int, stride: int) -> int:
    ratio = patch_size // stride
    if patch_size % stride or ratio & (ratio - 1):
        raise ValueError(
            f"{task} head: patch size {patch_size} is not a power-of-two multiple of the task's output stride "
            f"{stride}; give head_options.{task}.num_deconv"
        )
    return ratio.bit_length() - 1


def _sapiens_v1_head(*args, **options) -> nn.Module:
    from train.models.sapiens_v1 import build_sapiens_v1_head

    return build_sapiens_v1_head(*args, **options)


# style -> builder(task, in_channels, out_channels, channels, **options): other head families (converted
# checkpoints' heads) register here; a ModelSpec's `head_options[task]["style"]` picks one.
def _sapiens2_head(task: Task, in_channels: int, out_channels: int, channels: int | None, **options) -> nn.Module:
    from train.models.sapiens2 import build_sapiens2_head

    return build_sapiens2_head(task, in_channels, out_channels, channels, **options)


HEAD_STYLES: dict[str, Callable[..., nn.Module]] = {
    "humanvision": _default_head,
    "sapiens_v1": _sapiens_v1_head,
    "sapiens2": _sapiens2_head,
}


def build_head(
    task: Task, in_channels: int, out_channels: int, channels: int | None = None, style: str = "humanvision", **options
) -> nn.Module:
    """The head for `task` on a backbone of width `in_channels`. The default style is this package's head (its
    `TaskDef.head` in `train.models.tasks`, `channels` overriding the width and the `width` option overriding
    `channels`); other styles take their own options (`width` is not one of them)."""
    if style not in HEAD_STYLES:
        raise ValueError(f"head style {style!r} is not one of {', '.join(HEAD_STYLES)}")
    return HEAD_STYLES[style](task, in_channels, out_channels, channels, **options)
