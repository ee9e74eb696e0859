"""The segmentor's own training losses (mmseg's semantics), used by the heads' ``loss`` methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import resize

IGNORE_INDEX = 255  # the label value no loss or metric counts (mmseg's ``ignore_index``)


def seg_cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                      avg_non_ignore: bool = True, align_corners: bool = False) -> torch.Tensor:
    """Pixel-wise CE of ``logits`` upsampled (bilinear) to the ``label``'s size.

    ``avg_non_ignore=False`` reproduces mmseg's default, which divides by *all* pixels, ignored ones
    included, so the loss (and the effective learning rate) shrinks as the share of ignored pixels
    grows. ``True`` divides by the labelled pixels only, which is what plain PyTorch CE does.
    """
    if logits.shape[-2:] != label.shape[-2:]:
        logits = resize(logits, label.shape[-2:], align_corners)
    logits = logits.float()
    if avg_non_ignore:
        return F.cross_entropy(logits, label, ignore_index=ignore_index)
    return F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="sum") / label.numel()
