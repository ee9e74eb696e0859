"""The encoder-decoder segmentor and its inference modes (whole image, sliding window, flip/multi-scale)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .heads import DecodeHead, resize
from .resnet import ResNetV1c

# The reference's preprocessing: RGB on the 0-255 scale, ImageNet statistics.
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)


class EncoderDecoder(nn.Module):
    """``backbone`` -> ``decode_head`` (on the last stage) and ``auxiliary_head`` (on stage 3).

    ``forward`` takes the normalised NCHW image and returns the stride-8 logits as a dict
    ``{"decode": ..., "aux": ...}`` (``"aux"`` only when asked for and present). Training losses live
    outside the model (see :mod:`segdistill.distill.distiller`), so a frozen teacher never computes any.
    """

    def __init__(self, backbone: ResNetV1c, decode_head: DecodeHead, auxiliary_head: DecodeHead | None = None,
                 decode_in_index: int = 3, aux_in_index: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.decode_in_index = decode_in_index
        self.aux_in_index = aux_in_index

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    def forward(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        out = {"decode": self.decode_head(feats[self.decode_in_index])}
        if with_aux and self.auxiliary_head is not None:
            out["aux"] = self.auxiliary_head(feats[self.aux_in_index])
        return out

    @torch.no_grad()
    def inference(self, x: torch.Tensor, mode: str = "whole", crop_size: Sequence[int] | None = None,
                  stride: Sequence[int] | None = None, flip: bool = False,
                  scales: Sequence[float] | None = None, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """Per-class scores at ``out_size`` (default: the input's size); argmax over dim 1 is the prediction.

        Without test-time augmentation the scores are logits. With ``flip`` or several ``scales`` the
        softmax probabilities of every view are averaged, as mmseg's TTA does.
        ``mode="slide"`` runs ``crop_size`` windows every ``stride`` pixels and averages the overlaps.
        """
        if mode not in ("whole", "slide"):
            raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
        if mode == "slide" and (crop_size is None or stride is None):
            raise ValueError("slide inference needs crop_size and stride")
        out_size = tuple(out_size) if out_size is not None else tuple(x.shape[2:])
        scales = tuple(scales) if scales else (1.0,)
        views = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
        tta = len(views) > 1
        total: torch.Tensor | None = None
        for scale, flipped in views:
            xi = x
            if scale != 1.0:
                h, w = x.shape[2:]
                xi = resize(x, (int(h * scale + 0.5), int(w * scale + 0.5)))
            if flipped:
                xi = xi.flip(-1)
            logits = self._slide(xi, crop_size, stride) if mode == "slide" else self._whole(xi)
            if flipped:
                logits = logits.flip(-1)
            logits = resize(logits, out_size) if tuple(logits.shape[2:]) != out_size else logits
            scores = logits.float().softmax(dim=1) if tta else logits.float()
            total = scores if total is None else total + scores
        assert total is not None
        return total / len(views) if tta else total

    def _whole(self, x: torch.Tensor) -> torch.Tensor:
        return resize(self.forward(x, with_aux=False)["decode"], x.shape[2:])

    def _slide(self, x: torch.Tensor, crop_size: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
        # mmseg's grid: windows start every `stride`, the last one is shifted back to end at the border.
        h_crop, w_crop = crop_size
        h_stride, w_stride = stride
        n, _, h, w = x.shape
        h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = x.new_zeros((n, self.num_classes, h, w), dtype=torch.float32)
        count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
        for hi in range(h_grids):
            for wi in range(w_grids):
                y2 = min(hi * h_stride + h_crop, h)
                x2 = min(wi * w_stride + w_crop, w)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                preds[:, :, y1:y2, x1:x2] += self._whole(x[:, :, y1:y2, x1:x2]).float()
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count
