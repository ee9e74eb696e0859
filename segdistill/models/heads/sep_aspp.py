"""mmseg's DepthwiseSeparableASPPHead (DeepLabV3+)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..ops import resize
from .base import ConvModule, DecodeHead, HeadInput


class DepthwiseConvModule(nn.Sequential):
    """Depthwise 3x3 conv (no bias, one group per channel) -> BN -> ReLU, mmcv's ConvModule names."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.activate = nn.ReLU(inplace=True)


class DepthwiseSeparableConvModule(nn.Sequential):
    """mmcv's DepthwiseSeparableConvModule: ``depthwise_conv`` (3x3, BN, ReLU), ``pointwise_conv`` (1x1, BN, ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise_conv = DepthwiseConvModule(in_channels, dilation)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1)


class DepthwiseSeparableASPPHead(DecodeHead):
    """DeepLabV3+: a depthwise-separable ASPP on the deep features, fused with a low-level (stride-4) branch.

    Input: the list ``[c1, x]`` chosen by a two-element ``in_index`` (mmseg reads ``inputs[0]`` for
    ``c1`` and ``inputs[in_index]`` for ``x``; e.g. ``in_index=(0, 3)``). The ASPP is mmseg's
    ``ASPPHead`` with every dilated branch made depthwise separable (the dilation-1 branch stays a
    1x1 ConvModule, the 3x3 ``bottleneck`` stays dense). Its output is resized to ``c1``'s size,
    concatenated with ``c1_bottleneck(c1)`` (1x1 conv to ``c1_channels``), and refined by two
    depthwise-separable 3x3 convs (``sep_bottleneck``), so the logits are at ``c1``'s stride (4).
    ``c1_in_channels=0`` drops the low-level branch (then the input is ``x`` alone, as in mmseg).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, c1_in_channels: int, c1_channels: int,
                 dilations: Sequence[int] = (1, 12, 24, 36), dropout: float = 0.1, **head: Any) -> None:
        super().__init__(in_channels, channels, num_classes, dropout, **head)
        if c1_in_channels < 0:
            raise ValueError(f"c1_in_channels must be >= 0, got {c1_in_channels}")
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1) if d == 1 else DepthwiseSeparableConvModule(in_channels, channels, d)
            for d in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3)
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1) if c1_in_channels > 0 else None
        fused = channels + (c1_channels if c1_in_channels > 0 else 0)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(fused, channels),
            DepthwiseSeparableConvModule(channels, channels),
        )
        self.init_weights()

    def features(self, x: HeadInput) -> torch.Tensor:
        feats = x if isinstance(x, (list, tuple)) else [x]
        deep = feats[-1]
        outs = [resize(self.image_pool(deep), deep.shape[2:], self.align_corners)]
        outs += [m(deep) for m in self.aspp_modules]
        out = self.bottleneck(torch.cat(outs, dim=1))
        if self.c1_bottleneck is not None:
            if len(feats) < 2:
                raise ValueError("DepthwiseSeparableASPPHead with a c1 branch needs [c1, x] (a two-element in_index)")
            low = self.c1_bottleneck(feats[0])
            out = torch.cat([resize(out, low.shape[2:], self.align_corners), low], dim=1)
        return self.sep_bottleneck(out)
