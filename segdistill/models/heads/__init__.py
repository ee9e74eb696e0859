"""Decode and auxiliary heads, one file per family (mmseg's parameter names)."""

from .aspp import ASPPHead
from .base import ConvModule, DecodeHead, HeadInput
from .fcn import FCNHead
from .psp import PSPHead

__all__ = ["ASPPHead", "ConvModule", "DecodeHead", "FCNHead", "HeadInput", "PSPHead"]
