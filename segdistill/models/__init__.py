"""Models: mmseg-identical ResNetV1c segmentors built by explicit builders, and their checkpoints."""

from .builders import MODELS, build_segmentor
from .checkpoint import (Mismatch, extract_state_dict, load_backbone_checkpoint, load_checkpoint,
                         load_state_dict, read_checkpoint, save_checkpoint)
from .heads import ASPPHead, DecodeHead, FCNHead, PSPHead
from .info import model_info
from .losses import SegLoss, seg_cross_entropy
from .resnet import ResNetV1c
from .segmentor import MEAN_RGB, STD_RGB, EncoderDecoder

__all__ = [
    "MODELS", "build_segmentor", "Mismatch", "extract_state_dict", "load_backbone_checkpoint",
    "load_checkpoint", "load_state_dict", "read_checkpoint", "save_checkpoint", "ASPPHead", "DecodeHead",
    "FCNHead", "PSPHead", "model_info", "SegLoss", "seg_cross_entropy", "ResNetV1c", "MEAN_RGB", "STD_RGB", "EncoderDecoder",
]
