"""The heads of Meta's released Sapiens v1 models, so their fine-tuned checkpoints run here as trained.

    head = build_sapiens_v1_head("pose", 1024, 308, deconv_channels=[768, 768], deconv_kernels=[4, 4],
                                 conv_channels=[768, 768], conv_kernels=[1, 1])
    head(features)   # (B, 1024, 64, 48) -> (B, 308, 256, 192)

One family covers the four released heads (mmpose `HeatmapHead`; mmseg `VitHead`, `VitDepthHead`,
`VitNormalHead`): they share one layout and differ only in their widths and depths, read from the configs:

| task   | deconvs (k4 s2)  | 1x1 convs      | output            | config                                  |
|--------|------------------|----------------|-------------------|-----------------------------------------|
| pose   | 768, 768         | 768, 768       | K heatmaps, 1/4   | pose/configs/sapiens_pose/goliath/*     |
| seg    | 768, 768, 768    | 768, 768, 768  | C logits, 1/2     | seg/configs/sapiens_seg/{goliath,lip}/* |
| depth  | 384 x 4          | 384, 384       | 1 raw depth, 1/1  | seg/configs/sapiens_depth/*             |
| normal | 768, 768, 768    | 768, 768, 768  | 3 raw vectors, 1/2| seg/configs/sapiens_normal/*            |

Each deconv is ConvTranspose2d(stride 2, no bias) + InstanceNorm2d (not affine: no weights) + SiLU; each conv is
Conv2d(k, padding (k-1)//2, with bias) + InstanceNorm2d + SiLU; then a 1x1 conv with bias to the output channels.
The mmseg heads put Dropout2d(0.1) before that conv (`dropout` here; a no-op in eval). No head resizes its output
in forward (mmseg resizes to the label size in the loss and in `predict`, which Predictor's resampling replaces),
and none ends in an activation: depth is the raw conv output (trained with SiLog, so positive where it matters),
normals are unnormalised vectors (`TaskDef.activate` normalises them).

Module names follow the released keys (`deconv_layers.3.weight`, `conv_layers.0.bias`, `final_layer.weight`), so
`train.models.convert_sapiens` maps a checkpoint by prefix alone (mmseg's `conv_seg` becomes `final_layer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# ConvTranspose2d (padding, output_padding) per kernel size, each doubling the size exactly (as mmpose/mmseg).
_DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


class SapiensV1Head(nn.Module):
    """Deconvs, convs, final 1x1 conv: see the module docstring.

    forward: (B, in_channels, h, w) -> (B, out_channels, h * 2^len(deconv_channels), w * 2^len(deconv_channels))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        deconv_channels: Sequence[int],
        deconv_kernels: Sequence[int],
        conv_channels: Sequence[int],
        conv_kernels: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(deconv_channels) != len(deconv_kernels) or len(conv_channels) != len(conv_kernels):
            raise ValueError(
                f"sapiens_v1 head: channels and kernels differ in length (deconv {list(deconv_channels)} / "
                f"{list(deconv_kernels)}, conv {list(conv_channels)} / {list(conv_kernels)})"
            )
        bad = [k for k in deconv_kernels if k not in _DECONV_PADDING]
        if bad:
            raise ValueError(f"sapiens_v1 head: deconv kernel sizes {bad} unsupported (use {sorted(_DECONV_PADDING)})")
        width = in_channels
        deconv: list[nn.Module] = []
        for channels, kernel in zip(deconv_channels, deconv_kernels, strict=True):
            padding, output_padding = _DECONV_PADDING[kernel]
            deconv += [
                nn.ConvTranspose2d(width, channels, kernel, 2, padding, output_padding, bias=False),
                nn.InstanceNorm2d(channels),
                nn.SiLU(inplace=True),
            ]
            width = channels
        conv: list[nn.Module] = []
        for channels, kernel in zip(conv_channels, conv_kernels, strict=True):
            conv += [nn.Conv2d(width, channels, kernel, padding=(kernel - 1) // 2), nn.InstanceNorm2d(channels)]
            conv.append(nn.SiLU(inplace=True))
            width = channels
        self.deconv_layers = nn.Sequential(*deconv)
        self.conv_layers = nn.Sequential(*conv)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.final_layer = nn.Conv2d(width, out_channels, 1)
        self.out_channels = out_channels
        self.upsampling = 2 ** len(deconv_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.dropout(self.conv_layers(self.deconv_layers(features))))


def build_sapiens_v1_head(
    task: str,
    in_channels: int,
    out_channels: int,
    channels: int | None = None,
    deconv_channels: Sequence[int] = (),
    deconv_kernels: Sequence[int] = (),
    conv_channels: Sequence[int] = (),
    conv_kernels: Sequence[int] = (),
    dropout: float = 0.0,
) -> SapiensV1Head:
    """`train.models.heads.HEAD_STYLES["sapiens_v1"]`: the options are a ModelSpec's `head_options[task]` (lists of
    ints, as `convert_sapiens` writes them). `channels` (the spec's `head_channels`) does not apply: the widths are
    the checkpoint's."""
    del task, channels
    return SapiensV1Head(
        in_channels, out_channels, deconv_channels, deconv_kernels, conv_channels, conv_kernels, dropout=dropout
    )
