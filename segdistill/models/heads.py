"""Decode heads of mmseg's PSPNet, DeepLabV3 and the auxiliary FCN head, with mmseg's parameter names."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import init_conv_bn


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False``, the only resize the reference uses."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    """Conv (no bias) -> BN -> ReLU, named ``conv``/``bn``/``activate`` like mmcv's ConvModule."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        padding = 0 if kernel_size == 1 else dilation * (kernel_size // 2)
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)


class DecodeHead(nn.Module):
    """Shared tail of every head: ``Dropout2d(0.1)`` then the 1x1 classifier ``conv_seg``.

    Subclasses implement :meth:`features` (the map right before dropout, e.g. PSP's ``bottleneck``
    output). Keeping that split lets a distiller tap features and logits of the same forward.
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.features(x)))

    def init_weights(self) -> None:
        """mmseg's init: Kaiming (fan_out) for ConvModules, BN to identity, N(0, 0.01) for ``conv_seg``."""
        init_conv_bn(self)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)


class PSPHead(DecodeHead):
    """Pyramid pooling (PSPNet): pool to 1, 2, 3, 6 cells, 1x1 conv each, upsample, concat, 3x3 fuse."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1) -> None:
        super().__init__(in_channels, channels, num_classes, dropout)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvModule(in_channels + len(pool_scales) * channels, channels, 3)
        self.init_weights()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        outs = [x] + [resize(m(x), size) for m in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))


class ASPPHead(DecodeHead):
    """Atrous spatial pyramid pooling (DeepLabV3): image pooling plus parallel dilated 3x3 convs."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 dilations: Sequence[int] = (1, 12, 24, 36), dropout: float = 0.1) -> None:
        super().__init__(in_channels, channels, num_classes, dropout)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1 if d == 1 else 3, dilation=d) for d in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3)
        self.init_weights()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        outs = [resize(self.image_pool(x), x.shape[2:])] + [m(x) for m in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))


class FCNHead(DecodeHead):
    """The auxiliary head: ``num_convs`` 3x3 ConvModules then the classifier (mmseg, concat_input=False)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__(in_channels, channels, num_classes, dropout)
        self.convs = nn.Sequential(
            *[ConvModule(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs)]
        )
        self.init_weights()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)
