"""Backbones, one file per family. Each returns the list of its multi-level feature maps."""

from .bisenetv2 import BiSeNetV2
from .mit import MixVisionTransformer
from .mobilenet_v2 import MobileNetV2
from .resnet import ResNetV1c, init_conv_bn
from .stdc import STDCContextPathNet, STDCNet

__all__ = ["BiSeNetV2", "MixVisionTransformer", "MobileNetV2", "ResNetV1c", "STDCContextPathNet", "STDCNet",
           "init_conv_bn"]
