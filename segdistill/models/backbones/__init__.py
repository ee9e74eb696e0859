"""Backbones, one file per family. Each returns the list of its multi-level feature maps."""

from .resnet import ResNetV1c, init_conv_bn

__all__ = ["ResNetV1c", "init_conv_bn"]
