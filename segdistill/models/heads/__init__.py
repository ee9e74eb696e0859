"""Decode and auxiliary heads, one file per family (mmseg's parameter names)."""

from .aspp import ASPPHead
from .base import ConvModule, DecodeHead, HeadInput
from .fcn import FCNHead
from .psp import PSPHead
from .segformer import SegformerHead
from .sep_aspp import DepthwiseSeparableASPPHead
from .stdc import STDCHead

__all__ = ["ASPPHead", "ConvModule", "DecodeHead", "DepthwiseSeparableASPPHead", "FCNHead", "HeadInput", "PSPHead",
           "SegformerHead", "STDCHead"]
