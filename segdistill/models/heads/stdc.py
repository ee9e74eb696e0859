"""mmseg's STDCHead: STDC's detail head, trained on boundaries computed from the segmentation labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import dice_loss, sigmoid_cross_entropy
from ..ops import resize
from .fcn import FCNHead


class STDCHead(FCNHead):
    """An FCN head with 2 outputs (boundary / not) whose loss builds its own targets from the class labels.

    :meth:`boundary_targets` runs ``laplacian_kernel`` over the label map at strides 1, 2 and 4,
    thresholds each at ``boundary_threshold`` (the coarse ones after nearest upsampling), mixes the
    three with the 1x1 ``fusion_kernel`` and thresholds again. Both kernels are state (mmseg keeps
    ``fusion_kernel`` as a frozen parameter and ``laplacian_kernel`` as a buffer), so checkpoints carry
    them and the targets use whatever values were loaded. The loss is mmseg's sigmoid binary CE plus
    Dice on the logits resized to the labels (``align_corners`` of this head), returned as
    ``{"ce": ..., "dice": ...}``, each times its weight and ``loss_weight``.
    """

    laplacian_kernel: torch.Tensor

    def __init__(self, in_channels: int, channels: int, num_classes: int = 2, num_convs: int = 1,
                 boundary_threshold: float = 0.1, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 **head: Any) -> None:
        super().__init__(in_channels, channels, num_classes, num_convs, **head)
        self.boundary_threshold = boundary_threshold
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.register_buffer("laplacian_kernel", torch.tensor(
            [-1.0, -1.0, -1.0, -1.0, 8.0, -1.0, -1.0, -1.0, -1.0]).reshape(1, 1, 3, 3))
        self.fusion_kernel = nn.Parameter(torch.tensor([0.6, 0.3, 0.1]).reshape(1, 3, 1, 1), requires_grad=False)

    def _binarize(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.boundary_threshold).to(x.dtype)

    @torch.no_grad()
    def boundary_targets(self, label: torch.Tensor) -> torch.Tensor:
        """(N, H, W) class ids -> (N, H, W) 0/1 boundary ids, as mmseg's ``STDCHead.loss_by_feat``.

        The label values themselves (ignored pixels' 255 included) go through the Laplacian, so the
        border of an ignored region counts as a boundary, as in mmseg.
        """
        x = label.unsqueeze(1).to(self.laplacian_kernel.dtype)
        size = x.shape[2:]
        levels = []
        for stride in (1, 2, 4):
            edges = F.conv2d(x, self.laplacian_kernel, stride=stride, padding=1).clamp(min=0)
            if stride > 1:
                edges = F.interpolate(edges, size=size, mode="nearest")
            levels.append(self._binarize(edges))
        fused = F.conv2d(torch.cat(levels, dim=1), self.fusion_kernel)
        return self._binarize(fused).squeeze(1).long()

    def loss(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        target = self.boundary_targets(label)
        if logits.shape[-2:] != target.shape[-2:]:
            logits = resize(logits, target.shape[-2:], self.align_corners)
        logits = logits.float()
        return {
            "ce": self.loss_weight * self.ce_weight * sigmoid_cross_entropy(logits, target, self.ignore_index),
            "dice": self.loss_weight * self.dice_weight * dice_loss(logits, target, ignore_index=self.ignore_index),
        }
