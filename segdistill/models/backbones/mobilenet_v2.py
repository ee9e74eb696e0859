"""MobileNetV2, the backbone of mmsegmentation's ``mobilenet-v2-d8`` models.

Parameter names follow mmseg exactly (``conv1.conv``, ``layer3.0.conv.1.bn`` ...), so released mmseg
checkpoints and mmcls's ImageNet ``mobilenet_v2`` weights (``mmcls://mobilenet_v2``) load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .resnet import init_conv_bn


def make_divisible(value: float, divisor: int = 8, min_ratio: float = 0.9) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never below 90% of it.

    mmseg's rule for the channel counts of a widened/narrowed MobileNetV2; at ``widen_factor`` 1 it is
    the identity on the architecture's widths.
    """
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < min_ratio * value else new


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BN -> optional ReLU6, named ``conv``/``bn``/``activate`` like mmcv's ConvModule."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, act: bool = True) -> None:
        super().__init__()
        padding = 0 if kernel_size == 1 else dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        if act:
            self.activate = nn.ReLU6(inplace=True)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when ``expand_ratio`` is 1) -> 3x3 depthwise -> 1x1 linear projection (no ReLU).

    The depthwise conv carries the stride and the dilation. The input is added back when the block
    keeps both the resolution and the width (mmseg's ``use_res_connect``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, dilation: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden),
            ConvBNAct(hidden, out_channels, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 as mmseg builds it: a 3x3 stride-2 stem then seven stages of inverted residuals.

    ``strides``/``dilations`` are per stage and apply to the stage's *first* block only (mmseg's
    ``make_layer``: later blocks of a dilated stage have dilation 1). The defaults are mmseg's
    ``mobilenet-v2-d8`` settings: output stride 8, dilations (2, 2, 4, 4) in stages 4-7.
    ``forward`` returns the outputs of the stages in ``out_indices`` (0-based), by default stages 2, 3,
    5, 7: 24, 32, 96 and 320 channels at strides 4, 8, 8, 8. ``out_channels`` lists their widths.

    mmseg's ``init_cfg`` (Kaiming fan-out for convs, BN to identity) is applied at construction and
    replaced whenever pretrained weights are loaded.
    """

    # Per stage: expand ratio, output channels (at widen_factor 1), number of blocks.
    ARCH_SETTINGS: tuple[tuple[int, int, int], ...] = (
        (1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1),
    )
    #: Key prefixes of mmcls's ImageNet checkpoint that mmseg's backbone does not have (the 1x1 conv to
    #: 1280 channels that feeds the classifier); :func:`~segdistill.models.checkpoint.load_backbone_checkpoint`
    #: drops them.
    IMAGENET_ONLY_PREFIXES: tuple[str, ...] = ("conv2.",)

    def __init__(self, widen_factor: float = 1.0, strides: Sequence[int] = (1, 2, 2, 1, 1, 1, 1),
                 dilations: Sequence[int] = (1, 1, 1, 2, 2, 4, 4), out_indices: Sequence[int] = (1, 2, 4, 6)) -> None:
        super().__init__()
        n = len(self.ARCH_SETTINGS)
        if len(strides) != n or len(dilations) != n:
            raise ValueError(f"MobileNetV2 needs {n} strides and {n} dilations, "
                             f"got {len(strides)} and {len(dilations)}")
        if any(i not in range(n) for i in out_indices):
            raise ValueError(f"out_indices must lie in 0..{n - 1}, got {list(out_indices)}")
        self.out_indices = tuple(out_indices)
        in_channels = make_divisible(32 * widen_factor)
        self.conv1 = ConvBNAct(3, in_channels, 3, stride=2)
        widths: list[int] = []
        stages = zip(self.ARCH_SETTINGS, strides, dilations, strict=True)
        for i, ((expand, channels, blocks), stride, dilation) in enumerate(stages):
            out_channels = make_divisible(channels * widen_factor)
            layer = [InvertedResidual(in_channels, out_channels, stride, expand, dilation)]
            layer += [InvertedResidual(out_channels, out_channels, 1, expand) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            widths.append(out_channels)
            in_channels = out_channels
        self.out_channels: list[int] = [widths[i] for i in self.out_indices]
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.conv1(x)
        outs = []
        for i in range(len(self.ARCH_SETTINGS)):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
