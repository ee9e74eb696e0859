"""The segmentor's own training losses (mmseg's semantics), used by the heads' ``loss`` methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from .ops import resize


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


@dataclass(frozen=True)
class OHEMSampler:
    """mmseg's ``sampler=dict(type='OHEMPixelSampler', thresh=..., min_kept=...)`` of a decode head."""

    thresh: float | None = None
    min_kept: int = 100000


@torch.no_grad()
def ohem_pixel_weights(logits: torch.Tensor, label: torch.Tensor, thresh: float | None = 0.7,
                       min_kept: int = 100000, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mmseg's ``OHEMPixelSampler``: a 0/1 weight per pixel (N, H, W) marking the hard pixels to train on.

    ``logits`` (N, C, H, W) must already have the label's size. Ignored pixels always get 0. With
    ``thresh``, a labelled pixel is kept when the softmax probability of its true class is below
    ``max(thresh, p_k)``, where ``p_k`` is the ``k``-th smallest such probability among the labelled
    pixels (0-based ``k = min(min_kept * N, n_labelled - 1)``): at least ``min_kept`` per image stay
    (more on ties), and every pixel below ``thresh``. Without ``thresh``, the ``min_kept * N``
    labelled pixels with the largest CE are kept.
    """
    valid = label != ignore_index
    weight = torch.zeros(label.shape, dtype=logits.dtype, device=logits.device)
    batch_kept = min_kept * label.shape[0]
    if thresh is not None:
        target = label.masked_fill(~valid, 0).unsqueeze(1)
        prob = logits.softmax(dim=1).gather(1, target).squeeze(1)
        valid_prob = prob[valid]
        if valid_prob.numel() > 0:
            sorted_prob = valid_prob.sort().values
            threshold = max(float(sorted_prob[min(batch_kept, sorted_prob.numel() - 1)]), thresh)
        else:
            threshold = thresh
        weight[valid] = (valid_prob < threshold).to(weight.dtype)
    else:
        ce = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="none")
        order = ce[valid].sort(descending=True).indices
        kept = torch.zeros_like(order, dtype=weight.dtype)
        kept[order[:batch_kept]] = 1.0
        weight[valid] = kept
    return weight


def ohem_cross_entropy(logits: torch.Tensor, label: torch.Tensor, thresh: float | None = 0.7,
                       min_kept: int = 100000, ignore_index: int = IGNORE_INDEX, avg_non_ignore: bool = False,
                       align_corners: bool = False) -> torch.Tensor:
    """CE over the pixels :func:`ohem_pixel_weights` keeps, with ``logits`` resized to the label first.

    As mmseg's decode head with an OHEM sampler: the sum over the kept pixels is divided by *all*
    pixels (``avg_non_ignore=False``, mmseg's default) or by the labelled ones, never by the kept count.
    """
    if logits.shape[-2:] != label.shape[-2:]:
        logits = resize(logits, label.shape[-2:], align_corners)
    logits = logits.float()
    weight = ohem_pixel_weights(logits.detach(), label, thresh, min_kept, ignore_index)
    ce = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="none")
    denominator = (label != ignore_index).sum() if avg_non_ignore else label.numel()
    return (ce * weight).sum() / denominator


def sigmoid_cross_entropy(logits: torch.Tensor, label: torch.Tensor,
                          ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mmseg's ``CrossEntropyLoss(use_sigmoid=True)`` on (N, C, H, W) logits and (N, H, W) class ids.

    The labels become one-hot maps (an ignored pixel: all zeros and weight 0) and every channel is an
    independent binary CE; the mean runs over all ``N * C * H * W`` entries, ignored ones included.
    """
    valid = (label >= 0) & (label != ignore_index)
    target = torch.zeros_like(logits)
    target.scatter_(1, label.masked_fill(~valid, 0).unsqueeze(1), 1.0)
    target = target * valid.unsqueeze(1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * valid.unsqueeze(1)).mean()


def dice_loss(logits: torch.Tensor, label: torch.Tensor, eps: float = 1e-3,
              ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mmseg 1.x's ``DiceLoss`` defaults (sigmoid activation, V-Net form): mean over images of ``1 - 2a / (b + c)``.

    Per image, over all channels and pixels: ``a = sum(p * t)``, ``b = sum(p^2) + eps``, ``c = sum(t^2) + eps``
    with ``p = sigmoid(logits)`` and ``t`` the one-hot labels (labels outside ``0..C-1`` give all-zero
    rows; mmseg drops the *channel* numbered ``ignore_index``, which matters only with more classes
    than that).
    """
    num_classes = logits.shape[1]
    target = F.one_hot(label.clamp(0, num_classes), num_classes + 1)[..., :num_classes].permute(0, 3, 1, 2)
    keep = torch.arange(num_classes, device=logits.device) != ignore_index
    p = logits.sigmoid()[:, keep].flatten(1)
    t = target[:, keep].flatten(1).float()
    a = (p * t).sum(1)
    b = (p * p).sum(1) + eps
    c = (t * t).sum(1) + eps
    return (1 - 2 * a / (b + c)).mean()
