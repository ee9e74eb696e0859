"""mmcv's ``ConvModule`` and ``DepthwiseSeparableConvModule`` in the general form the real-time backbones use.

BiSeNetV2 and STDC build every layer from these two with varying stride, groups, normalisation and
activation; the submodule names (``conv``, ``bn``, ``activate``, ``depthwise_conv``,
``pointwise_conv``) are mmcv's, so mmseg state dicts load unchanged.
"""

from __future__ import annotations

from torch import nn


class ConvNormAct(nn.Sequential):
    """Conv -> optional BN -> optional ReLU, named ``conv``/``bn``/``activate`` like mmcv's ConvModule.

    ``bias=None`` is mmcv's ``bias='auto'``: the conv has a bias exactly when no BN follows it.
    ``padding=None`` keeps the spatial size at stride 1 (``kernel_size // 2``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, groups: int = 1, norm: bool = True, act: bool = True,
                 bias: bool | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2 if padding is None else padding, groups=groups,
                              bias=not norm if bias is None else bias)
        if norm:
            self.bn = nn.BatchNorm2d(out_channels)
        if act:
            self.activate = nn.ReLU(inplace=True)


class DepthwiseSeparableConv(nn.Sequential):
    """mmcv's DepthwiseSeparableConvModule: 3x3 depthwise ConvNormAct then 1x1 pointwise ConvNormAct.

    Each half has its own norm/activation switch, as mmcv's ``dw_*_cfg`` / ``pw_*_cfg``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, *,
                 dw_norm: bool = True, dw_act: bool = True, pw_norm: bool = True, pw_act: bool = True) -> None:
        super().__init__()
        self.depthwise_conv = ConvNormAct(in_channels, in_channels, kernel_size, stride=stride, groups=in_channels,
                                          norm=dw_norm, act=dw_act)
        self.pointwise_conv = ConvNormAct(in_channels, out_channels, 1, norm=pw_norm, act=pw_act)


def init_mmcv_convs(module: nn.Module) -> None:
    """mmcv's ConvModule / mmseg's Kaiming init: convs Kaiming normal (fan_out, ReLU) with zero bias, BN to identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
