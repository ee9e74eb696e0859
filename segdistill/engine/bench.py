"""``segdistill bench``: where the time of a distillation step goes, and how fast the networks infer.

Train mode builds the run the way :func:`~segdistill.engine.trainer.train` does (student, frozen
teacher with its fast-path switches, :class:`~segdistill.distill.distiller.DistillStudent`, SGD with
the poly schedule, AMP as configured) and times ``--iters`` steps after ``--warmup`` steps. Each step
is split into consecutive regions (:data:`STEP_PARTS`), so that per step the parts add up to the step
exactly; reported as:

``data``
    waiting for the next batch (the real DataLoader, or a ready random batch with ``--synthetic``)
``teacher``
    the frozen teacher's forward
``student``
    the student's forward with its task losses, plus the one backward pass through the student
``distill``
    the distillation terms (connectors + losses), forward and backward as far as the student's
    tapped maps (see below)
``optimizer``
    the learning-rate update, ``optimizer.step()`` and ``zero_grad``

How the distillation cost is isolated: the trainer sums task and distillation losses and calls one
``backward``. Here the tapped student maps are detached into leaf tensors, the distillation losses
are computed from those leaves and back-propagated to them (that is the ``distill`` region), and then
one backward runs from the task loss *and* the tapped maps, with the leaves' gradients injected
(``torch.autograd.backward(roots, grads)``). By the chain rule every parameter gets exactly the
gradient of the trainer's summed loss (the tests check this), and the student's backward still runs
only once. The same run also times the unavoidable work alone (teacher forward; a student training
step without the distillation terms), so the report gives a second, independent estimate of the
distillation cost by difference and the ratio ``distillation step / (teacher fwd + student step)``.

Weights are random (no downloads) unless ``--load-weights``: the time of a step does not depend
on the weight values.

Infer mode times the teacher and the student at batch 1 and at ``--batch``: eager float32, the
eager fast path (BatchNorm folded, channels_last, bfloat16 autocast), ``torch.compile`` of the fast
path and ONNX Runtime (float32 graph exported by torch's exporter). A backend that cannot run is
reported as ``n/a`` with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import Config, config_from_dict, load_config, to_dict
from ..data import IGNORE_INDEX, build_dataset
from ..distill.distiller import DistillStudent, check_compatible, tap_channels
from ..distill.teacher import Tap, autocast_dtype, fold_batchnorm, set_reference_mode
from ..errors import UserError
from ..fileio import atomic_write_text
from ..models import build_segmentor, load_checkpoint
from ..models.export import ONNX_OPSET, LogitsAtInputSize
from ..models.segmentor import EncoderDecoder
from .distributed import DistEnv, pick_device
from .schedule import poly_lr
from .trainer import _train_loader, autocast, build_student, build_teacher, build_train_set, param_groups

__all__ = [
    "ALL_OFF", "ALL_ON", "STEP_PARTS", "SWITCHES", "BenchRun", "InferRow", "ReferenceTeacher", "TrainBench",
    "Variant", "add_bench_parser", "apply_overrides", "bench_infer", "bench_train", "build_bench_run",
    "compare_variants", "count_step_flops", "distill_step", "forward_backward", "infer_table", "num_classes_of",
    "run_bench_command", "train_summary", "train_table", "variants",
]

#: The regions of one timed step, in the order they run; per step they add up to ``total``.
STEP_PARTS = ("data", "teacher", "student_forward", "distill", "student_backward", "optimizer")

#: Every fast path off: plain float32 everywhere (the teacher is the reference-like one, see
#: :class:`ReferenceTeacher`).
ALL_OFF: dict[str, Any] = {"teacher.bf16": False, "teacher.fold_bn": False, "teacher.channels_last": False,
                           "teacher.compile": False, "train.amp": "none", "student.channels_last": False}
#: Every fast path on except ``torch.compile`` (its compile time is minutes on a CPU; see SWITCHES).
ALL_ON: dict[str, Any] = {"teacher.bf16": True, "teacher.fold_bn": True, "teacher.channels_last": True,
                          "teacher.compile": False, "train.amp": "bf16", "student.channels_last": True}
#: One switch at a time, each on top of the frozen teacher with every fast path off.
SWITCHES: dict[str, dict[str, Any]] = {
    "teacher channels_last": {"teacher.channels_last": True},
    "teacher fold_bn": {"teacher.fold_bn": True},
    "teacher bf16": {"teacher.bf16": True},
    "teacher compile": {"teacher.compile": True},
    "student bf16 (train.amp)": {"train.amp": "bf16"},
    "student channels_last": {"student.channels_last": True},
}

TeacherFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


# ---- timing and memory helpers ------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a barrier a region's time lands in the next one.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now(device: torch.device) -> float:
    _sync(device)
    return time.perf_counter()


def _rss_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


class _PeakMemory:
    """Peak memory of a window of work: CUDA max allocated, or the process's peak resident set on CPU.

    On Linux the RSS high-water mark is reset by writing ``5`` to ``/proc/self/clear_refs``, so each
    window gets its own peak; elsewhere the lifetime peak (``ru_maxrss``) is the best available.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "CUDA max allocated" if device.type == "cuda" else "CPU peak RSS"
        self.baseline = 0.0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind = "CPU lifetime peak RSS"
        self.baseline = _rss_mb("VmRSS") or 0.0

    def peak(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _rss_mb("VmHWM")
        return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


# ---- the run ------------------------------------------------------------------------------------


class ReferenceTeacher(nn.Module):
    """What mmrazor's teacher costs per step: train mode except BatchNorm (dropout on), float32, both
    heads, and the teacher's own task losses, computed and thrown away; returns the tapped maps.

    Used only by the benchmark's "all fast paths off" variant, as the reference point.
    """

    def __init__(self, model: EncoderDecoder, taps: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        self._tap = Tap(model, list(dict.fromkeys(taps)), "teacher")
        self.train(False)

    def train(self, mode: bool = True) -> "ReferenceTeacher":
        super().train(False)
        set_reference_mode(self.model)
        return self

    @torch.no_grad()
    def forward(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.model(image, with_aux=True)
        self.model.loss(outputs, label)  # mmrazor calls the teacher with mode='loss'
        return {k: v.float().contiguous() for k, v in self._tap.pop().items()}


@dataclass
class BenchRun:
    """One distillation run as the trainer builds it, ready to be stepped by :func:`distill_step`."""

    cfg: Config
    device: torch.device
    model: DistillStudent
    teacher: nn.Module | None
    teacher_fn: TeacherFn | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    tap: Tap | None  # the student's tapped maps, recorded for the split backward

    @property
    def distills(self) -> bool:
        """Whether a step runs the teacher and distillation terms (the trainer's condition)."""
        return self.teacher_fn is not None and bool(self.model.terms)


def _random_init_config(cfg: Config) -> Config:
    # build_student would fetch ImageNet/checkpoint weights; the benchmark must need no download.
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, pretrained_backbone=None,
                                                                checkpoint=None))


def build_bench_run(cfg: Config, num_classes: int, device: torch.device, *, reference_teacher: bool = False,
                    load_weights: bool = False) -> BenchRun:
    """Build student, teacher, DistillStudent, SGD and grad scaler as :func:`~segdistill.engine.trainer.train`.

    ``load_weights=False`` (default) keeps every weight randomly initialised (no download);
    ``reference_teacher=True`` replaces the frozen teacher with :class:`ReferenceTeacher`.
    """
    torch.manual_seed(cfg.seed)
    student = build_student(cfg if load_weights else _random_init_config(cfg), num_classes)
    terms = list(cfg.distill.losses)
    student.set_loss_options(cfg.student.aux_weight, cfg.student.avg_non_ignore)
    teacher: nn.Module | None = None
    teacher_fn: TeacherFn | None = None
    channels = None
    if cfg.teacher is not None:
        taps = [t.teacher for t in terms]
        if reference_teacher:
            net = build_segmentor(cfg.teacher.model, num_classes)
            if load_weights:
                load_checkpoint(net, cfg.teacher.checkpoint)
            ref = ReferenceTeacher(net.to(device), taps)
            teacher, teacher_fn = ref, ref
        else:
            frozen = build_teacher(cfg, num_classes, taps, device, load_weights=load_weights)
            teacher = frozen
            teacher_fn = lambda image, _label: frozen(image)  # noqa: E731 - the frozen teacher needs no label
        net_t = teacher.model  # type: ignore[union-attr]
        channels = tap_channels(student, net_t, terms) if terms else {}
        check_compatible(student, net_t, terms, channels)
    model = DistillStudent(student, terms, channels).to(device)
    if cfg.student.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(param_groups(model, cfg.optim.weight_decay, cfg.optim.norm_weight_decay),
                                lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    model.train()
    if teacher is not None:
        teacher.train(False)
    tap = Tap(model.student, model.student_taps, "student") if terms else None
    torch.manual_seed(cfg.seed)  # the trainer's dropout seed (rank 0)
    return BenchRun(cfg, device, model, teacher, teacher_fn, optimizer, scaler, tap)


def forward_backward(run: BenchRun, image: torch.Tensor, label: torch.Tensor,
                     teacher_out: Mapping[str, torch.Tensor] | None,
                     stamp: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """The student's forward, the distillation terms and the one backward; returns the named losses.

    Leaves in every parameter's ``.grad`` the gradient of the sum of the losses (as the trainer's
    single backward does); ``stamp(part)`` is called at the end of each region.
    """
    stamp = stamp or (lambda _part: None)
    model, cfg = run.model, run.cfg
    with autocast(run.device, cfg.train.amp):
        losses = model(image, label, None)  # task losses only; the Tap keeps the student's maps
    tapped = run.tap.pop() if run.tap is not None else {}
    task_total = sum(losses.values())
    stamp("student_forward")
    leaves: dict[str, torch.Tensor] = {}
    if teacher_out is not None and model.terms:
        distill_total: torch.Tensor | None = None
        with autocast(run.device, cfg.train.amp):
            for term in model.terms:
                if term.student not in leaves:
                    leaves[term.student] = tapped[term.student].detach().requires_grad_(True)
                s = leaves[term.student]
                if term.name in model.connectors:
                    s = model.connectors[term.name](s)
                loss = model.losses[term.name](s, teacher_out[term.teacher])
                losses[f"loss_{term.name}"] = loss
                distill_total = loss if distill_total is None else distill_total + loss
        assert distill_total is not None
        run.scaler.scale(distill_total).backward()
    stamp("distill")
    roots = [run.scaler.scale(task_total)] + [tapped[name] for name in leaves]
    grads: list[torch.Tensor | None] = [None] + [leaf.grad for leaf in leaves.values()]
    torch.autograd.backward(roots, grads)
    stamp("student_backward")
    return losses


def distill_step(run: BenchRun, data: Iterator[tuple[torch.Tensor, torch.Tensor]], it: int) -> dict[str, float]:
    """One training step, split into :data:`STEP_PARTS`; returns seconds per part and ``total``.

    The parameters end with the same gradients and update as the trainer's step (one summed loss,
    one backward): see the module docstring for how the distillation region is separated.
    """
    cfg, device = run.cfg, run.device
    times: dict[str, float] = {}
    last = [_now(device)]
    start = last[0]

    def stamp(part: str) -> None:
        t = _now(device)
        times[part] = t - last[0]
        last[0] = t

    image, label = next(data)
    image = image.to(device, non_blocking=True)
    label = label.to(device, non_blocking=True)
    if cfg.student.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    stamp("data")
    teacher_out = run.teacher_fn(image, label) if run.distills else None  # type: ignore[misc]
    stamp("teacher")
    forward_backward(run, image, label, teacher_out, stamp)
    _optimizer_step(run, it)
    stamp("optimizer")
    times["total"] = last[0] - start
    return times


def _optimizer_step(run: BenchRun, it: int) -> None:
    o = run.cfg.optim
    lr = poly_lr(it, o.lr, run.cfg.train.iters, o.power, o.min_lr, o.warmup_iters, o.warmup_ratio)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    if o.grad_clip is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), o.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def _student_step_alone(run: BenchRun, image: torch.Tensor, label: torch.Tensor, it: int) -> float:
    """The trainer's step without teacher and distillation terms: forward, backward, optimizer."""
    start = _now(run.device)
    with autocast(run.device, run.cfg.train.amp):
        losses = run.model(image, label, None)
    run.scaler.scale(sum(losses.values())).backward()
    _optimizer_step(run, it)
    t = _now(run.device) - start
    if run.tap is not None:
        run.tap.pop()
    return t


def _teacher_alone(run: BenchRun, image: torch.Tensor, label: torch.Tensor) -> float:
    start = _now(run.device)
    run.teacher_fn(image, label)  # type: ignore[misc]
    return _now(run.device) - start


def count_step_flops(run: BenchRun, image: torch.Tensor, label: torch.Tensor) -> dict[str, int]:
    """FLOPs of one step by ``torch.utils.flop_counter.FlopCounterMode``: teacher forward, student
    forward + backward (distillation terms included); the optimizer's elementwise work is not counted.

    A compiled teacher is counted on its eager path (``force_eager``), which does the same math.
    """
    teacher_out = None
    teacher_flops = 0
    if run.distills:
        counter = FlopCounterMode(display=False)
        with torch.compiler.set_stance("force_eager"), counter:
            teacher_out = run.teacher_fn(image, label)  # type: ignore[misc]
        teacher_flops = counter.get_total_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        forward_backward(run, image, label, teacher_out)
    run.optimizer.zero_grad(set_to_none=True)
    student_flops = counter.get_total_flops()
    return {"teacher_forward": int(teacher_flops), "student_forward_backward": int(student_flops),
            "total": int(teacher_flops + student_flops)}


# ---- train benchmark ----------------------------------------------------------------------------


@dataclass
class TrainBench:
    """Measured steps of one train-mode benchmark (seconds) and what is derived from them."""

    label: str
    settings: dict[str, Any]
    batch: int
    crop: tuple[int, int]
    steps: list[dict[str, float]]
    teacher_alone: list[float]
    student_alone: list[float]
    flops: dict[str, int]
    peak_memory_mb: float
    memory_delta_mb: float
    memory_kind: str

    def part(self, name: str) -> float:
        """Median seconds of a part; ``student`` is forward + backward of each step."""
        if name == "student":
            return _median([s["student_forward"] + s["student_backward"] for s in self.steps])
        if name == "compute":
            return _median([s["total"] - s["data"] for s in self.steps])
        return _median([s[name] for s in self.steps])

    @property
    def step_s(self) -> float:
        """Median time of a whole step (data wait included)."""
        return self.part("total")

    @property
    def images_per_s(self) -> float:
        return self.batch / self.step_s

    @property
    def flops_per_s(self) -> float:
        """Counted FLOPs per second of compute (median step minus data wait)."""
        return self.flops["total"] / self.part("compute")

    @property
    def unavoidable_s(self) -> float:
        """Teacher forward alone + student training step alone (medians)."""
        return _median(self.teacher_alone) + _median(self.student_alone)

    @property
    def overhead_ratio(self) -> float:
        """``distillation step (compute) / (teacher fwd + student step)``; the issue's target is <= 1.05."""
        return self.part("compute") / self.unavoidable_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, per-step raw times, medians (ms) and derived figures."""
        parts = {p: self.part(p) * 1e3 for p in ("data", "teacher", "student", "distill", "optimizer")}
        return {
            "label": self.label, "settings": self.settings, "batch": self.batch, "crop": list(self.crop),
            "median_ms": {**parts, "student_forward": self.part("student_forward") * 1e3,
                          "student_backward": self.part("student_backward") * 1e3,
                          "compute": self.part("compute") * 1e3, "step": self.step_s * 1e3},
            "images_per_s": self.images_per_s,
            "flops": self.flops, "flops_per_s": self.flops_per_s,
            "memory": {"kind": self.memory_kind, "peak_mb": self.peak_memory_mb, "delta_mb": self.memory_delta_mb},
            "unavoidable_ms": {"teacher_forward": _median(self.teacher_alone) * 1e3,
                               "student_step": _median(self.student_alone) * 1e3,
                               "sum": self.unavoidable_s * 1e3},
            "distill_by_difference_ms": (self.part("compute") - self.unavoidable_s) * 1e3,
            "overhead_ratio": self.overhead_ratio,
            "steps_s": self.steps, "teacher_alone_s": self.teacher_alone, "student_alone_s": self.student_alone,
        }


def _synthetic_batches(batch: int, crop: tuple[int, int], num_classes: int,
                       seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, *crop, generator=gen)  # the range of a normalised image
    label = torch.randint(0, num_classes, (batch, *crop), generator=gen)
    label[:, :2] = IGNORE_INDEX  # real labels have ignored pixels; CE must handle them
    while True:
        yield image, label


def _real_batches(cfg: Config, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    ds = build_dataset(cfg.data.kind, cfg.data.root, cfg.data.train_split)
    return _train_loader(cfg, build_train_set(cfg, ds), DistEnv(device=device), 0)


def num_classes_of(cfg: Config) -> int:
    """The number of classes of the configured dataset (Cityscapes and CamVid need no files)."""
    from ..data import CAMVID_CLASSES, CITYSCAPES_CLASSES

    if cfg.data.kind == "cityscapes":
        return len(CITYSCAPES_CLASSES)
    if cfg.data.kind == "camvid":
        return len(CAMVID_CLASSES)
    return build_dataset(cfg.data.kind, cfg.data.root, cfg.data.train_split).num_classes


def _settings(cfg: Config, reference_teacher: bool, synthetic: bool, load_weights: bool) -> dict[str, Any]:
    t = cfg.teacher
    return {
        "student": cfg.student.model, "teacher": t.model if t else None,
        "teacher_kind": None if t is None else ("reference-like (train mode, both heads, losses)"
                                                if reference_teacher else f"frozen ({t.mode})"),
        "teacher.channels_last": bool(t and t.channels_last and not reference_teacher),
        "teacher.fold_bn": bool(t and t.fold_bn and not reference_teacher),
        "teacher.bf16": bool(t and t.bf16 and not reference_teacher),
        "teacher.compile": bool(t and t.compile and not reference_teacher),
        "train.amp": cfg.train.amp, "student.channels_last": cfg.student.channels_last,
        "distill_terms": [loss.name for loss in cfg.distill.losses],
        "data": "synthetic" if synthetic else f"{cfg.data.kind} {cfg.data.root} (workers {cfg.data.workers})",
        "weights": "configured" if load_weights else "random",
    }


def bench_train(cfg: Config, *, iters: int = 10, warmup: int = 2, synthetic: bool = True,
                num_classes: int | None = None, reference_teacher: bool = False, load_weights: bool = False,
                label: str = "configured", device: torch.device | None = None) -> TrainBench:
    """Time ``iters`` distillation steps after ``warmup`` steps, and the unavoidable work alone.

    Batch and crop are ``cfg.train.batch_size`` and ``cfg.data.crop_size``. With ``synthetic`` one
    random batch is reused (no dataset), and each distillation step is followed by one teacher
    forward alone and one student step alone, so that load from other processes on a shared
    machine hits the three measurements alike. With real data the distillation steps run back to
    back through the trainer's DataLoader, so the data wait is what training sees (extra work in
    between would give the loader's workers time to catch up), and the unavoidable work follows
    on one batch.
    """
    if iters < 1 or warmup < 0:
        raise UserError(f"bench needs --iters >= 1 and --warmup >= 0, got {iters} and {warmup}")
    device = device or pick_device(cfg.train.device)
    n_classes = num_classes or num_classes_of(cfg)
    crop = tuple(cfg.data.crop_size)
    batch = cfg.train.batch_size
    run = build_bench_run(cfg, n_classes, device, reference_teacher=reference_teacher, load_weights=load_weights)
    data = _synthetic_batches(batch, crop, n_classes, cfg.seed) if synthetic else _real_batches(cfg, device)
    steps: list[dict[str, float]] = []
    teacher_alone: list[float] = []
    student_alone: list[float] = []
    image = label_t = None

    def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal image, label_t
        if image is None:
            img, lab = next(data)
            image, label_t = img.to(device), lab.to(device)
            if cfg.student.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
        return image, label_t  # type: ignore[return-value]

    def unavoidable(it: int, keep: bool) -> None:
        x, y = fixed_batch()
        t = _teacher_alone(run, x, y) if run.distills else None
        s = _student_step_alone(run, x, y, it)
        if keep:
            if t is not None:
                teacher_alone.append(t)
            student_alone.append(s)

    memory = _PeakMemory(device)
    memory.reset()  # after the models are built: the peak is what the steps add on top of them
    for it in range(warmup + iters):
        step = distill_step(run, data, it)
        if it >= warmup:
            steps.append(step)
        if synthetic:
            unavoidable(it, keep=it >= warmup)
    peak = memory.peak()
    if not synthetic:
        for it in range(min(warmup, 1) + iters):
            unavoidable(it, keep=it >= min(warmup, 1))
    flops = count_step_flops(run, *fixed_batch())
    del data  # stop the loader's workers before the next variant starts
    return TrainBench(label, _settings(cfg, reference_teacher, synthetic, load_weights), batch, crop, steps,
                      teacher_alone, student_alone, flops, peak, peak - memory.baseline, memory.kind)


# ---- variants (--compare, --switches) -----------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A named set of config overrides, optionally with the reference-like teacher."""

    label: str
    overrides: tuple[tuple[str, Any], ...]
    reference_teacher: bool = False


def variants(switches: bool) -> list[Variant]:
    """All off vs all on; with ``switches`` also the frozen teacher with each switch alone.

    "all off" is :data:`ALL_OFF` with the :class:`ReferenceTeacher` (what the reference pays);
    "all on" is :data:`ALL_ON` with the configured frozen teacher (its taps only).
    """
    out = [Variant("all off", tuple(ALL_OFF.items()), reference_teacher=True),
           Variant("all on", tuple(ALL_ON.items()))]
    if switches:
        out.append(Variant("frozen teacher, no switches", tuple(ALL_OFF.items())))
        for name, extra in SWITCHES.items():
            out.append(Variant(f"frozen teacher + {name}", tuple({**ALL_OFF, **extra}.items())))
    return out


def apply_overrides(cfg: Config, overrides: Sequence[tuple[str, Any]]) -> Config:
    """``cfg`` with ``key.sub=value`` overrides applied and validated again."""
    return config_from_dict(to_dict(cfg), [f"{k}={json.dumps(v)}" for k, v in overrides])


def _child_main(job_path: str, result_path: str) -> None:
    """Entry point of an isolated variant: read (cfg, kwargs, threads), write the TrainBench or UserError."""
    cfg, kwargs, threads = pickle.loads(Path(job_path).read_bytes())
    torch.set_num_threads(threads)
    try:
        result: TrainBench | UserError = bench_train(cfg, **kwargs)
    except UserError as e:
        result = e
    Path(result_path).write_bytes(pickle.dumps(result))


def _bench_isolated(cfg: Config, kwargs: dict[str, Any]) -> TrainBench:
    # A fresh interpreter via subprocess rather than multiprocessing's spawn, which re-runs the
    # caller's __main__ and so breaks when bench is called from a script without a main guard.
    with tempfile.TemporaryDirectory(prefix="segdistill-bench-") as tmp:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(pickle.dumps((cfg, kwargs, torch.get_num_threads())))
        code = "import sys; from segdistill.engine.bench import _child_main; _child_main(sys.argv[1], sys.argv[2])"
        proc = subprocess.run([sys.executable, "-c", code, str(job), str(result)], check=False)
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(f"benchmark variant {kwargs.get('label')!r} failed in its own process "
                               f"(exit code {proc.returncode}); its error is printed above")
        out = pickle.loads(result.read_bytes())
    if isinstance(out, UserError):
        raise out
    return out


def compare_variants(cfg: Config, variant_list: Sequence[Variant], *, isolate: bool = True,
                     **kwargs: Any) -> list[TrainBench]:
    """Run :func:`bench_train` for each variant; ``isolate`` gives each a fresh process (own memory
    peak, own compile caches, no allocator state carried over)."""
    if cfg.teacher is None:
        raise UserError("bench --compare compares teacher fast paths; use a config that names a teacher")
    results = []
    for i, v in enumerate(variant_list, 1):
        print(f"bench: variant {i}/{len(variant_list)}: {v.label}", file=sys.stderr, flush=True)
        vcfg = apply_overrides(cfg, v.overrides)
        args = {**kwargs, "reference_teacher": v.reference_teacher, "label": v.label}
        results.append(_bench_isolated(vcfg, args) if isolate else bench_train(vcfg, **args))
    return results


# ---- inference benchmark ------------------------------------------------------------------------


@dataclass
class InferRow:
    """Latency of one model, backend and batch size; ``latency_ms`` is None when the backend could not run."""

    model: str
    role: str
    backend: str
    batch: int
    latency_ms: float | None
    note: str = ""

    @property
    def images_per_s(self) -> float | None:
        return None if self.latency_ms is None else self.batch / (self.latency_ms / 1e3)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "images_per_s": self.images_per_s}


class _FastInference(nn.Module):
    """Inference fast path on a private copy: BatchNorm folded, channels_last, bfloat16 autocast."""

    def __init__(self, model: EncoderDecoder, size: tuple[int, int]) -> None:
        super().__init__()
        net = copy.deepcopy(model).eval()
        fold_batchnorm(net)
        net.to(memory_format=torch.channels_last)
        self.net = LogitsAtInputSize(net, size).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        dtype = autocast_dtype(x.device)
        ctx = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            out = self.net(x)
        return out.float()


def _latencies(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        start = _now(device)
        fn()
        out.append(_now(device) - start)
    return out


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:160]


def _onnx_latencies(model: EncoderDecoder, x: torch.Tensor, iters: int, warmup: int) -> tuple[list[float], float]:
    """Export ``model`` (float32, this batch size) to a temporary ONNX file and time ONNX Runtime on it.

    Also returns ``max|onnx - torch|`` on ``x``, so a fast but wrong graph cannot pass unnoticed.
    """
    import onnxruntime as ort

    size = (int(x.shape[2]), int(x.shape[3]))
    with tempfile.TemporaryDirectory(prefix="segdistill-bench-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        wrapper = LogitsAtInputSize(model.cpu(), size).eval()
        # The exporter prints progress and warns about its own internals; keep the table clean.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (x.cpu(),), path, dynamo=True, opset_version=ONNX_OPSET,
                              input_names=["image"], output_names=["logits"], external_data=False,
                              verbose=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.cpu().numpy()}
        with torch.no_grad():
            ref = wrapper(x.cpu()).float()
        diff = float((torch.from_numpy(session.run(None, feed)[0]) - ref).abs().max())
        return _latencies(lambda: session.run(None, feed), torch.device("cpu"), iters, warmup), diff


def bench_infer(cfg: Config, *, iters: int = 10, warmup: int = 2, num_classes: int | None = None,
                compile: bool = True, onnx: bool = True, device: torch.device | None = None) -> list[InferRow]:
    """Latency of the teacher (when configured) and the student at batch 1 and ``cfg.train.batch_size``.

    Input size is ``cfg.data.crop_size``; the output is the decode logits resized to the input, as
    deployed (see :class:`~segdistill.models.export.LogitsAtInputSize`).
    """
    if iters < 1 or warmup < 0:
        raise UserError(f"bench needs --iters >= 1 and --warmup >= 0, got {iters} and {warmup}")
    device = device or pick_device(cfg.train.device)
    n_classes = num_classes or num_classes_of(cfg)
    size = tuple(cfg.data.crop_size)
    batches = sorted({1, cfg.train.batch_size})
    models = [("student", cfg.student.model)] + ([("teacher", cfg.teacher.model)] if cfg.teacher else [])
    rows: list[InferRow] = []
    for role, name in models:
        torch.manual_seed(cfg.seed)
        model = build_segmentor(name, n_classes).to(device).eval()
        eager = LogitsAtInputSize(model, size).eval()
        fast = _FastInference(model, size)
        compiled: nn.Module | None = None
        compile_note = "skipped (--no-compile)"
        if compile:
            try:
                compiled = torch.compile(fast, dynamic=False)
                compile_note = ""
            except Exception as e:  # noqa: BLE001 - any failure means "n/a", with its reason
                compile_note = f"n/a: {_reason(e)}"
        for b in batches:
            x = torch.randn(b, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
            with torch.no_grad():
                for backend, net in (("eager fp32", eager), ("eager fast path (fold_bn+channels_last+bf16)", fast)):
                    t = _latencies(lambda: net(x), device, iters, warmup)  # noqa: B023 - called right here
                    rows.append(InferRow(name, role, backend, b, _median(t) * 1e3))
                backend = "torch.compile (fast path)"
                if compiled is None:
                    rows.append(InferRow(name, role, backend, b, None, compile_note))
                else:
                    try:
                        start = time.perf_counter()
                        compiled(x)  # compiles for this shape
                        first = time.perf_counter() - start
                        t = _latencies(lambda: compiled(x), device, iters, warmup)  # noqa: B023
                        rows.append(InferRow(name, role, backend, b, _median(t) * 1e3,
                                             f"first call (compile) {first:.0f} s"))
                    except Exception as e:  # noqa: BLE001
                        rows.append(InferRow(name, role, backend, b, None, f"n/a: {_reason(e)}"))
            backend = "onnxruntime fp32 (CPU)"
            if not onnx:
                rows.append(InferRow(name, role, backend, b, None, "skipped (--no-onnx)"))
                continue
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                rows.append(InferRow(name, role, backend, b, None, "n/a: onnxruntime is not installed"))
                continue
            try:
                t, diff = _onnx_latencies(model, x, iters, warmup)
                rows.append(InferRow(name, role, backend, b, _median(t) * 1e3, f"max abs diff vs eager {diff:.1e}"))
            except Exception as e:  # noqa: BLE001
                rows.append(InferRow(name, role, backend, b, None, f"n/a: {_reason(e)}"))
            finally:
                model.to(device)
    return rows


# ---- tables -------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}" if seconds >= 0.01 else f"{seconds * 1e3:.2f}"


def train_table(results: Sequence[TrainBench]) -> str:
    """Markdown: one row per benchmark with the median parts (ms), throughput, memory and FLOPs."""
    lines = [
        "| variant | data | teacher fwd | student fwd+bwd | distill loss | optimizer | step | images/s "
        "| peak MB (delta) | GFLOP/step | GFLOP/s | teacher alone + student alone | step / unavoidable |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.label} | {_ms(r.part('data'))} | {_ms(r.part('teacher'))} | {_ms(r.part('student'))} "
            f"| {_ms(r.part('distill'))} | {_ms(r.part('optimizer'))} | {_ms(r.step_s)} | {r.images_per_s:.2f} "
            f"| {r.peak_memory_mb:.0f} ({r.memory_delta_mb:+.0f}) | {r.flops['total'] / 1e9:.1f} "
            f"| {r.flops_per_s / 1e9:.1f} | {_ms(_median(r.teacher_alone))} + {_ms(_median(r.student_alone))} "
            f"| {r.overhead_ratio:.3f} |")
    return "\n".join(lines)


def train_summary(results: Sequence[TrainBench]) -> str:
    """The issue's targets in words, under the table."""
    out = []
    for r in results:
        diff = r.part("compute") - r.unavoidable_s
        out.append(f"- {r.label}: distillation step (compute) {_ms(r.part('compute'))} ms / (teacher fwd + student "
                   f"step) {_ms(r.unavoidable_s)} ms = {r.overhead_ratio:.3f} (target <= 1.05); distill loss "
                   f"measured {r.part('distill') * 1e3:.2f} ms, by difference {diff * 1e3:+.1f} ms")
    if len(results) >= 2:
        off, on = results[0], results[1]
        out.append(f"- {on.label} / {off.label}: step {on.step_s / off.step_s:.3f} (target <= 0.5), teacher "
                   f"forward {on.part('teacher') / off.part('teacher'):.3f}")
    return "\n".join(out)


def infer_table(rows: Sequence[InferRow]) -> str:
    """Markdown: latency and images/s per model, backend and batch."""
    lines = ["| model | backend | batch | latency ms | images/s | note |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lat = "n/a" if r.latency_ms is None else f"{r.latency_ms:.1f}"
        ips = "n/a" if r.images_per_s is None else f"{r.images_per_s:.2f}"
        lines.append(f"| {r.role} {r.model} | {r.backend} | {r.batch} | {lat} | {ips} | {r.note} |")
    return "\n".join(lines)


# ---- CLI ----------------------------------------------------------------------------------------


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _machine(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "load_average_start": _load_average()}


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench CONFIG [options] [key.sub=value ...]``; the handler is :func:`run_bench_command`."""
    p = subparsers.add_parser("bench", help="time a distillation step part by part, or inference latency")
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value",
                   help="config overrides, e.g. teacher.bf16=false train.amp=bf16")
    p.add_argument("--mode", choices=["train", "infer"], default="train",
                   help="train: per-step breakdown (default); infer: latency of teacher and student")
    p.add_argument("--iters", type=int, default=10, help="timed steps / calls (default 10); medians are reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps / calls first (default 2)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="input size (default: data.crop_size)")
    p.add_argument("--batch", type=int, help="batch size (default: train.batch_size)")
    p.add_argument("--synthetic", action="store_true",
                   help="random input tensors and labels instead of the dataset (no data needed)")
    p.add_argument("--num-classes", type=int, help="classes of the models (default: the dataset's)")
    p.add_argument("--load-weights", action="store_true",
                   help="load the configured checkpoints (may download) instead of random weights")
    p.add_argument("--compare", action="store_true",
                   help="train mode: all fast paths off vs all on, and their ratio")
    p.add_argument("--switches", action="store_true",
                   help="with --compare: also each fast-path switch alone (slow: includes torch.compile)")
    p.add_argument("--in-process", action="store_true",
                   help="with --compare: run the variants in this process instead of one fresh process each")
    p.add_argument("--no-compile", action="store_true", help="infer mode: skip torch.compile")
    p.add_argument("--no-onnx", action="store_true", help="infer mode: skip ONNX Runtime")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument("--json", metavar="OUT", help="also write every measurement as JSON here")
    p.set_defaults(func=run_bench_command)


def _check_args(args: argparse.Namespace) -> None:
    if args.iters < 1:
        raise UserError(f"bench --iters must be >= 1, got {args.iters}")
    if args.warmup < 0:
        raise UserError(f"bench --warmup must be >= 0, got {args.warmup}")
    if args.batch is not None and args.batch < 1:
        raise UserError(f"bench --batch must be >= 1, got {args.batch}")
    if args.crop is not None and min(args.crop) < 8:
        raise UserError(f"bench --crop must be two sizes H W of at least 8 pixels, got {args.crop}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"bench --threads must be >= 1, got {args.threads}")
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"bench --num-classes must be >= 1, got {args.num_classes}")
    if args.mode == "infer" and (args.compare or args.switches):
        raise UserError("bench --compare/--switches compare training steps; drop them or use --mode train")
    if args.switches and not args.compare:
        raise UserError("bench --switches extends --compare; add --compare")


def run_bench_command(args: argparse.Namespace) -> int:
    """Handle ``segdistill bench``: print markdown tables, optionally write JSON; returns the exit code."""
    _check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = list(args.overrides)
    if args.crop is not None:
        overrides.append(f"data.crop_size=[{args.crop[0]},{args.crop[1]}]")
    if args.batch is not None:
        overrides.append(f"train.batch_size={args.batch}")
    cfg = load_config(args.config, overrides)
    if args.mode == "train" and cfg.train.batch_size < 2:
        # PSP's and ASPP's pooled 1x1 maps give train-mode BatchNorm one value per channel, which fails.
        raise UserError(f"bench --mode train needs a batch of at least 2, got {cfg.train.batch_size} "
                        "(train-mode BatchNorm on 1x1 pooled maps); use --batch 2 or --mode infer")
    device = pick_device(cfg.train.device)
    report: dict[str, Any] = {"mode": args.mode, "config": str(args.config), "overrides": overrides,
                              "synthetic": args.synthetic, "iters": args.iters, "warmup": args.warmup,
                              "machine": _machine(device), "date": time.strftime("%Y-%m-%d")}
    header = (f"{cfg.student.model}" + (f" <- {cfg.teacher.model}" if cfg.teacher else "")
              + f", batch {cfg.train.batch_size}, input {cfg.data.crop_size[0]}x{cfg.data.crop_size[1]}, "
              f"{'synthetic data' if args.synthetic else 'dataset ' + cfg.data.kind}, {device}, torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads; medians of {args.iters} after "
              f"{args.warmup} warm-up")
    print(header + "\n")
    if args.mode == "infer":
        rows = bench_infer(cfg, iters=args.iters, warmup=args.warmup, num_classes=args.num_classes,
                           compile=not args.no_compile, onnx=not args.no_onnx, device=device)
        print(infer_table(rows))
        report["infer"] = [r.to_dict() for r in rows]
    else:
        kwargs = {"iters": args.iters, "warmup": args.warmup, "synthetic": args.synthetic,
                  "num_classes": args.num_classes, "load_weights": args.load_weights, "device": device}
        if args.compare:
            results = compare_variants(cfg, variants(args.switches), isolate=not args.in_process, **kwargs)
        else:
            results = [bench_train(cfg, **kwargs)]
        print(train_table(results))
        print()
        print(train_summary(results))
        report["train"] = [r.to_dict() for r in results]
        if len(results) >= 2:
            report["all_on_over_all_off"] = results[1].step_s / results[0].step_s
    # On a shared machine other jobs skew every number; say how busy it was so readers can judge.
    report["machine"]["load_average_end"] = _load_average()
    print(f"\n1-minute load average {report['machine']['load_average_start']} at start, "
          f"{report['machine']['load_average_end']} at end, on {os.cpu_count()} cores")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1, allow_nan=False))
    return 0
