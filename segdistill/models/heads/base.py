"""What every decode head shares: mmcv-named ConvModule, dropout + ``conv_seg`` tail, input selection, loss.

The contract between heads and :class:`~segdistill.models.segmentor.EncoderDecoder`:

- ``in_index`` picks the head's input from the backbone's list of feature maps: an ``int`` gives the
  head one tensor, a tuple gives it a list of tensors (DeepLabV3+'s low-level branch, SegFormer's
  four stages), exactly as mmseg's ``in_index`` / ``input_transform='multiple_select'``;
- ``forward(x)`` returns the head's raw logits (``conv_seg`` output); :meth:`DecodeHead.features`
  is the map right before dropout, so a distiller can tap features and logits of one forward;
- ``loss(logits, label)`` returns ``{suffix: weighted loss}`` (suffix ``""`` for a head with a single
  loss); the segmentor names them ``loss_decode``, ``loss_aux`` / ``loss_aux_<i>`` plus ``_<suffix>``;
- ``align_corners`` is the head's resize setting in mmseg's config (used for its loss and, for the
  decode head, for the logits resized to the input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..backbones.resnet import init_conv_bn
from ..losses import IGNORE_INDEX, seg_cross_entropy

HeadInput = torch.Tensor | list[torch.Tensor]


class ConvModule(nn.Sequential):
    """Conv (no bias) -> BN -> ReLU, named ``conv``/``bn``/``activate`` like mmcv's ConvModule."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        padding = 0 if kernel_size == 1 else dilation * (kernel_size // 2)
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)


class DecodeHead(nn.Module):
    """Shared tail of every head: ``Dropout2d(dropout)`` then the 1x1 classifier ``conv_seg``.

    Subclasses implement :meth:`features`. ``loss_weight`` and ``avg_non_ignore`` are the head's
    ``loss_decode`` settings in mmseg's config (the trainer may override them from the config).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1, *,
                 in_index: int | Sequence[int] = -1, align_corners: bool = False, loss_weight: float = 1.0,
                 avg_non_ignore: bool = False, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.channels = channels
        self.num_classes = num_classes
        self.in_index: int | tuple[int, ...] = in_index if isinstance(in_index, int) else tuple(in_index)
        self.align_corners = align_corners
        self.loss_weight = loss_weight
        self.avg_non_ignore = avg_non_ignore
        self.ignore_index = ignore_index
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def select(self, feats: Sequence[torch.Tensor]) -> HeadInput:
        """This head's input from the backbone's feature list (``in_index``)."""
        if isinstance(self.in_index, int):
            return feats[self.in_index]
        return [feats[i] for i in self.in_index]

    def features(self, x: Any) -> torch.Tensor:
        """The map right before dropout; ``x`` is what :meth:`select` gives this head (a tensor or a list)."""
        raise NotImplementedError

    def forward(self, x: HeadInput) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.features(x)))

    def loss(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """mmseg's default ``loss_decode``: CE on the logits resized to the labels, times ``loss_weight``."""
        return {"": self.loss_weight * seg_cross_entropy(logits, label, self.ignore_index, self.avg_non_ignore,
                                                         self.align_corners)}

    def init_weights(self) -> None:
        """mmseg's init: Kaiming (fan_out) for ConvModules, BN to identity, N(0, 0.01) for ``conv_seg``."""
        init_conv_bn(self)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        assert self.conv_seg.bias is not None
        nn.init.zeros_(self.conv_seg.bias)
