"""``segdistill bench --mode train``: where the time of a distillation step goes.

The run is built by the trainer's own :func:`~segdistill.engine.run.build_run` and every timed step
is the trainer's own :func:`~segdistill.engine.step.train_step`, timed through its hooks (as
detectron2's benchmark times its real trainer): nothing here re-implements a step. Each step is split
into the regions of :data:`~segdistill.engine.step.STEP_REGIONS`, reported as:

``data``
    waiting for the next batch (the real DataLoader, or a ready random batch with ``--synthetic``)
``teacher``
    the frozen teacher's forward
``forward``
    the student's forward with its task losses and the distillation terms (connectors + losses)
``backward``
    the one backward pass of the summed loss
``optimizer``
    the all-ranks finiteness check, gradient clipping, ``optimizer.step()`` and ``zero_grad``

The same run also times the unavoidable work alone: the teacher's forward, and the same
``train_step`` on a copy of the run without its teacher (a student training step without
distillation). The cost of distillation is then ``step - (teacher forward + student step)``, and the
report gives the ratio ``distillation step / (teacher fwd + student step)``.

Weights are random (no downloads) unless ``load_weights``: the time of a step does not depend on the
weight values.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_from_dict, to_dict
from ..data import IGNORE_INDEX, build_dataset
from ..engine.distributed import DistEnv, pick_device
from ..engine.run import TrainingRun, build_run
from ..engine.step import STEP_REGIONS, StepHooks, to_device, train_step
from ..engine.trainer import build_train_set, train_loader
from ..errors import UserError
from .flops import flop_counter
from .timing import PeakMemory, median, now, sync

Batch = tuple[torch.Tensor, torch.Tensor]

#: Every fast path off: plain float32 everywhere (the teacher is the reference-like one, see
#: :class:`~segdistill.distill.teacher.ReferenceCostTeacher`).
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


class RegionTimer(StepHooks):
    """Hooks that time each region of a step (device-synchronised); regions repeated per micro-batch add up."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}
        self._last = 0.0
        self._start = 0.0

    def start(self) -> None:
        self.times = dict.fromkeys(STEP_REGIONS, 0.0)
        self._start = self._last = now(self.device)

    def mark(self, region: str) -> None:
        t = now(self.device)
        self.times[region] += t - self._last
        self._last = t

    def result(self) -> dict[str, float]:
        """Seconds per region and ``total`` (the regions add up to it exactly)."""
        return {**self.times, "total": self._last - self._start}


def timed_step(run: TrainingRun, data: Iterator[Batch], it: int) -> dict[str, float]:
    """One :func:`~segdistill.engine.step.train_step` of ``run``; seconds per region and ``total``."""
    timer = RegionTimer(run.env.device)
    timer.start()
    train_step(run, data, it, hooks=timer)
    return timer.result()


def _repeat(batch: Batch) -> Iterator[Batch]:
    while True:
        yield batch


def count_step_flops(run: TrainingRun, batch: Batch) -> dict[str, int]:
    """FLOPs of one step by torch's ``FlopCounterMode`` (:func:`.flops.flop_counter`: grouped convolutions'
    backward counted right): the teacher's forward, and the
    student's forward + backward (distillation terms included); the optimizer's elementwise work is not
    counted. A compiled teacher is counted on its eager path (``force_eager``), which does the same math.
    """
    teacher_flops = 0
    if run.distills:
        counter = flop_counter()
        with torch.compiler.set_stance("force_eager"), counter:
            run.teacher(*batch)  # type: ignore[misc]
        teacher_flops = counter.get_total_flops()
    counter = flop_counter()
    with torch.compiler.set_stance("force_eager"), counter:
        train_step(run, _repeat(batch), 0)
    student_flops = counter.get_total_flops() - teacher_flops * run.cfg.train.accumulate
    return {"teacher_forward": int(teacher_flops), "student_forward_backward": int(student_flops),
            "total": int(teacher_flops + student_flops)}


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
        """Median seconds of a region, of ``total``, or of ``compute`` (the step without its data wait)."""
        if name == "compute":
            return median([s["total"] - s["data"] for s in self.steps])
        return median([s[name] for s in self.steps])

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
        return median(self.teacher_alone) + median(self.student_alone)

    @property
    def distill_s(self) -> float:
        """What distillation adds: compute of a step minus the unavoidable work."""
        return self.part("compute") - self.unavoidable_s

    @property
    def overhead_ratio(self) -> float:
        """``distillation step (compute) / (teacher fwd + student step)``; the target is <= 1.05."""
        return self.part("compute") / self.unavoidable_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, per-step raw times, medians (ms) and derived figures."""
        return {
            "label": self.label, "settings": self.settings, "batch": self.batch, "crop": list(self.crop),
            "median_ms": {**{r: self.part(r) * 1e3 for r in STEP_REGIONS}, "compute": self.part("compute") * 1e3,
                          "step": self.step_s * 1e3},
            "images_per_s": self.images_per_s,
            "flops": self.flops, "flops_per_s": self.flops_per_s,
            "memory": {"kind": self.memory_kind, "peak_mb": self.peak_memory_mb, "delta_mb": self.memory_delta_mb},
            "unavoidable_ms": {"teacher_forward": median(self.teacher_alone) * 1e3,
                               "student_step": median(self.student_alone) * 1e3,
                               "sum": self.unavoidable_s * 1e3},
            "distill_by_difference_ms": self.distill_s * 1e3,
            "overhead_ratio": self.overhead_ratio,
            "steps_s": self.steps, "teacher_alone_s": self.teacher_alone, "student_alone_s": self.student_alone,
        }


def synthetic_batches(batch: int, crop: tuple[int, int], num_classes: int, seed: int) -> Iterator[Batch]:
    """One random batch (normalised-image range, labels with ignored pixels), forever."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, *crop, generator=gen)
    label = torch.randint(0, num_classes, (batch, *crop), generator=gen)
    label[:, :2] = IGNORE_INDEX  # real labels have ignored pixels; CE must handle them
    return _repeat((image, label))


def real_batches(cfg: Config, env: DistEnv) -> Iterator[Batch]:
    """The trainer's own DataLoader over the configured training set."""
    ds = build_dataset(cfg.data.kind, cfg.data.root, cfg.data.train_split)
    return train_loader(cfg, build_train_set(cfg, ds), env, 0)


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
        "teacher_kind": None if t is None else ("reference-like (train mode, every head, losses)"
                                                if reference_teacher else f"frozen ({t.mode})"),
        "teacher.channels_last": bool(t and t.channels_last and not reference_teacher),
        "teacher.fold_bn": bool(t and t.fold_bn and not reference_teacher),
        "teacher.bf16": bool(t and t.bf16 and not reference_teacher),
        "teacher.compile": bool(t and t.compile and not reference_teacher),
        "train.amp": cfg.train.amp, "student.channels_last": cfg.student.channels_last,
        "train.accumulate": cfg.train.accumulate,
        "distill_terms": [loss.name for loss in cfg.distill.losses],
        "data": "synthetic" if synthetic else f"{cfg.data.kind} {cfg.data.root} (workers {cfg.data.workers})",
        "weights": "configured" if load_weights else "random",
    }


def bench_train(cfg: Config, *, iters: int = 10, warmup: int = 2, synthetic: bool = True,
                num_classes: int | None = None, reference_teacher: bool = False, load_weights: bool = False,
                label: str = "configured", device: torch.device | None = None) -> TrainBench:
    """Time ``iters`` training steps after ``warmup`` steps, and the unavoidable work alone.

    Batch and crop are ``cfg.train.batch_size`` and ``cfg.data.crop_size``. With ``synthetic`` one
    random batch is reused (no dataset), and each step is followed by one teacher forward alone and
    one student step alone, so that load from other processes on a shared machine hits the three
    measurements alike. With real data the steps run back to back through the trainer's DataLoader,
    so the data wait is what training sees, and the unavoidable work follows on one batch.
    """
    if iters < 1 or warmup < 0:
        raise UserError(f"bench needs --iters >= 1 and --warmup >= 0, got {iters} and {warmup}")
    # The benchmark times steps at whatever batch it is given; a recipe's global batch is not its concern.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, global_batch=None))
    env = DistEnv(device=device or pick_device(cfg.train.device))
    n_classes = num_classes or num_classes_of(cfg)
    crop = (int(cfg.data.crop_size[0]), int(cfg.data.crop_size[1]))
    run = build_run(cfg, n_classes, env, load_weights=load_weights, reference_teacher=reference_teacher)
    student_only = dataclasses.replace(run, teacher=None)  # same model and optimizer, no distillation
    data = synthetic_batches(cfg.train.batch_size, crop, n_classes, cfg.seed) if synthetic \
        else real_batches(cfg, env)
    steps: list[dict[str, float]] = []
    teacher_alone: list[float] = []
    student_alone: list[float] = []
    fixed: list[Batch] = []

    def fixed_batch() -> Batch:
        if not fixed:
            fixed.append(to_device(next(data), run))  # normalised on the device, as the step does
        return fixed[0]

    def unavoidable(it: int, keep: bool) -> None:
        batch = fixed_batch()
        if run.distills:
            start = now(env.device)
            for _ in range(cfg.train.accumulate):
                run.teacher(*batch)  # type: ignore[misc]
            t = now(env.device) - start
            if keep:
                teacher_alone.append(t)
        step = timed_step(student_only, _repeat(batch), it)
        if keep:
            student_alone.append(step["total"] - step["data"])

    memory = PeakMemory(env.device)
    memory.reset()  # after the models are built: the peak is what the steps add on top of them
    for it in range(warmup + iters):
        step = timed_step(run, data, it)
        if it >= warmup:
            steps.append(step)
        if synthetic:
            unavoidable(it, keep=it >= warmup)
    peak = memory.peak()
    if not synthetic:
        for it in range(min(warmup, 1) + iters):
            unavoidable(it, keep=it >= min(warmup, 1))
    flops = count_step_flops(run, fixed_batch())
    sync(env.device)
    return TrainBench(label, _settings(cfg, reference_teacher, synthetic, load_weights), cfg.train.batch_size, crop,
                      steps, teacher_alone, student_alone, flops, peak, peak - memory.baseline, memory.kind)


# ---- variants (--compare, --switches) -----------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A named set of config overrides, optionally with the reference-like teacher."""

    label: str
    overrides: tuple[tuple[str, Any], ...]
    reference_teacher: bool = False


def variants(switches: bool) -> list[Variant]:
    """All off vs all on; with ``switches`` also the frozen teacher with each switch alone.

    "all off" is :data:`ALL_OFF` with the reference-like teacher (what the reference pays);
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
        code = "import sys; from segdistill.bench.train import _child_main; _child_main(sys.argv[1], sys.argv[2])"
        proc = subprocess.run([sys.executable, "-c", code, str(job), str(result)], check=False)
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(f"benchmark variant {kwargs.get('label')!r} failed in its own process "
                               f"(exit code {proc.returncode}); its error is printed above")
        out = pickle.loads(result.read_bytes())
    if isinstance(out, UserError):
        raise out
    return out


def compare_variants(cfg: Config, variant_list: Sequence[Variant], *, isolate: bool = True,
                     progress: bool = True, **kwargs: Any) -> list[TrainBench]:
    """Run :func:`bench_train` for each variant; ``isolate`` gives each a fresh process (own memory
    peak, own compile caches, no allocator state carried over)."""
    from ..progress import progress_bar

    if cfg.teacher is None:
        raise UserError("bench --compare compares teacher fast paths; use a config that names a teacher")
    results = []
    with progress_bar(total=len(variant_list), desc="bench variants", unit="variant", enabled=progress) as bar:
        for v in variant_list:
            bar.set_postfix_str(v.label)
            vcfg = apply_overrides(cfg, v.overrides)
            args = {**kwargs, "reference_teacher": v.reference_teacher, "label": v.label}
            results.append(_bench_isolated(vcfg, args) if isolate else bench_train(vcfg, **args))
            bar.update(1)
    return results
