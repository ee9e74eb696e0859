"""Distillation: CWD and the comparison losses, connectors, the frozen teacher and the distiller."""

from .connectors import CONNECTOR_KINDS, ConvBNConnector, build_connector
from ..config import DistillTerm
from .distiller import DistillStudent, check_compatible, tap_channels
from .losses import (LOSSES, AttentionTransfer, ChannelWiseDivergence, DistillLoss, FeatureMSE, LossInputError,
                     PairwiseAffinity, PixelWiseKD, build_loss)
from .teacher import FrozenTeacher, fold_batchnorm

__all__ = [
    "CONNECTOR_KINDS", "ConvBNConnector", "build_connector", "DistillStudent", "DistillTerm", "check_compatible",
    "tap_channels", "LOSSES", "AttentionTransfer", "ChannelWiseDivergence", "DistillLoss", "FeatureMSE",
    "LossInputError", "PairwiseAffinity", "PixelWiseKD", "build_loss", "FrozenTeacher", "fold_batchnorm",
]
