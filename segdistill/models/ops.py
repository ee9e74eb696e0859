"""Small tensor operations shared by backbones, heads and the segmentor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize; ``align_corners`` as the head that produced ``x`` is configured in mmseg."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
