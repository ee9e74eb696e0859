"""BiSeNetV2 (Yu et al., 2021) as mmseg 1.2.2 builds it, with mmseg's parameter names.

Two branches see the image: a wide, shallow *detail* branch (stride 8) and a narrow, deep *semantic*
branch (stem, gather-and-expansion layers, context embedding; stride 32). The bilateral guided
aggregation (BGA) layer lets each branch gate the other and fuses them at stride 8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..ops import resize
from .layers import ConvNormAct, DepthwiseSeparableConv, init_mmcv_convs


class DetailBranch(nn.Module):
    """Three stages of 3x3 ConvBNReLUs (2, 3, 3 of them), each starting with stride 2: output stride 8."""

    def __init__(self, channels: Sequence[int] = (64, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        stages = []
        for i, out in enumerate(channels):
            cin = in_channels if i == 0 else channels[i - 1]
            layers = [ConvNormAct(cin, out, 3, stride=2), ConvNormAct(out, out, 3)]
            if i > 0:
                layers.append(ConvNormAct(out, out, 3))
            stages.append(nn.Sequential(*layers))
        self.detail_branch = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.detail_branch:
            x = stage(x)
        return x


class StemBlock(nn.Module):
    """Stride-4 stem: a 3x3 s2 conv, then a conv path (1x1 halving, 3x3 s2) and a max-pool path, concatenated."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16) -> None:
        super().__init__()
        self.conv_first = ConvNormAct(in_channels, out_channels, 3, stride=2)
        self.convs = nn.Sequential(ConvNormAct(out_channels, out_channels // 2, 1),
                                   ConvNormAct(out_channels // 2, out_channels, 3, stride=2))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.fuse_last = ConvNormAct(out_channels * 2, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x)
        return self.fuse_last(torch.cat([self.convs(x), self.pool(x)], dim=1))


class GELayer(nn.Module):
    """Gather-and-expansion layer: 3x3 conv, depthwise expansion by ``exp_ratio``, 1x1 projection, residual.

    At stride 2 the expansion is two depthwise convs (the first strided, without ReLU) and the shortcut
    is a depthwise-separable conv without activations; at stride 1 the input is added back. ReLU after
    the sum.
    """

    def __init__(self, in_channels: int, out_channels: int, exp_ratio: int = 6, stride: int = 1) -> None:
        super().__init__()
        mid = in_channels * exp_ratio
        self.conv1 = ConvNormAct(in_channels, in_channels, 3)
        self.shortcut: nn.Sequential | None
        if stride == 1:
            self.dwconv = nn.Sequential(ConvNormAct(in_channels, mid, 3, groups=in_channels))
            self.shortcut = None
        else:
            self.dwconv = nn.Sequential(
                ConvNormAct(in_channels, mid, 3, stride=stride, groups=in_channels, act=False),
                ConvNormAct(mid, mid, 3, groups=mid),
            )
            self.shortcut = nn.Sequential(
                DepthwiseSeparableConv(in_channels, out_channels, 3, stride=stride, dw_act=False, pw_act=False))
        self.conv2 = nn.Sequential(ConvNormAct(mid, out_channels, 1, act=False))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.dwconv(self.conv1(x)))
        return self.act(out + (x if self.shortcut is None else self.shortcut(x)))


class CEBlock(nn.Module):
    """Context embedding: global average pool -> BN -> 1x1 ConvBNReLU, added to the input, then a 3x3 ConvBNReLU."""

    def __init__(self, in_channels: int = 128, out_channels: int = 128) -> None:
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.BatchNorm2d(in_channels))
        self.conv_gap = ConvNormAct(in_channels, out_channels, 1)
        self.conv_last = ConvNormAct(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(x + self.conv_gap(self.gap(x)))


class SemanticBranch(nn.Module):
    """Stem (``stage1``, stride 4), GE stages ``stage2``..``stage4`` (strides 8, 16, 32), then ``stage4_CEBlock``.

    Each GE stage starts with a stride-2 layer; the last stage has four layers, the others two.
    ``forward`` returns the output of every stage, the CE block's last.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128), in_channels: int = 3, exp_ratio: int = 6) -> None:
        super().__init__()
        self.stage_names: list[str] = []
        for i, out in enumerate(channels):
            name = f"stage{i + 1}"
            stage: nn.Module
            if i == 0:
                stage = StemBlock(in_channels, out)
            else:
                repeats = 3 if i == len(channels) - 1 else 1
                stage = nn.Sequential(GELayer(channels[i - 1], out, exp_ratio, 2),
                                      *[GELayer(out, out, exp_ratio, 1) for _ in range(repeats)])
            self.add_module(name, stage)
            self.stage_names.append(name)
        ce_name = f"stage{len(channels)}_CEBlock"
        self.add_module(ce_name, CEBlock(channels[-1], channels[-1]))
        self.stage_names.append(ce_name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs


class BGALayer(nn.Module):
    """Bilateral guided aggregation of the detail (stride 8) and semantic (stride 32) maps.

    The detail map, through a depthwise-separable conv, is gated by the sigmoid of the upsampled
    semantic map; the semantic map, through its own depthwise-separable conv, gates the detail map
    downsampled by 4 (3x3 s2 conv + 3x3 s2 avg-pool). The second product is upsampled, the two are
    summed and fused by a 3x3 ConvBNReLU. The pointwise convs have a bias and neither BN nor ReLU.
    """

    def __init__(self, out_channels: int = 128, align_corners: bool = False) -> None:
        super().__init__()
        c = out_channels
        self.align_corners = align_corners
        self.detail_dwconv = nn.Sequential(DepthwiseSeparableConv(c, c, 3, dw_act=False, pw_norm=False, pw_act=False))
        self.detail_down = nn.Sequential(ConvNormAct(c, c, 3, stride=2, act=False),
                                         nn.AvgPool2d(kernel_size=3, stride=2, padding=1))
        self.semantic_conv = nn.Sequential(ConvNormAct(c, c, 3, act=False))
        self.semantic_dwconv = nn.Sequential(
            DepthwiseSeparableConv(c, c, 3, dw_act=False, pw_norm=False, pw_act=False))
        self.conv = ConvNormAct(c, c, 3)

    def forward(self, x_d: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
        detail_dwconv = self.detail_dwconv(x_d)
        detail_down = self.detail_down(x_d)
        semantic_conv = resize(self.semantic_conv(x_s), detail_dwconv.shape[2:], self.align_corners)
        semantic_dwconv = self.semantic_dwconv(x_s)
        fuse_1 = detail_dwconv * torch.sigmoid(semantic_conv)
        fuse_2 = resize(detail_down * torch.sigmoid(semantic_dwconv), fuse_1.shape[2:], self.align_corners)
        return self.conv(fuse_1 + fuse_2)


class BiSeNetV2(nn.Module):
    """mmseg's BiSeNetV2 backbone.

    ``forward`` returns mmseg's list: the BGA output (``bga_channels``, stride 8) followed by the
    semantic stages 1-4 (strides 4, 8, 16, 32), filtered by ``out_indices``; the FCN decode head reads
    entry 0 and the four booster heads entries 1-4. ``align_corners`` is the BGA layer's resize setting.
    mmseg's init (Kaiming fan-out convs, BN to identity) is applied at construction.
    """

    def __init__(self, in_channels: int = 3, detail_channels: Sequence[int] = (64, 64, 128),
                 semantic_channels: Sequence[int] = (16, 32, 64, 128), semantic_expansion_ratio: int = 6,
                 bga_channels: int = 128, out_indices: Sequence[int] = (0, 1, 2, 3, 4),
                 align_corners: bool = False) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.detail = DetailBranch(detail_channels, in_channels)
        self.semantic = SemanticBranch(semantic_channels, in_channels, semantic_expansion_ratio)
        self.bga = BGALayer(bga_channels, align_corners)
        widths = [bga_channels, *semantic_channels]
        self.out_channels = [widths[i] for i in self.out_indices]
        init_mmcv_convs(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        semantic = self.semantic(x)
        outs = [self.bga(self.detail(x), semantic[-1]), *semantic[:-1]]
        return [outs[i] for i in self.out_indices]
