"""mmseg's SegformerHead: the all-MLP decoder of SegFormer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..ops import resize
from .base import ConvModule, DecodeHead, HeadInput


class SegformerHead(DecodeHead):
    """Each stage's map -> 1x1 ConvModule to ``channels`` (``convs.i``) -> bilinear resize to the first
    (stride-4) map -> concat in stage order -> 1x1 ConvModule ``fusion_conv`` -> dropout -> ``conv_seg``.

    The input is the list of stage maps chosen by ``in_index`` (mmseg: ``(0, 1, 2, 3)``), with
    ``in_channels`` their widths; the logits are at the first map's stride (4).
    """

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int, dropout: float = 0.1, *,
                 in_index: Sequence[int] = (0, 1, 2, 3), **head: Any) -> None:
        if isinstance(in_index, int) or len(in_index) != len(in_channels):
            raise ValueError(f"SegformerHead needs one in_index per input width, got {in_index} for {in_channels}")
        # The base class keeps one number; the stage widths are kept here.
        super().__init__(sum(in_channels), channels, num_classes, dropout, in_index=in_index, **head)
        self.stage_channels = tuple(in_channels)
        self.convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels)
        self.fusion_conv = ConvModule(channels * len(in_channels), channels, 1)
        self.init_weights()

    def features(self, x: HeadInput) -> torch.Tensor:
        if not isinstance(x, (list, tuple)) or len(x) != len(self.convs):
            raise ValueError(f"SegformerHead expects a list of {len(self.convs)} maps (its in_index)")
        size = x[0].shape[2:]
        outs = []
        for feat, conv in zip(x, self.convs, strict=True):
            out = conv(feat)
            # Resizing a map to its own size is the identity, so the stride-4 branch skips it.
            outs.append(out if out.shape[2:] == size else resize(out, size, self.align_corners))
        return self.fusion_conv(torch.cat(outs, dim=1))
