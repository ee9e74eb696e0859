"""Distillation: CWD, DIST, MGD and the comparison losses, connectors, the frozen teacher and the distiller."""

from ..config import DistillTerm
from .connectors import CONNECTOR_KINDS, ConvBNConnector, MGDConnector, build_connector
from .distiller import DistillStudent, check_compatible, tap_channels
from .losses import (
                     LOSSES,
                     AttentionTransfer,
                     ChannelWiseDivergence,
                     DistillLoss,
                     DISTLoss,
                     FeatureMSE,
                     LossInputError,
                     MGDLoss,
                     PairwiseAffinity,
                     PixelWiseKD,
                     build_loss,
                     standardize_logits,
)
from .teacher import FrozenTeacher, fold_batchnorm

__all__ = [
    "CONNECTOR_KINDS", "ConvBNConnector", "MGDConnector", "build_connector", "DistillStudent", "DistillTerm",
    "check_compatible", "tap_channels", "LOSSES", "AttentionTransfer", "ChannelWiseDivergence", "DistillLoss",
    "DISTLoss", "FeatureMSE", "LossInputError", "MGDLoss", "PairwiseAffinity", "PixelWiseKD", "build_loss",
    "standardize_logits", "FrozenTeacher", "fold_batchnorm",
]
