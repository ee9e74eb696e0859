"""The segmentor's own training loss: cross-entropy on the decode and auxiliary logits."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .heads import resize


def seg_cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255,
                      avg_non_ignore: bool = True) -> torch.Tensor:
    """Pixel-wise CE of stride-8 ``logits`` upsampled (bilinear) to the ``label``'s size.

    ``avg_non_ignore=False`` reproduces mmseg's default, which divides by *all* pixels, ignored ones
    included, so the loss (and the effective learning rate) shrinks as the share of ignored pixels
    grows. ``True`` divides by the labelled pixels only, which is what plain PyTorch CE does.
    """
    logits = resize(logits, label.shape[-2:]).float() if logits.shape[-2:] != label.shape[-2:] else logits.float()
    if avg_non_ignore:
        return F.cross_entropy(logits, label, ignore_index=ignore_index)
    return F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="sum") / label.numel()


class SegLoss(nn.Module):
    """``{"loss_decode": CE(decode), "loss_aux": aux_weight * CE(aux)}`` as the reference weights them."""

    def __init__(self, aux_weight: float = 0.4, ignore_index: int = 255, avg_non_ignore: bool = False) -> None:
        super().__init__()
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore

    def forward(self, outputs: Mapping[str, torch.Tensor], label: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {"loss_decode": seg_cross_entropy(outputs["decode"], label, self.ignore_index, self.avg_non_ignore)}
        if "aux" in outputs and self.aux_weight > 0:
            losses["loss_aux"] = self.aux_weight * seg_cross_entropy(
                outputs["aux"], label, self.ignore_index, self.avg_non_ignore)
        return losses
