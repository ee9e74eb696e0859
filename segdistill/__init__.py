"""segdistill: channel-wise knowledge distillation for semantic segmentation in plain PyTorch."""

__version__ = "0.1.0"
