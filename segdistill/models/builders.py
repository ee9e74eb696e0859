"""Explicit builders, one function per named model, all kept in :data:`MODELS`.

Every width below is written out as in mmseg's config of the same name, so a released mmseg state dict
of that name loads strictly. The ``-tiny`` variants are ours: same structure at a quarter of the width,
for the demo and the tests on a CPU.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from ..errors import UserError
from .backbones import BiSeNetV2, MixVisionTransformer, MobileNetV2, ResNetV1c, STDCContextPathNet, STDCNet
from .heads import ASPPHead, DecodeHead, DepthwiseSeparableASPPHead, FCNHead, PSPHead, SegformerHead, STDCHead
from .losses import OHEMSampler
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


# ---------------------------------------------------------------------------------------------------------
# MobileNetV2-D8 students and DeepLabV3+ (mmseg's mobilenet_v2/ and deeplabv3plus/ Cityscapes 80k configs).
# In all of them the FCN auxiliary head reads backbone output 2 with loss weight 0.4, and DeepLabV3+'s
# head reads outputs (0, 3): the stride-4 low-level map (c1) and the deepest map.
# ---------------------------------------------------------------------------------------------------------


def _mobilenet_v2_d8(widen_factor: float) -> MobileNetV2:
    """mmseg's ``mobilenet-v2-d8`` backbone: outputs of stages 2, 3, 5, 7 (24, 32, 96, 320 channels at 1.0)."""
    return MobileNetV2(widen_factor=widen_factor, strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4),
                       out_indices=(1, 2, 4, 6))


def deeplabv3plus_m_v2_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``mobilenet-v2-d8_deeplabv3plus``: sep-ASPP head 320->512 with c1 24->48, FCN aux 96->256."""
    return EncoderDecoder(
        _mobilenet_v2_d8(1.0),
        DepthwiseSeparableASPPHead(320, 512, num_classes, c1_in_channels=24, c1_channels=48,
                                   dilations=(1, 12, 24, 36), in_index=(0, 3)),
        FCNHead(96, 256, num_classes, num_convs=1, in_index=2, loss_weight=0.4),
    )


def deeplabv3_m_v2_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``mobilenet-v2-d8_deeplabv3``: ASPP head 320->512, FCN aux 96->256."""
    return EncoderDecoder(
        _mobilenet_v2_d8(1.0),
        ASPPHead(320, 512, num_classes, dilations=(1, 12, 24, 36), in_index=3),
        FCNHead(96, 256, num_classes, num_convs=1, in_index=2, loss_weight=0.4),
    )


def pspnet_m_v2_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``mobilenet-v2-d8_pspnet``: PSP head 320->512, FCN aux 96->256."""
    return EncoderDecoder(
        _mobilenet_v2_d8(1.0),
        PSPHead(320, 512, num_classes, pool_scales=(1, 2, 3, 6), in_index=3),
        FCNHead(96, 256, num_classes, num_convs=1, in_index=2, loss_weight=0.4),
    )


def fcn_m_v2_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``mobilenet-v2-d8_fcn``: FCN head 320->512 (2 convs, input concatenated), FCN aux 96->256."""
    return EncoderDecoder(
        _mobilenet_v2_d8(1.0),
        FCNHead(320, 512, num_classes, num_convs=2, concat_input=True, in_index=3),
        FCNHead(96, 256, num_classes, num_convs=1, in_index=2, loss_weight=0.4),
    )


def _deeplabv3plus_resnet(depth: int, num_classes: int, head_channels: int, c1_channels: int,
                          aux_channels: int) -> EncoderDecoder:
    backbone = ResNetV1c(depth=depth, stem_channels=64, base_channels=64)
    c1, c3, c4 = backbone.out_channels[0], backbone.out_channels[2], backbone.out_channels[3]
    decode = DepthwiseSeparableASPPHead(c4, head_channels, num_classes, c1_in_channels=c1, c1_channels=c1_channels,
                                        dilations=(1, 12, 24, 36), in_index=(0, 3))
    aux = FCNHead(c3, aux_channels, num_classes, num_convs=1, in_index=2, loss_weight=0.4)
    return EncoderDecoder(backbone, decode, aux)


def deeplabv3plus_r18_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``deeplabv3plus_r18-d8``: ResNet-18-V1c, sep-ASPP head 512->128 with c1 64->12, FCN aux 256->64."""
    return _deeplabv3plus_resnet(18, num_classes, head_channels=128, c1_channels=12, aux_channels=64)


def deeplabv3plus_r50_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``deeplabv3plus_r50-d8``: ResNet-50-V1c, sep-ASPP head 2048->512 with c1 256->48, FCN aux 1024->256."""
    return _deeplabv3plus_resnet(50, num_classes, head_channels=512, c1_channels=48, aux_channels=256)


def deeplabv3plus_r101_d8(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``deeplabv3plus_r101-d8``: ResNet-101-V1c, sep-ASPP head 2048->512 with c1 256->48, FCN aux 1024->256."""
    return _deeplabv3plus_resnet(101, num_classes, head_channels=512, c1_channels=48, aux_channels=256)


def deeplabv3plus_m_v2_d8_tiny(num_classes: int = 19) -> EncoderDecoder:
    """Our quarter-width DeepLabV3+-MobileNetV2-D8, for CPU tests and the demo.

    Backbone widen_factor 0.25 (stage outputs 8, 8, 24, 80 channels instead of 24, 32, 96, 320; the
    stem 8 instead of 32); sep-ASPP head 80->128 with c1 8->12 (instead of 320->512, 24->48); FCN aux
    24->64 (instead of 96->256). Strides, dilations and structure as the full model.
    """
    return EncoderDecoder(
        _mobilenet_v2_d8(0.25),
        DepthwiseSeparableASPPHead(80, 128, num_classes, c1_in_channels=8, c1_channels=12,
                                   dilations=(1, 12, 24, 36), in_index=(0, 3)),
        FCNHead(24, 64, num_classes, num_convs=1, in_index=2, loss_weight=0.4),
    )


# ---------------------------------------------------------------------------------------------------------
# SegFormer (mmseg's segformer/ Cityscapes 1024x1024 160k configs): MiT-B0..B5 backbones, the all-MLP head
# on all four stages (in_index 0-3, 256 channels for every size, as mmseg's configs; the paper's B2-B5
# use 768), no auxiliary head, drop-path rate 0.1. Every size has num_heads (1, 2, 5, 8): stage widths
# are embed_dims x (1, 2, 5, 8).
# ---------------------------------------------------------------------------------------------------------


def _segformer(num_classes: int, embed_dims: int, num_layers: tuple[int, int, int, int],
               head_channels: int = 256) -> EncoderDecoder:
    backbone = MixVisionTransformer(embed_dims=embed_dims, num_layers=num_layers, num_heads=(1, 2, 5, 8),
                                    patch_sizes=(7, 3, 3, 3), strides=(4, 2, 2, 2), sr_ratios=(8, 4, 2, 1),
                                    mlp_ratio=4, qkv_bias=True, drop_path_rate=0.1)
    decode = SegformerHead(backbone.out_channels, head_channels, num_classes, dropout=0.1, in_index=(0, 1, 2, 3),
                           align_corners=False)
    return EncoderDecoder(backbone, decode)


def segformer_mit_b0(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``segformer_mit-b0``: MiT-B0 (widths 32, 64, 160, 256; 2, 2, 2, 2 blocks), head 256."""
    return _segformer(num_classes, embed_dims=32, num_layers=(2, 2, 2, 2))


def segformer_mit_b1(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``segformer_mit-b1``: MiT-B1 (widths 64, 128, 320, 512; 2, 2, 2, 2 blocks), head 256."""
    return _segformer(num_classes, embed_dims=64, num_layers=(2, 2, 2, 2))


def segformer_mit_b2(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``segformer_mit-b2``: MiT-B2 (widths 64, 128, 320, 512; 3, 4, 6, 3 blocks), head 256."""
    return _segformer(num_classes, embed_dims=64, num_layers=(3, 4, 6, 3))


def segformer_mit_b3(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``segformer_mit-b3``: MiT-B3 (widths 64, 128, 320, 512; 3, 4, 18, 3 blocks), head 256."""
    return _segformer(num_classes, embed_dims=64, num_layers=(3, 4, 18, 3))


def segformer_mit_b4(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``segformer_mit-b4``: MiT-B4 (widths 64, 128, 320, 512; 3, 8, 27, 3 blocks), head 256."""
    return _segformer(num_classes, embed_dims=64, num_layers=(3, 8, 27, 3))


def segformer_mit_b5(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``segformer_mit-b5``: MiT-B5 (widths 64, 128, 320, 512; 3, 6, 40, 3 blocks), head 256."""
    return _segformer(num_classes, embed_dims=64, num_layers=(3, 6, 40, 3))


def segformer_mit_b0_tiny(num_classes: int = 19) -> EncoderDecoder:
    """Our quarter-width SegFormer-MiT-B0, for CPU tests and the demo.

    embed_dims 8 instead of 32: stage widths 8, 16, 40, 64 (instead of 32, 64, 160, 256), head 64
    (instead of 256); blocks (2, 2, 2, 2), heads (1, 2, 5, 8), patch sizes, strides and reduction
    ratios as B0.
    """
    return _segformer(num_classes, embed_dims=8, num_layers=(2, 2, 2, 2), head_channels=64)


# ---------------------------------------------------------------------------------------------------------
# Real-time students: BiSeNetV2 (mmseg's bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024) and STDC1/STDC2
# (stdc1/stdc2_4xb12-80k_cityscapes-512x1024). Every head's loss weight is 1.0, as in those configs.
# BiSeNetV2: the FCN decode head reads the BGA output (entry 0), four FCN "booster" heads read the
# semantic stages 1-4 (entries 1-4). STDC: the context path returns [stride-8 STDC map, context at
# stride 16, context at stride 8, FFM output]; the decode head (align_corners=True) reads the FFM output,
# two FCN aux heads the contexts, and the detail head (STDCHead, 2 classes, align_corners=True) the
# stride-8 map; the decode and FCN aux heads train on OHEM-selected pixels (thresh 0.7, min_kept 10000).
# ---------------------------------------------------------------------------------------------------------


def bisenetv2(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``bisenetv2_fcn``: BiSeNetV2 (detail 64-64-128, semantic 16-32-64-128, BGA 128), FCN 128->1024,
    four FCN boosters (2 convs each) 16->16, 32->64, 64->256, 128->1024."""
    backbone = BiSeNetV2(in_channels=3, detail_channels=(64, 64, 128), semantic_channels=(16, 32, 64, 128),
                         semantic_expansion_ratio=6, bga_channels=128, out_indices=(0, 1, 2, 3, 4),
                         align_corners=False)
    decode = FCNHead(128, 1024, num_classes, num_convs=1, concat_input=False, dropout=0.1, in_index=0,
                     align_corners=False, loss_weight=1.0)
    aux = nn.ModuleList([
        FCNHead(in_channels, channels, num_classes, num_convs=2, concat_input=False, dropout=0.1, in_index=index,
                align_corners=False, loss_weight=1.0)
        for index, (in_channels, channels) in enumerate(((16, 16), (32, 64), (64, 256), (128, 1024)), start=1)
    ])
    return EncoderDecoder(backbone, decode, aux)


def _stdc(stdc_type: str, num_classes: int) -> EncoderDecoder:
    backbone = STDCContextPathNet(
        STDCNet(stdc_type, in_channels=3, channels=(32, 64, 256, 512, 1024), num_convs=4),
        last_in_channels=(1024, 512), out_channels=128, ffm_in_channels=384, ffm_out_channels=256,
        ffm_scale_factor=4)
    ohem = OHEMSampler(thresh=0.7, min_kept=10000)
    decode = FCNHead(256, 256, num_classes, num_convs=1, concat_input=False, dropout=0.1, in_index=3,
                     align_corners=True, sampler=ohem, loss_weight=1.0)
    aux = nn.ModuleList([
        FCNHead(128, 64, num_classes, num_convs=1, concat_input=False, dropout=0.1, in_index=2,
                align_corners=False, sampler=ohem, loss_weight=1.0),
        FCNHead(128, 64, num_classes, num_convs=1, concat_input=False, dropout=0.1, in_index=1,
                align_corners=False, sampler=ohem, loss_weight=1.0),
        STDCHead(256, 64, 2, num_convs=1, boundary_threshold=0.1, dropout=0.1, in_index=0, align_corners=True,
                 ce_weight=1.0, dice_weight=1.0),
    ])
    return EncoderDecoder(backbone, decode, aux)


def stdc1(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``stdc1``: STDCNet1 (2+2+2 STDC modules) with context path, FCN 256->256 (OHEM), 2 FCN aux
    128->64 (OHEM), detail head 256->64->2."""
    return _stdc("STDCNet1", num_classes)


def stdc2(num_classes: int = 19) -> EncoderDecoder:
    """mmseg ``stdc2``: as ``stdc1`` with STDCNet2 (4+5+3 STDC modules)."""
    return _stdc("STDCNet2", num_classes)


MODELS: dict[str, Callable[[int], EncoderDecoder]] = {
    "pspnet_r18-d8": pspnet_r18_d8,
    "pspnet_r50-d8": pspnet_r50_d8,
    "pspnet_r101-d8": pspnet_r101_d8,
    "deeplabv3_r18-d8": deeplabv3_r18_d8,
    "deeplabv3_r50-d8": deeplabv3_r50_d8,
    "deeplabv3_r101-d8": deeplabv3_r101_d8,
    "pspnet_r18-d8-tiny": pspnet_r18_d8_tiny,
    "pspnet_r50-d8-tiny": pspnet_r50_d8_tiny,
    # MobileNetV2-D8 students and DeepLabV3+
    "deeplabv3plus_m-v2-d8": deeplabv3plus_m_v2_d8,
    "deeplabv3_m-v2-d8": deeplabv3_m_v2_d8,
    "pspnet_m-v2-d8": pspnet_m_v2_d8,
    "fcn_m-v2-d8": fcn_m_v2_d8,
    "deeplabv3plus_r18-d8": deeplabv3plus_r18_d8,
    "deeplabv3plus_r50-d8": deeplabv3plus_r50_d8,
    "deeplabv3plus_r101-d8": deeplabv3plus_r101_d8,
    "deeplabv3plus_m-v2-d8-tiny": deeplabv3plus_m_v2_d8_tiny,
    # SegFormer
    "segformer_mit-b0": segformer_mit_b0,
    "segformer_mit-b1": segformer_mit_b1,
    "segformer_mit-b2": segformer_mit_b2,
    "segformer_mit-b3": segformer_mit_b3,
    "segformer_mit-b4": segformer_mit_b4,
    "segformer_mit-b5": segformer_mit_b5,
    "segformer_mit-b0-tiny": segformer_mit_b0_tiny,
    # Real-time students
    "bisenetv2": bisenetv2,
    "stdc1": stdc1,
    "stdc2": stdc2,
}


def build_segmentor(name: str, num_classes: int) -> EncoderDecoder:
    """Build the named model (a key of :data:`MODELS`) for ``num_classes`` classes."""
    if name not in MODELS:
        near = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise UserError(f"unknown model {name!r}: {hint}valid names are {', '.join(MODELS)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    model = MODELS[name](num_classes)
    setattr(model, "zoo_name", name)  # noqa: B010 - a plain attribute (not a submodule) that checkpoint errors name
    return model
