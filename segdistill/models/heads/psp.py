"""mmseg's PSPHead (PSPNet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..ops import resize
from .base import ConvModule, DecodeHead


class PSPHead(DecodeHead):
    """Pyramid pooling (PSPNet): pool to 1, 2, 3, 6 cells, 1x1 conv each, upsample, concat, 3x3 fuse."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, **head: Any) -> None:
        super().__init__(in_channels, channels, num_classes, dropout, **head)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvModule(in_channels + len(pool_scales) * channels, channels, 3)
        self.init_weights()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        outs = [x] + [resize(m(x), size) for m in self.psp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))
