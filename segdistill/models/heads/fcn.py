"""mmseg's FCNHead (the auxiliary head of most models, and a decode head)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ConvModule, DecodeHead


class FCNHead(DecodeHead):
    """The auxiliary head: ``num_convs`` 3x3 ConvModules then the classifier (mmseg, concat_input=False)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 1,
                 dropout: float = 0.1, **head: Any) -> None:
        super().__init__(in_channels, channels, num_classes, dropout, **head)
        self.convs = nn.Sequential(
            *[ConvModule(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs)]
        )
        self.init_weights()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)
