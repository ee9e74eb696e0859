"""The encoder-decoder segmentor and its inference modes (whole image, sliding window, flip/multi-scale)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..constants import MEAN_RGB, STD_RGB  # noqa: F401 - re-exported: the one normalisation of the zoo
from .heads import DecodeHead
from .ops import resize


class EncoderDecoder(nn.Module):
    """``backbone`` -> its list of feature maps -> ``decode_head`` and any auxiliary heads.

    Each head picks its inputs from the feature list by its ``in_index`` (see :mod:`.heads.base`).
    ``auxiliary_head`` is ``None``, one head (state-dict prefix ``auxiliary_head.``) or an
    ``nn.ModuleList`` of heads (``auxiliary_head.0.`` ...), as in mmseg.

    ``forward`` takes the normalised NCHW image and returns the raw logits as a dict: ``"decode"``,
    and when asked for, ``"aux"`` (one auxiliary head) or ``"aux_0"``, ``"aux_1"``, ... (several).
    :meth:`loss` turns those into the named training losses, each head with its own loss.
    """

    def __init__(self, backbone: nn.Module, decode_head: DecodeHead,
                 auxiliary_head: DecodeHead | nn.ModuleList | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    def aux_heads(self) -> dict[str, DecodeHead]:
        """Output name -> auxiliary head, in mmseg's order."""
        if self.auxiliary_head is None:
            return {}
        if isinstance(self.auxiliary_head, nn.ModuleList):
            return {f"aux_{i}": h for i, h in enumerate(self.auxiliary_head)}  # type: ignore[misc]
        return {"aux": self.auxiliary_head}

    def heads(self) -> dict[str, DecodeHead]:
        """Output name -> head, decode head first."""
        return {"decode": self.decode_head, **self.aux_heads()}

    def forward(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        out = {"decode": self.decode_head(self.decode_head.select(feats))}
        if with_aux:
            for name, head in self.aux_heads().items():
                out[name] = head(head.select(feats))
        return out

    def loss(self, outputs: dict[str, torch.Tensor], label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each head's loss on its output: ``loss_decode``, ``loss_aux`` or ``loss_aux_<i>`` (+ ``_<part>``).

        A head whose ``loss_weight`` is 0 (or whose output is absent) contributes nothing.
        """
        losses: dict[str, torch.Tensor] = {}
        for name, head in self.heads().items():
            if name not in outputs or head.loss_weight == 0:
                continue
            for part, value in head.loss(outputs[name], label).items():
                losses[f"loss_{name}_{part}" if part else f"loss_{name}"] = value
        return losses

    def set_loss_options(self, aux_weight: float | None = None, avg_non_ignore: bool | None = None) -> None:
        """Override mmseg's per-head loss settings: every auxiliary head's weight, and the CE averaging."""
        for name, head in self.heads().items():
            if aux_weight is not None and name != "decode":
                head.loss_weight = aux_weight
            if avg_non_ignore is not None:
                head.avg_non_ignore = avg_non_ignore

    def needs_aux(self) -> bool:
        """Whether any auxiliary head has a loss to compute (else training can skip their forward)."""
        return any(h.loss_weight > 0 for h in self.aux_heads().values())

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
            if mode == "slide":
                assert crop_size is not None and stride is not None
                logits = self._slide(xi, crop_size, stride)
            else:
                logits = self._whole(xi)
            if flipped:
                logits = logits.flip(-1)
            logits = resize(logits, out_size, self.decode_head.align_corners) \
                if tuple(logits.shape[2:]) != out_size else logits
            scores = logits.float().softmax(dim=1) if tta else logits.float()
            total = scores if total is None else total + scores
        assert total is not None
        return total / len(views) if tta else total

    def _whole(self, x: torch.Tensor) -> torch.Tensor:
        return resize(self.forward(x, with_aux=False)["decode"], x.shape[2:], self.decode_head.align_corners)

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
