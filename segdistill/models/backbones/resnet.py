"""ResNetV1c, the dilated backbone of mmsegmentation's ``*-d8`` models.

Parameter names follow mmseg exactly (``stem.0``, ``layer1.0.conv1``, ``bn1``, ``downsample.0`` ...)
so released mmseg checkpoints and ImageNet ``resnetXX_v1c`` weights load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the first carries the stride and the dilation (mmseg's BasicBlock)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1; the 3x3 carries stride and dilation ("pytorch" style, as mmseg's default)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def init_conv_bn(module: nn.Module) -> None:
    """mmseg's default init: Kaiming normal (fan_out, ReLU) for convolutions, BatchNorm as identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


ARCH_SETTINGS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def _res_layer(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, num_blocks: int,
               stride: int, dilation: int, contract_dilation: bool) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    # contract_dilation: the first block of a dilated stage uses half the dilation, which keeps the
    # receptive field growing smoothly at the stride-to-dilation switch (mmseg/PSPNet practice).
    first_dilation = dilation // 2 if (dilation > 1 and contract_dilation) else dilation
    blocks = [block(inplanes, planes, stride=stride, dilation=first_dilation, downsample=downsample)]
    inplanes = planes * block.expansion
    blocks += [block(inplanes, planes, stride=1, dilation=dilation) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


class ResNetV1c(nn.Module):
    """ResNet with a deep 3x3 stem (V1c), strides and dilations chosen for an output stride of 8.

    ``forward`` returns the four stage outputs (strides 4, 8, 8, 8 with the default settings).
    """

    def __init__(self, depth: int = 50, stem_channels: int = 64, base_channels: int = 64,
                 strides: Sequence[int] = (1, 2, 1, 1), dilations: Sequence[int] = (1, 1, 2, 4),
                 contract_dilation: bool = True, zero_init_residual: bool = True) -> None:
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ValueError(f"ResNet depth {depth} is not one of {sorted(ARCH_SETTINGS)}")
        block, stage_blocks = ARCH_SETTINGS[depth]
        self.depth = depth
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_channels // 2, stem_channels // 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_channels // 2, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        self.out_channels: list[int] = []
        layers: list[nn.Sequential] = []
        for i, (n, s, d) in enumerate(zip(stage_blocks, strides, dilations, strict=True)):
            planes = base_channels * 2**i
            layers.append(_res_layer(block, inplanes, planes, n, s, d, contract_dilation))
            inplanes = planes * block.expansion
            self.out_channels.append(inplanes)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # mmseg's from-scratch init; overwritten whenever pretrained weights are loaded.
        init_conv_bn(self)
        if zero_init_residual:
            # Each residual branch starts as identity, which stabilises early training.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.stem(x))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4
