"""Small tensor operations shared by backbones, heads and the segmentor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module.to(memory_format=torch.channels_last)`` (torch's type stubs lack this overload of ``to``)."""
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize; ``align_corners`` as the head that produced ``x`` is configured in mmseg."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
