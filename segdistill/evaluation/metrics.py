"""Semantic-segmentation metrics: a confusion matrix and the numbers mmseg reports from it.

:class:`ConfusionMatrix` accumulates pixel counts (rows = ground truth, columns = prediction)
batch by batch, on whatever device the predictions live on, and can be summed across
processes. :func:`compute_metrics` turns the matrix into per-class IoU and accuracy plus
``mIoU``, ``mAcc`` and ``aAcc``, all in percent, with the same corner-case behaviour as
mmsegmentation 1.x's ``IoUMetric`` (see ``docs/evaluation.md``): a class that is undefined for
a metric is NaN and is left out of that metric's mean, never counted as 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..constants import IGNORE_INDEX
from ..errors import UserError

__all__ = ["ConfusionMatrix", "MetricValueError", "SegMetrics", "compute_metrics"]

# How many distinct offending values an error message lists before it stops.
_MAX_LISTED_VALUES = 10


class MetricValueError(UserError, ValueError):
    """Bad values given to a metric.

    It is a ``ValueError`` for library callers and a :class:`UserError` so that the CLI prints
    its one-line message: the usual cause is a config (``num_classes``, ``ignore_index``) that
    does not fit the dataset's label files.
    """


def _offending_values(values: torch.Tensor, bad: torch.Tensor) -> str:
    found = torch.unique(values[bad]).tolist()
    listed = ", ".join(str(v) for v in found[:_MAX_LISTED_VALUES])
    if len(found) > _MAX_LISTED_VALUES:
        listed += f", ... ({len(found)} distinct values)"
    return f"[{listed}]"


class ConfusionMatrix:
    """Pixel-count confusion matrix of a segmentation model over a dataset.

    ``matrix[g, p]`` counts the pixels whose ground truth is class ``g`` and whose prediction
    is class ``p``; pixels labelled ``ignore_index`` are not counted at all, whatever was
    predicted there. Counts are int64, so they are exact for any dataset size.

    Args:
        num_classes: number of classes; class ids are ``0 .. num_classes - 1``.
        ignore_index: label value that marks pixels left out of the evaluation.
        device: where the matrix lives. ``None`` means "wherever the first batch is", so
            CUDA predictions are counted on the GPU without a copy to the host.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 device: torch.device | str | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise MetricValueError(
                f"num_classes must be a positive int, got {num_classes!r}; "
                "set num_classes in the config to the dataset's class count"
            )
        if 0 <= ignore_index < num_classes:
            raise MetricValueError(
                f"ignore_index={ignore_index} is also a class id (0..{num_classes - 1}); "
                "set ignore_index in the config to a value outside the class ids, such as 255"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # With no device given, the first update decides; after that the matrix stays put.
        self._device_fixed = device is not None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Set every count back to zero (the device is kept)."""
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add one batch of predictions and labels of the same shape (any shape).

        Args:
            pred: predicted class ids, an integer tensor with values in ``0 .. num_classes-1``.
            label: ground-truth class ids, an integer tensor; ``ignore_index`` pixels are skipped.

        Raises:
            TypeError: ``pred`` or ``label`` is not an integer tensor (for example logits).
            MetricValueError: the shapes differ, or a non-ignored label or a prediction is not
                a class id; the message lists the offending values.
        """
        for name, tensor in (("pred", pred), ("label", label)):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
            if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
                raise TypeError(
                    f"{name} must hold integer class ids, got dtype {tensor.dtype} "
                    "(take the argmax over the class dimension first)"
                )
        if pred.shape != label.shape:
            raise MetricValueError(
                f"pred has shape {tuple(pred.shape)} but label has shape {tuple(label.shape)}; "
                "resize the prediction to the label's size before evaluating"
            )
        if not self._device_fixed:
            self.matrix = self.matrix.to(pred.device)
            self._device_fixed = True
        # int64 before any arithmetic: uint8 labels times num_classes would wrap around.
        pred = pred.to(device=self.matrix.device, dtype=torch.int64).reshape(-1)
        label = label.to(device=self.matrix.device, dtype=torch.int64).reshape(-1)

        valid = label != self.ignore_index
        label = label[valid]
        pred = pred[valid]
        if label.numel() == 0:
            return
        self._check_range(
            label,
            "label",
            "convert the labels to train ids (e.g. Cityscapes *_labelTrainIds.png) "
            "or fix num_classes/ignore_index in the config",
        )
        self._check_range(pred, "pred", "the model's output channels must equal num_classes in the config")

        counts = torch.bincount(self.num_classes * label + pred, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def _check_range(self, values: torch.Tensor, name: str, fix: str) -> None:
        low, high = torch.aminmax(values)
        if low.item() >= 0 and high.item() < self.num_classes:
            return
        bad = (values < 0) | (values >= self.num_classes)
        raise MetricValueError(
            f"{name} holds values {_offending_values(values, bad)} that are neither class ids "
            f"0..{self.num_classes - 1} nor ignore_index={self.ignore_index}; {fix}"
        )

    def all_reduce(self, group: Any = None) -> None:
        """Sum the matrix over all processes, in place, so every rank holds the total.

        A no-op unless ``torch.distributed`` is initialised with more than one process. Call it
        once, after the last update: calling it twice counts every pixel ``world_size`` times.
        """
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) <= 1:
            return
        tensor = self.matrix
        # NCCL only reduces CUDA tensors; a CPU matrix visits the current GPU and comes back.
        if dist.get_backend(group) == "nccl" and tensor.device.type != "cuda":
            tensor = tensor.cuda()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        self.matrix = tensor.to(self.matrix.device)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this matrix: ``num_classes``, ``ignore_index``, ``matrix`` (CPU copy)."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "matrix": self.matrix.detach().cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the counts with those of ``state`` (from :meth:`state_dict` of a compatible matrix)."""
        matrix = self._compatible_matrix(state, "load")
        self.matrix = matrix.to(self.matrix.device, dtype=torch.int64).clone()

    def merge(self, other: ConfusionMatrix | Mapping[str, Any]) -> None:
        """Add the counts of ``other`` (a matrix or its :meth:`state_dict`), e.g. from another worker."""
        state = other.state_dict() if isinstance(other, ConfusionMatrix) else other
        self.matrix += self._compatible_matrix(state, "merge").to(self.matrix.device, dtype=torch.int64)

    def _compatible_matrix(self, state: Mapping[str, Any], verb: str) -> torch.Tensor:
        try:
            num_classes, ignore_index, matrix = state["num_classes"], state["ignore_index"], state["matrix"]
        except KeyError as missing:
            raise MetricValueError(
                f"cannot {verb} a confusion-matrix state without key {missing}; pass ConfusionMatrix.state_dict()"
            ) from None
        if num_classes != self.num_classes or ignore_index != self.ignore_index:
            raise MetricValueError(
                f"cannot {verb} a matrix with num_classes={num_classes}, ignore_index={ignore_index} into one "
                f"with num_classes={self.num_classes}, ignore_index={self.ignore_index}; "
                "evaluate both with the same config"
            )
        if not isinstance(matrix, torch.Tensor) or tuple(matrix.shape) != (self.num_classes, self.num_classes):
            shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
            raise MetricValueError(
                f"cannot {verb} a confusion-matrix state whose 'matrix' is {shape}; "
                f"expected a {self.num_classes}x{self.num_classes} tensor from ConfusionMatrix.state_dict()"
            )
        return matrix

    def compute(self, class_names: Sequence[str] | None = None) -> SegMetrics:
        """Shorthand for ``compute_metrics(self.matrix, class_names)``."""
        return compute_metrics(self.matrix, class_names)


@dataclass(frozen=True)
class SegMetrics:
    """Segmentation metrics of one evaluation, all percentages (0-100) like mmseg's.

    Per-class values are NaN where they are undefined (see :func:`compute_metrics`); the means
    skip NaN entries and are NaN only if every entry is.

    Attributes:
        class_names: one name per class, in class-id order.
        iou: per-class intersection over union, TP / (TP + FP + FN).
        acc: per-class accuracy (recall), TP / (TP + FN).
        support: per-class number of ground-truth pixels (ignored pixels excluded).
        mIoU: mean of the defined per-class IoUs.
        mAcc: mean of the defined per-class accuracies.
        aAcc: overall pixel accuracy, correct pixels / all non-ignored pixels.
    """

    class_names: tuple[str, ...]
    iou: tuple[float, ...]
    acc: tuple[float, ...]
    support: tuple[int, ...]
    # mmseg's metric names, kept as they are so that logs and JSON read the same in both.
    mIoU: float  # noqa: N815
    mAcc: float  # noqa: N815
    aAcc: float  # noqa: N815

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy with NaN as None.

        Keys: ``aAcc``, ``mIoU``, ``mAcc`` and ``per_class[name] = {"IoU", "Acc", "support"}``.
        """
        return {
            "aAcc": _json_float(self.aAcc),
            "mIoU": _json_float(self.mIoU),
            "mAcc": _json_float(self.mAcc),
            "per_class": {
                name: {"IoU": _json_float(iou), "Acc": _json_float(acc), "support": support}
                for name, iou, acc, support in zip(self.class_names, self.iou, self.acc, self.support, strict=True)
            },
        }

    def table(self) -> str:
        """Markdown: one row per class (IoU, Acc, support), then a one-row summary (aAcc, mIoU, mAcc).

        Values have two decimals as in mmseg's log; undefined values print as ``nan``.
        """
        lines = ["| Class | IoU | Acc | Support |", "|:--|--:|--:|--:|"]
        for name, iou, acc, support in zip(self.class_names, self.iou, self.acc, self.support, strict=True):
            # A '|' inside a name would split the markdown cell.
            lines.append(f"| {name.replace('|', '&#124;')} | {iou:.2f} | {acc:.2f} | {support} |")
        lines += ["", "| aAcc | mIoU | mAcc |", "|--:|--:|--:|"]
        lines.append(f"| {self.aAcc:.2f} | {self.mIoU:.2f} | {self.mAcc:.2f} |")
        return "\n".join(lines)


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~torch.isnan(values)]
    return float(kept.mean()) if kept.numel() else math.nan


def compute_metrics(matrix: torch.Tensor, class_names: Sequence[str] | None = None) -> SegMetrics:
    """Per-class IoU/Acc and mIoU/mAcc/aAcc (percent) from a confusion matrix (rows = ground truth).

    Corner cases, identical to mmseg 1.x ``IoUMetric`` with its default ``nan_to_num=None``:

    * class in neither ground truth nor prediction: IoU NaN, Acc NaN; left out of both means.
    * class predicted but absent from the ground truth: IoU 0 (counted in mIoU), Acc NaN (not
      in mAcc).
    * class in the ground truth but never predicted: IoU 0, Acc 0.
    * no valid pixel at all: every value, aAcc and the means are NaN.

    Ratios are taken in float64 from exact integer counts.

    Args:
        matrix: ``(C, C)`` counts with non-negative entries, e.g. ``ConfusionMatrix.matrix``.
        class_names: ``C`` distinct names; default ``"0" .. "C-1"``.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise MetricValueError(f"a confusion matrix must be square (C, C), got shape {tuple(matrix.shape)}")
    num_classes = matrix.shape[0]
    names = tuple(str(i) for i in range(num_classes)) if class_names is None else tuple(class_names)
    if len(names) != num_classes:
        raise MetricValueError(
            f"got {len(names)} class names for a {num_classes}-class confusion matrix; "
            "give one name per class (check the dataset's class list against num_classes)"
        )
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise MetricValueError(f"class names {duplicates} appear more than once; give every class a distinct name")
    counts = matrix.detach().to(device="cpu", dtype=torch.float64)
    if bool((counts < 0).any()):
        raise MetricValueError(
            "a confusion matrix cannot hold negative counts; pass the matrix accumulated by ConfusionMatrix"
        )

    true_pos = torch.diagonal(counts)
    gt_area = counts.sum(dim=1)
    pred_area = counts.sum(dim=0)
    union = gt_area + pred_area - true_pos
    # 0/0 gives NaN, which is exactly "undefined" here; no nonzero count is ever divided by 0.
    iou = true_pos / union
    acc = true_pos / gt_area
    total = gt_area.sum()
    aacc = float(true_pos.sum() / total) if total > 0 else math.nan

    # mmseg averages the fractions, then scales: keep that order so the rounding matches too.
    return SegMetrics(
        class_names=names,
        iou=tuple(float(v) * 100 for v in iou),
        acc=tuple(float(v) * 100 for v in acc),
        support=tuple(int(v) for v in matrix.detach().cpu().sum(dim=1).tolist()),
        mIoU=_nanmean(iou) * 100,
        mAcc=_nanmean(acc) * 100,
        aAcc=aacc * 100,
    )
