"""Normalisation and padding on the training device, like mmseg's ``SegDataPreProcessor``.

Training workers return uint8 :class:`~segdistill.data.transforms.TrainSample` s (a quarter of the
bytes of float32 pixels, and no float work in the worker); the training loop moves a batch to its
device and calls :class:`DataPreprocessor`, which computes what :class:`~segdistill.data.transforms.Normalize`
then :class:`~segdistill.data.transforms.Pad` computed in the worker before: ``(x - mean) / std`` in
float32 (a true division, as the reference), then 0 (the mean colour) and ``ignore_index`` beyond
each sample's real pixels. On a CPU the result is bit-for-bit the old one (tested); CUDA's float32
subtraction and division are correctly rounded too.

Evaluation keeps normalising in its worker (:func:`~segdistill.data.transforms.build_eval_pipeline`):
batches of one full-size image, where the evaluator's per-image model time dwarfs the transfer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..constants import IGNORE_INDEX, MEAN_RGB, STD_RGB
from ..errors import UserError

__all__ = ["DataPreprocessor", "normalize_image"]


class DataPreprocessor:
    """``(uint8 N x 3 x H x W image, N x H x W label[, N x 2 valid sizes])`` -> ``(float32 image, int64 label)``.

    Runs where ``image`` is (the training device). Everything beyond ``valid_hw[i]`` (the real
    height and width of sample ``i``; the rest is the worker's padding) becomes 0 in the normalised
    image and ``ignore_index`` in the label. ``valid_hw`` should stay on the CPU, as the loader gives
    it: its values decide which slices to write, and reading them from a GPU tensor would wait for
    the device. Without ``valid_hw`` every pixel is real.
    """

    def __init__(self, mean: Sequence[float] = MEAN_RGB, std: Sequence[float] = STD_RGB,
                 ignore_index: int = IGNORE_INDEX) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UserError(f"DataPreprocessor needs 3 means and 3 positive stds, got mean={tuple(mean)} "
                            f"std={tuple(std)}; fix the config")
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32).view(1, 3, 1, 1)
        self.ignore_index = int(ignore_index)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # One copy per device, made once: a fresh host-to-device copy every step would be a small stall.
        if device not in self._on_device:
            self._on_device[device] = (self.mean.to(device), self.std.to(device))
        return self._on_device[device]

    def __call__(self, image: torch.Tensor, label: torch.Tensor,
                 valid_hw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"DataPreprocessor expects an N x 3 x H x W image batch, got shape {tuple(image.shape)}")
        if label.shape != (image.shape[0], *image.shape[2:]):
            raise ValueError(f"label batch {tuple(label.shape)} does not match image batch {tuple(image.shape)}")
        mean, std = self._stats(image.device)
        x = (image.to(torch.float32) - mean) / std
        y = label.to(torch.int64)
        if valid_hw is not None:
            if y.data_ptr() == label.data_ptr():
                y = y.clone()  # an int64 label came in: write the padding into a copy, never the caller's batch
            height, width = x.shape[2], x.shape[3]
            for i, (h, w) in enumerate(valid_hw.tolist()):
                if h < height:
                    x[i, :, h:] = 0.0
                    y[i, h:] = self.ignore_index
                if w < width:
                    x[i, :, :, w:] = 0.0
                    y[i, :, w:] = self.ignore_index
        return x, y

    def __repr__(self) -> str:
        mean, std = tuple(self.mean.flatten().tolist()), tuple(self.std.flatten().tolist())
        return f"DataPreprocessor(mean={mean}, std={std}, ignore_index={self.ignore_index})"


def normalize_image(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``RGB uint8 H x W x 3`` -> the network input ``(1, 3, H, W)`` float32: ``(x - MEAN_RGB) / STD_RGB``."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device=device, dtype=torch.float32)
    mean = torch.tensor(MEAN_RGB, dtype=torch.float32, device=x.device)
    std = torch.tensor(STD_RGB, dtype=torch.float32, device=x.device)
    return ((x - mean) / std).permute(2, 0, 1).unsqueeze(0).contiguous()
