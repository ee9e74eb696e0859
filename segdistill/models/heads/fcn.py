"""mmseg's FCNHead (the auxiliary head of most models, and a decode head)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..losses import OHEMSampler, ohem_cross_entropy
from .base import ConvModule, DecodeHead


class FCNHead(DecodeHead):
    """``num_convs`` 3x3 ConvModules then the classifier: the auxiliary head of most models, and a decode head.

    With ``concat_input`` (mmseg's FCN decode head) the input is concatenated to the convs' output and
    fused by one more 3x3 ConvModule, ``conv_cat``. With a ``sampler`` (mmseg's ``OHEMPixelSampler``,
    STDC's heads) the CE counts only the hard pixels it keeps (:func:`~segdistill.models.losses.ohem_cross_entropy`).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 1,
                 dropout: float = 0.1, concat_input: bool = False, sampler: OHEMSampler | None = None,
                 **head: Any) -> None:
        super().__init__(in_channels, channels, num_classes, dropout, **head)
        self.sampler = sampler
        self.convs = nn.Sequential(
            *[ConvModule(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs)]
        )
        self.conv_cat = ConvModule(in_channels + channels, channels, 3) if concat_input else None
        self.init_weights()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        return out if self.conv_cat is None else self.conv_cat(torch.cat([x, out], dim=1))

    def loss(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.sampler is None:
            return super().loss(logits, label)
        return {"": self.loss_weight * ohem_cross_entropy(
            logits, label, self.sampler.thresh, self.sampler.min_kept, self.ignore_index, self.avg_non_ignore,
            self.align_corners)}
