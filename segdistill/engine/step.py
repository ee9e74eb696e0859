"""The only training step. The trainer calls it in its loop; the benchmark times it through hooks.

One step is one optimizer update on ``train.accumulate`` micro-batches: for each, the teacher's
forward (outside DDP), the student's forward with every loss, and one backward of their sum divided
by the number of micro-batches. Under DDP the gradient all-reduce runs only on the last micro-batch
(``no_sync`` on the others). Then the ranks agree on whether every loss was finite and whether a
stop was requested (one collective), and the step is applied (clip, optimizer, scaler) or skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .distributed import all_reduce_sum
from .run import TrainingRun, autocast, lr_at

Batch = tuple[torch.Tensor, torch.Tensor]

#: The regions of a step in the order they run, each closed by one :meth:`StepHooks.mark` call
#: (``data``, ``teacher``, ``forward`` and ``backward`` once per micro-batch).
STEP_REGIONS = ("data", "teacher", "forward", "backward", "optimizer")


class StepHooks:
    """Callbacks at the end of each region of a step; the default does nothing (the trainer's case)."""

    def mark(self, region: str) -> None:
        """Called when ``region`` (one of :data:`STEP_REGIONS`) has just finished."""


@dataclass
class StepResult:
    """What one step did."""

    losses: dict[str, torch.Tensor]  # each named loss, averaged over the micro-batches, detached
    total: torch.Tensor  # their sum
    applied: bool  # False: a loss was non-finite on some rank and the update was skipped
    stop: int  # > 0 when a rank saw a stop signal (in one process: the signal's number)
    lr: float


def to_device(batch: Sequence[torch.Tensor], run: TrainingRun) -> Batch:
    """Move a batch to the run's device; a uint8 batch from the loader is normalised and padded there.

    The loader's batches are ``(uint8 image, label, valid_hw)`` (see
    :class:`~segdistill.data.preprocess.DataPreprocessor`); ``(float image, label)`` pairs that are
    already network input (the benchmark's synthetic batch, tests) pass through.
    """
    image, label = batch[0], batch[1]
    image = image.to(run.env.device, non_blocking=True)
    label = label.to(run.env.device, non_blocking=True)
    if image.dtype == torch.uint8:
        image, label = run.preprocessor(image, label, batch[2] if len(batch) > 2 else None)
    if run.cfg.student.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    return image, label


def train_step(run: TrainingRun, batches: Iterator[Sequence[torch.Tensor]], it: int,
               stop_signal: Callable[[], int] | None = None, hooks: StepHooks | None = None) -> StepResult:
    """Train iteration ``it`` (0-based) on the next ``train.accumulate`` batches of ``batches``.

    ``stop_signal()`` is read once the backward passes are done: a signal that arrived during the
    step ends the run right after it.
    """
    hooks = hooks or StepHooks()
    cfg, device = run.cfg, run.env.device
    lr = lr_at(cfg, it)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    micro = cfg.train.accumulate
    sums: dict[str, torch.Tensor] = {}
    finite = True
    for k in range(micro):
        image, label = to_device(next(batches), run)
        hooks.mark("data")
        teacher_out = run.teacher(image, label) if run.distills else None  # type: ignore[misc]
        hooks.mark("teacher")
        last = k == micro - 1
        sync = run.trainable.no_sync() if isinstance(run.trainable, DDP) and not last else contextlib.nullcontext()
        with sync:
            with autocast(device, cfg.train.amp):
                losses = run.trainable(image, label, teacher_out)
            total = sum(losses.values())
            hooks.mark("forward")
            # Every rank runs every backward, finite or not, so DDP's collectives stay matched; a
            # non-finite step is then dropped as a whole below.
            run.scaler.scale(total / micro if micro > 1 else total).backward()
        hooks.mark("backward")
        finite = finite and bool(torch.isfinite(total.detach()))
        for name, value in losses.items():
            sums[name] = sums.get(name, 0) + value.detach().float() / micro
    signum = stop_signal() if stop_signal is not None else 0
    flags = torch.tensor([0.0 if finite else 1.0, float(signum)], device=device)
    all_reduce_sum(flags)
    applied = bool(flags[0] == 0)
    if applied:
        if cfg.optim.grad_clip is not None:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    hooks.mark("optimizer")
    total_mean = sum(sums.values()) if sums else torch.zeros((), device=device)
    return StepResult(sums, total_mean, applied, int(flags[1].item()), lr)  # type: ignore[arg-type]
