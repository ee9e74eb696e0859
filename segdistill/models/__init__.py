"""Models: mmseg-identical segmentors built by explicit builders, and their checkpoints."""

from .backbones import ResNetV1c
from .builders import MODELS, build_segmentor
from .checkpoint import (
                         Mismatch,
                         extract_state_dict,
                         load_backbone_checkpoint,
                         load_checkpoint,
                         load_state_dict,
                         read_checkpoint,
                         save_checkpoint,
)
from .heads import ASPPHead, DecodeHead, FCNHead, PSPHead
from .info import model_info
from .losses import IGNORE_INDEX, seg_cross_entropy
from .ops import resize
from .segmentor import MEAN_RGB, STD_RGB, EncoderDecoder

__all__ = [
    "MODELS", "build_segmentor", "Mismatch", "extract_state_dict", "load_backbone_checkpoint",
    "load_checkpoint", "load_state_dict", "read_checkpoint", "save_checkpoint", "ASPPHead", "DecodeHead",
    "FCNHead", "PSPHead", "model_info", "IGNORE_INDEX", "seg_cross_entropy", "resize", "ResNetV1c", "MEAN_RGB",
    "STD_RGB", "EncoderDecoder",
]
