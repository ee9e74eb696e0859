"""Explicit builders, one function per named model, all kept in :data:`MODELS`.

Every width below is written out as in mmseg's config of the same name, so a released mmseg state dict
of that name loads strictly. The ``-tiny`` variants are ours: same structure at a quarter of the width,
for the demo and the tests on a CPU.
"""

from __future__ import annotations

import difflib
from typing import Callable

from ..errors import UserError
from .backbones import ResNetV1c
from .heads import ASPPHead, DecodeHead, FCNHead, PSPHead
from .segmentor import EncoderDecoder


def _segmentor(depth: int, head: str, num_classes: int, base_channels: int, head_channels: int,
               aux_channels: int) -> EncoderDecoder:
    backbone = ResNetV1c(depth=depth, stem_channels=base_channels, base_channels=base_channels)
    c3, c4 = backbone.out_channels[2], backbone.out_channels[3]
    decode: DecodeHead
    if head == "psp":
        decode = PSPHead(c4, head_channels, num_classes, pool_scales=(1, 2, 3, 6), in_index=3)
    else:
        decode = ASPPHead(c4, head_channels, num_classes, dilations=(1, 12, 24, 36), in_index=3)
    aux = FCNHead(c3, aux_channels, num_classes, num_convs=1, in_index=2, loss_weight=0.4)
    return EncoderDecoder(backbone, decode, aux)


def pspnet_r18_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``pspnet_r18-d8``: ResNet-18-V1c, PSP head 512->128, FCN aux 256->64."""
    return _segmentor(18, "psp", num_classes, base_channels=64, head_channels=128, aux_channels=64)


def pspnet_r50_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``pspnet_r50-d8``: ResNet-50-V1c, PSP head 2048->512, FCN aux 1024->256."""
    return _segmentor(50, "psp", num_classes, base_channels=64, head_channels=512, aux_channels=256)


def pspnet_r101_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``pspnet_r101-d8`` (the reference teacher): ResNet-101-V1c, PSP 2048->512, aux 1024->256."""
    return _segmentor(101, "psp", num_classes, base_channels=64, head_channels=512, aux_channels=256)


def deeplabv3_r18_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``deeplabv3_r18-d8``: ResNet-18-V1c, ASPP head 512->128, FCN aux 256->64."""
    return _segmentor(18, "aspp", num_classes, base_channels=64, head_channels=128, aux_channels=64)


def deeplabv3_r50_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``deeplabv3_r50-d8``: ResNet-50-V1c, ASPP head 2048->512, FCN aux 1024->256."""
    return _segmentor(50, "aspp", num_classes, base_channels=64, head_channels=512, aux_channels=256)


def deeplabv3_r101_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``deeplabv3_r101-d8``: ResNet-101-V1c, ASPP head 2048->512, FCN aux 1024->256."""
    return _segmentor(101, "aspp", num_classes, base_channels=64, head_channels=512, aux_channels=256)


def pspnet_r18_d8_tiny(num_classes: int = 19) -> EncoderDecoder:
    """Our quarter-width PSPNet-R18-D8 (base 16, head 32, aux 16): the demo's student."""
    return _segmentor(18, "psp", num_classes, base_channels=16, head_channels=32, aux_channels=16)


def pspnet_r50_d8_tiny(num_classes: int = 19) -> EncoderDecoder:
    """Our quarter-width PSPNet-R50-D8 (base 16, head 128, aux 64): the demo's teacher."""
    return _segmentor(50, "psp", num_classes, base_channels=16, head_channels=128, aux_channels=64)


MODELS: dict[str, Callable[[int], EncoderDecoder]] = {
    "pspnet_r18-d8": pspnet_r18_d8,
    "pspnet_r50-d8": pspnet_r50_d8,
    "pspnet_r101-d8": pspnet_r101_d8,
    "deeplabv3_r18-d8": deeplabv3_r18_d8,
    "deeplabv3_r50-d8": deeplabv3_r50_d8,
    "deeplabv3_r101-d8": deeplabv3_r101_d8,
    "pspnet_r18-d8-tiny": pspnet_r18_d8_tiny,
    "pspnet_r50-d8-tiny": pspnet_r50_d8_tiny,
}


def build_segmentor(name: str, num_classes: int) -> EncoderDecoder:
    """Build the named model (a key of :data:`MODELS`) for ``num_classes`` classes."""
    if name not in MODELS:
        near = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise UserError(f"unknown model {name!r}: {hint}valid names are {', '.join(MODELS)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    return MODELS[name](num_classes)
