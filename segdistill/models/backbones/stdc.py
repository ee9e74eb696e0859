"""STDC (Fan et al., "Rethinking BiSeNet", 2021) as mmseg 1.2.2 builds it, with mmseg's parameter names.

:class:`STDCNet` is the ImageNet network (STDCNet1 = the paper's STDC1/813M, STDCNet2 = STDC2/1446M);
:class:`STDCContextPathNet` wraps it (as ``backbone.backbone``) with BiSeNet's context path: attention
refinement modules on the stride-32 and stride-16 maps, a global-context branch, and the feature
fusion module that joins the stride-8 map with the refined context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvNormAct, init_mmcv_convs


class STDCModule(nn.Module):
    """Short-term dense concatenation block (mmseg's ``fusion_type='cat'``).

    ``layers[0]`` is a 1x1 ConvBNReLU to ``out/2`` channels; ``layers[1..num_convs-1]`` are 3x3
    ConvBNReLUs halving the width each time (the last one keeps it), each fed by the previous. The
    outputs of all layers are concatenated (``out/2 + out/4 + ... = out`` channels). At stride 2 the
    second layer reads ``downsample`` (a 3x3 s2 depthwise ConvBN) of the first, and the first's entry
    in the concatenation is replaced by its 3x3 s2 average pool (``skip``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, num_convs: int = 4) -> None:
        super().__init__()
        if num_convs < 2:
            raise ValueError(f"an STDC module needs at least 2 convs, got {num_convs}")
        if stride not in (1, 2):
            raise ValueError(f"STDC module stride must be 1 or 2, got {stride}")
        self.with_downsample = stride == 2
        self.layers = nn.ModuleList([ConvNormAct(in_channels, out_channels // 2, 1)])
        if self.with_downsample:
            self.downsample = ConvNormAct(out_channels // 2, out_channels // 2, 3, stride=2,
                                          groups=out_channels // 2, act=False)
            self.skip = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        for i in range(1, num_convs):
            out_factor = 2 ** (i + 1) if i != num_convs - 1 else 2 ** i
            self.layers.append(ConvNormAct(out_channels // 2 ** i, out_channels // out_factor, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.layers[0](x)
        outs = [self.skip(x0) if self.with_downsample else x0]
        y = self.downsample(x0) if self.with_downsample else x0
        for layer in self.layers[1:]:
            y = layer(y)
            outs.append(y)
        return torch.cat(outs, dim=1)


class STDCNet(nn.Module):
    """STDCNet: two 3x3 s2 ConvBNReLUs (``stages.0``, ``stages.1``, stride 4) then three stages of STDC modules.

    ``arch`` gives the modules' strides per stage (the first of each is 2): STDCNet1 has 2+2+2 modules,
    STDCNet2 has 4+5+3. ``forward`` returns the three STDC stages' outputs (``channels[2:]`` wide, strides
    8, 16, 32), as mmseg's ``STDCNet`` with ``with_final_conv=False``.
    """

    ARCH_SETTINGS: dict[str, tuple[tuple[int, ...], ...]] = {
        "STDCNet1": ((2, 1), (2, 1), (2, 1)),
        "STDCNet2": ((2, 1, 1, 1), (2, 1, 1, 1, 1), (2, 1, 1)),
    }
    #: The ImageNet classifier's 1x1 conv on the last stage (mmseg's ``final_conv``, absent with
    #: ``with_final_conv=False`` as in every STDC segmentation config); ``load_backbone_checkpoint`` drops it.
    IMAGENET_ONLY_PREFIXES: tuple[str, ...] = ("final_conv.",)

    def __init__(self, stdc_type: str = "STDCNet1", in_channels: int = 3,
                 channels: Sequence[int] = (32, 64, 256, 512, 1024), num_convs: int = 4) -> None:
        super().__init__()
        if stdc_type not in self.ARCH_SETTINGS:
            raise ValueError(f"stdc_type must be one of {', '.join(self.ARCH_SETTINGS)}, got {stdc_type!r}")
        if len(channels) != 5:
            raise ValueError(f"STDCNet needs 5 channel counts, got {len(channels)}")
        self.stages = nn.ModuleList([ConvNormAct(in_channels, channels[0], 3, stride=2),
                                     ConvNormAct(channels[0], channels[1], 3, stride=2)])
        self.num_shallow = len(self.stages)
        for i, strides in enumerate(self.ARCH_SETTINGS[stdc_type]):
            cin, cout = channels[i + 1], channels[i + 2]
            self.stages.append(nn.Sequential(
                *[STDCModule(cin if j == 0 else cout, cout, stride, num_convs) for j, stride in enumerate(strides)]))
        self.out_channels = list(channels[2:])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[self.num_shallow:]


class AttentionRefinementModule(nn.Module):
    """BiSeNet's ARM: 3x3 ConvBNReLU, then a channel gate sigmoid(BN(1x1 conv(global average pool)))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_layer = ConvNormAct(in_channels, out_channels, 3)
        self.atten_conv_layer = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)),
                                              ConvNormAct(out_channels, out_channels, 1, act=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_layer(x)
        return x * self.atten_conv_layer(x)


class FeatureFusionModule(nn.Module):
    """STDC's FFM: concat -> 1x1 ConvBNReLU; a squeeze-excitation gate (pool, 1x1 ReLU, 1x1, sigmoid; no BN,
    no bias) reweights it, and the result is added to the ungated map."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int = 4) -> None:
        super().__init__()
        channels = out_channels // scale_factor
        self.conv0 = ConvNormAct(in_channels, out_channels, 1)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            ConvNormAct(out_channels, channels, 1, norm=False, bias=False),
            ConvNormAct(channels, out_channels, 1, norm=False, act=False, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.conv0(torch.cat([spatial, context], dim=1))
        return x * self.attention(x) + x


class STDCContextPathNet(nn.Module):
    """mmseg's STDCContextPathNet: STDCNet (``backbone``) plus the context path.

    The global average of the stride-32 map (``conv_avg``) is broadcast back; ``arms[0]`` refines the
    stride-32 map and ``arms[1]`` the stride-16 one, each added to the upsampled context from above,
    upsampled (nearest) to the next stride and smoothed by ``convs[i]``. ``forward`` returns mmseg's
    list: ``[stride-8 STDC map (for the detail head), context at stride 16, context at stride 8,
    FFM(stride-8 map, context at stride 8)]``; the decode head reads the last entry.

    :data:`PRETRAINED_CHILD` names the submodule that ImageNet weights belong to (mmseg's
    ``backbone_cfg.init_cfg``); the context path keeps its init.
    """

    PRETRAINED_CHILD = "backbone"

    def __init__(self, backbone: STDCNet, last_in_channels: Sequence[int] = (1024, 512), out_channels: int = 128,
                 ffm_in_channels: int = 384, ffm_out_channels: int = 256, ffm_scale_factor: int = 4) -> None:
        super().__init__()
        self.backbone = backbone
        self.arms = nn.ModuleList([AttentionRefinementModule(c, out_channels) for c in last_in_channels])
        self.convs = nn.ModuleList([ConvNormAct(out_channels, out_channels, 3) for _ in last_in_channels])
        self.conv_avg = ConvNormAct(last_in_channels[0], out_channels, 1)
        self.ffm = FeatureFusionModule(ffm_in_channels, ffm_out_channels, ffm_scale_factor)
        self.out_channels = [backbone.out_channels[0], out_channels, out_channels, ffm_out_channels]
        init_mmcv_convs(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.backbone(x)
        feature_up = F.interpolate(self.conv_avg(F.adaptive_avg_pool2d(outs[-1], 1)), size=outs[-1].shape[2:],
                                   mode="nearest")
        arms_out = []
        for i, (arm, conv) in enumerate(zip(self.arms, self.convs, strict=True)):
            x_arm = arm(outs[len(outs) - 1 - i]) + feature_up
            feature_up = conv(F.interpolate(x_arm, size=outs[len(outs) - 2 - i].shape[2:], mode="nearest"))
            arms_out.append(feature_up)
        return [outs[0], *arms_out, self.ffm(outs[0], arms_out[1])]
