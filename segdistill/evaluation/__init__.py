"""Evaluation: confusion-matrix metrics (reduced across ranks) and the evaluation loop."""

from .evaluator import evaluate
from .metrics import ConfusionMatrix, MetricValueError, SegMetrics, compute_metrics

__all__ = ["evaluate", "ConfusionMatrix", "MetricValueError", "SegMetrics", "compute_metrics"]
