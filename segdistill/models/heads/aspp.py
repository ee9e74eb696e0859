"""mmseg's ASPPHead (DeepLabV3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..ops import resize
from .base import ConvModule, DecodeHead


class ASPPHead(DecodeHead):
    """Atrous spatial pyramid pooling (DeepLabV3): image pooling plus parallel dilated 3x3 convs."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 dilations: Sequence[int] = (1, 12, 24, 36), dropout: float = 0.1, **head: Any) -> None:
        super().__init__(in_channels, channels, num_classes, dropout, **head)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1 if d == 1 else 3, dilation=d) for d in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3)
        self.init_weights()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        outs = [resize(self.image_pool(x), x.shape[2:])] + [m(x) for m in self.aspp_modules]
        return self.bottleneck(torch.cat(outs, dim=1))
