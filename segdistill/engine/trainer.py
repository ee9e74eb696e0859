"""The training loop: one function, read top to bottom.

``train(cfg)`` trains the student alone, or distills it when the config names a teacher. Launch it
with ``torchrun`` for several GPUs or machines: every rank runs this same function; DDP wraps only
the trainable :class:`~segdistill.distill.distiller.DistillStudent` (student + connectors); the
frozen teacher runs beside it, outside DDP.
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from ..config import Config, dump_config, to_dict
from ..data import (EvalSet, InfiniteSampler, SegDataset, TrainSet, build_dataset, build_eval_pipeline,
                    build_train_pipeline, prepare_worker_fork, worker_init)
from ..distill.distiller import DistillStudent, check_compatible, tap_channels
from ..distill.teacher import FrozenTeacher
from ..errors import UserError
from ..evaluation import SegMetrics, evaluate
from ..fileio import atomic_write_text
from ..models import (build_segmentor, extract_state_dict, load_backbone_checkpoint, load_checkpoint, load_state_dict,
                      read_checkpoint, save_checkpoint)
from ..models.segmentor import EncoderDecoder
from .checkpointing import load_training_state, rng_state, save_training_state, set_rng_state
from .distributed import (DistEnv, all_reduce_mean, all_reduce_sum, barrier, elastic_restarts_allowed,
                          init_distributed)
from .logging import RunLogger, format_eta, peak_memory_mb
from .schedule import poly_lr


class TrainingStopped(Exception):
    """Raised after a signal-triggered checkpoint so the CLI exits non-zero without a traceback."""

    def __init__(self, signum: int, iteration: int, path: Path | None) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name} at iteration {iteration}; "
                         f"checkpoint {path}; run the same command again to resume")
        self.signum = signum


@dataclass
class TrainResult:
    """What a finished run reports."""

    work_dir: Path
    iterations: int
    metrics: SegMetrics | None
    teacher_metrics: SegMetrics | None = None
    skipped_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def build_student(cfg: Config, num_classes: int) -> EncoderDecoder:
    """The student, initialised from ImageNet backbone weights or a full checkpoint when configured."""
    student = build_segmentor(cfg.student.model, num_classes)
    if cfg.student.pretrained_backbone:
        load_backbone_checkpoint(student.backbone, cfg.student.pretrained_backbone)
    if cfg.student.checkpoint:
        load_checkpoint(student, cfg.student.checkpoint)
    return student


def build_teacher(cfg: Config, num_classes: int, taps: list[str], device: torch.device, *,
                  load_weights: bool = True) -> FrozenTeacher:
    """The frozen teacher with its configured fast paths, on ``device``.

    ``load_weights=False`` keeps random weights (the benchmark: same switches, no download).
    """
    assert cfg.teacher is not None
    teacher = build_segmentor(cfg.teacher.model, num_classes)
    if load_weights:
        sd = extract_state_dict(read_checkpoint(cfg.teacher.checkpoint))
        classifier = sd.get("decode_head.conv_seg.weight")
        if classifier is not None and classifier.shape[0] != num_classes:
            raise UserError(f"teacher checkpoint {cfg.teacher.checkpoint} predicts {classifier.shape[0]} classes but "
                            f"the dataset ({cfg.data.kind} at {cfg.data.root}) has {num_classes}; teacher and student "
                            "must share the dataset's classes")
        load_state_dict(teacher, sd, source=f"teacher checkpoint {cfg.teacher.checkpoint}")
    teacher.to(device)
    return FrozenTeacher(teacher, taps, mode=cfg.teacher.mode, channels_last=cfg.teacher.channels_last,
                         bf16=cfg.teacher.bf16, fold_bn=cfg.teacher.fold_bn, compile=cfg.teacher.compile)


def build_train_set(cfg: Config, dataset: SegDataset) -> TrainSet:
    """``dataset`` with the configured training augmentations, seeded per sample."""
    d = cfg.data
    pipeline = build_train_pipeline(d.crop_size, d.scale, ratio_range=d.ratio_range, cat_max_ratio=d.cat_max_ratio,
                                    flip_prob=d.flip_prob, photometric=d.photometric)
    return TrainSet(dataset, pipeline, seed=cfg.seed)


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None) -> list[dict[str, Any]]:
    """One group, or two when norm layers and biases get their own weight decay."""
    if norm_weight_decay is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if isinstance(module, norm_types) or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": norm_weight_decay}]


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the student's forward (the loss scaling of fp16 is the caller's GradScaler).

    fp16 also runs on a CPU, slowly; it is allowed there so the GPU path (autocast + GradScaler) can
    be exercised and tested anywhere. bf16 is the CPU's fast choice.
    """
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so it can save before leaving."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner thread): no handler
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            # A second Ctrl-C: the user will not wait for the checkpoint. The last periodic one stays.
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *_: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _train_loader(cfg: Config, train_set: TrainSet, env: DistEnv, start_iter: int) -> Iterator[Any]:
    prepare_worker_fork()
    sampler = InfiniteSampler(len(train_set), seed=cfg.seed, rank=env.rank, world_size=env.world_size,
                              shuffle=True, start=start_iter * cfg.train.batch_size * env.world_size)
    workers = cfg.data.workers
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=cfg.data.pin_memory and env.device.type == "cuda",
                        persistent_workers=cfg.data.persistent_workers and workers > 0,
                        prefetch_factor=4 if workers else None, worker_init_fn=worker_init,
                        # A private generator: the loader must not consume the global RNG (dropout's),
                        # or a resumed run would draw different dropout masks.
                        generator=torch.Generator())
    return iter(loader)


def _check_norm_batch(student: nn.Module, norm_batch: int, batch_size: int) -> None:
    """Fail before the first step, in one line, where BatchNorm would see a single value per channel.

    The PSP and ASPP heads pool to 1x1 before a BatchNorm, so its batch statistics need two samples
    per normalisation group: one process's batch, or the whole global batch under SyncBN.
    """
    pooled = any(isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)) for m in student.modules())
    if pooled and norm_batch < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules()):
        raise UserError(f"train.batch_size={batch_size}: the student's BatchNorm after its 1x1 pooling needs at least "
                        "2 samples per batch; set train.batch_size=2 or more (on several GPUs, student.sync_bn=true "
                        "pools the statistics over every GPU's batch)")


def _ensure_writable(work_dir: Path) -> None:
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        probe = work_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run folder {work_dir} ({e.strerror}); "
                        "choose another with --work-dir") from None


def train(cfg: Config, work_dir: Path, resume: bool | Path = True) -> TrainResult:
    """Train (or distill) as configured; ``resume=True`` continues from ``work_dir``'s newest checkpoint."""
    env = init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    if env.is_main:
        _ensure_writable(work_dir)
        atomic_write_text(work_dir / "config.yaml", dump_config(cfg))
    barrier()

    # ---- data ---------------------------------------------------------------------------------
    train_ds = build_dataset(cfg.data.kind, cfg.data.root, cfg.data.train_split)
    val_ds = build_dataset(cfg.data.kind, cfg.data.root, cfg.data.val_split)
    train_set = build_train_set(cfg, train_ds)
    val_set = EvalSet(val_ds, build_eval_pipeline(cfg.data.eval_scale))
    num_classes, class_names = train_ds.num_classes, list(train_ds.classes)

    # ---- models -------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    student = build_student(cfg, num_classes)
    terms = list(cfg.distill.losses)
    teacher: FrozenTeacher | None = None
    channels = None
    if cfg.teacher is not None:
        teacher = build_teacher(cfg, num_classes, [t.teacher for t in terms], env.device)
        channels = tap_channels(student, teacher.model, terms) if terms else {}
        check_compatible(student, teacher.model, terms, channels)
    student.set_loss_options(cfg.student.aux_weight, cfg.student.avg_non_ignore)
    model = DistillStudent(student, terms, channels).to(env.device)
    sync_bn = env.distributed and env.device.type == "cuda" and cfg.student.sync_bn
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _check_norm_batch(student, cfg.train.batch_size * (env.world_size if sync_bn else 1), cfg.train.batch_size)
    if cfg.student.channels_last:
        model.to(memory_format=torch.channels_last)
    trainable: nn.Module = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None) \
        if env.distributed else model

    optimizer = torch.optim.SGD(param_groups(model, cfg.optim.weight_decay, cfg.optim.norm_weight_decay),
                                lr=cfg.optim.lr, momentum=cfg.optim.momentum)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.train.amp == "fp16")

    # ---- resume -------------------------------------------------------------------------------
    start_iter, best_miou, time_before = 0, -1.0, 0.0
    found = load_training_state(work_dir, resume if isinstance(resume, Path) else None) if resume else None
    if found is not None:
        state, path = found
        model.student.load_state_dict(state["state_dict"])
        model.connectors.load_state_dict(state["connectors"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_iter = int(state["meta"]["iteration"])
        best_miou = float(state["meta"].get("best_mIoU", -1.0))
        time_before = float(state["meta"].get("train_time_s", 0.0))
        set_rng_state(state["rng"][env.rank] if env.rank < len(state["rng"]) else state["rng"][0])
        if start_iter >= cfg.train.iters:
            if elastic_restarts_allowed() and (work_dir / "final.pth").is_file():
                # torchrun restarted the group after the run had ended (a rank failed while exiting).
                if env.is_main:
                    print(f"{work_dir} is already complete ({start_iter} iterations); nothing to do")
                return TrainResult(work_dir, start_iter, None)
            raise UserError(f"{path} is already at iteration {start_iter} of {cfg.train.iters}; "
                            "raise train.iters or use a new --work-dir")
    else:
        torch.manual_seed(cfg.seed + env.rank)  # per-rank dropout noise
    logger = RunLogger(work_dir, enabled=env.is_main, resume_iteration=start_iter if found else None)
    if found is not None:
        logger.print(f"resumed from {found[1]} at iteration {start_iter}")

    def run_eval(net: EncoderDecoder) -> SegMetrics:
        return evaluate(net, val_set, cfg.eval, env.device, class_names, rank=env.rank,
                        world_size=env.world_size, workers=min(cfg.data.workers, 2))

    teacher_metrics = None
    if teacher is not None and cfg.train.eval_teacher and start_iter == 0:
        teacher_metrics = run_eval(teacher.model)
        logger.log("eval_teacher", 0, teacher_metrics.to_dict(),
                   f"teacher on {cfg.data.val_split}: mIoU {teacher_metrics.mIoU:.2f}")
        teacher.train(False)  # evaluate() restores the mode it found; make the configured mode explicit

    meta = {"config": to_dict(cfg), "model": cfg.student.model, "num_classes": num_classes,
            "dataset_meta": {"classes": class_names, "palette": [list(c) for c in train_ds.palette]}}

    def save(iteration: int) -> Path | None:
        states = [rng_state()]
        if env.distributed:
            gathered: list[Any] = [None] * env.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        path = None
        if env.is_main:
            path = save_training_state(work_dir, iteration, {
                "meta": {**meta, "iteration": iteration, "best_mIoU": best_miou,
                         "train_time_s": time_before + time.perf_counter() - t_start},
                "state_dict": model.student.state_dict(),
                "connectors": model.connectors.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": states,
            })
        barrier()
        return path

    # ---- the loop -----------------------------------------------------------------------------
    data = _train_loader(cfg, train_set, env, start_iter)
    model.train()
    if teacher is not None:
        teacher.train(False)
    metrics: SegMetrics | None = None
    sums: dict[str, torch.Tensor] = {}
    data_times: list[float] = []
    step_times: list[float] = []
    skipped = consecutive_bad = good_steps = 0
    history: list[dict[str, float]] = []
    t_start = time.perf_counter()
    with _StopSignal() as stop:
        for it in range(start_iter, cfg.train.iters):
            t0 = time.perf_counter()
            image, label = next(data)
            image = image.to(env.device, non_blocking=True)
            label = label.to(env.device, non_blocking=True)
            if cfg.student.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            t1 = time.perf_counter()

            lr = poly_lr(it, cfg.optim.lr, cfg.train.iters, cfg.optim.power, cfg.optim.min_lr,
                         cfg.optim.warmup_iters, cfg.optim.warmup_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr

            teacher_out = teacher(image) if teacher is not None and terms else None
            with autocast(env.device, cfg.train.amp):
                losses = trainable(image, label, teacher_out)
            total = sum(losses.values())

            # Ranks must agree on skipping a step and on stopping, so both flags travel together.
            flags = torch.tensor([0.0 if bool(torch.isfinite(total)) else 1.0, float(stop.signum)], device=env.device)
            all_reduce_sum(flags)
            if flags[0] > 0:
                skipped += 1
                consecutive_bad += 1
                optimizer.zero_grad(set_to_none=True)
                logger.log("nonfinite", it + 1, {k: float(v.detach()) for k, v in losses.items()},
                           f"iter {it + 1}: non-finite loss, step skipped ({consecutive_bad} in a row)")
                if consecutive_bad >= cfg.train.max_nonfinite_steps:
                    raise UserError(f"{consecutive_bad} non-finite losses in a row at iteration {it + 1}; the last "
                                    f"good checkpoint is in {work_dir / 'checkpoints'}; lower optim.lr or check "
                                    "the data, then resume")
            else:
                consecutive_bad = 0
                scaler.scale(total).backward()
                if cfg.optim.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                good_steps += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, torch.zeros((), device=env.device)) + v.detach().float()
                sums["loss"] = sums.get("loss", torch.zeros((), device=env.device)) + total.detach().float()
            if env.device.type == "cuda":
                torch.cuda.synchronize(env.device)  # honest step times
            data_times.append(t1 - t0)
            step_times.append(time.perf_counter() - t1)
            done = it + 1

            if done % cfg.train.log_interval == 0 or done == cfg.train.iters:
                n = max(1, good_steps)
                values = all_reduce_mean({k: v.item() / n for k, v in sums.items()}, env.device)
                step_t = statistics.median(step_times)
                data_t = statistics.median(data_times)
                eta = (cfg.train.iters - done) * (step_t + data_t)
                row = {**values, "lr": lr, "data_time": data_t, "step_time": step_t,
                       "memory_mb": peak_memory_mb(env.device), "skipped": skipped}
                history.append({"iter": done, **row})
                loss_text = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
                logger.log("train", done, row,
                           f"[{done}/{cfg.train.iters}] {loss_text}  lr {lr:.2e}  data {data_t * 1e3:.0f}ms  "
                           f"step {step_t * 1e3:.0f}ms  eta {format_eta(eta)}  mem {row['memory_mb']:.0f}MB")
                sums, data_times, step_times, good_steps = {}, [], [], 0

            if flags[1] > 0:
                path = save(done)
                logger.close()
                raise TrainingStopped(int(flags[1].item()) if env.world_size == 1 else signal.SIGTERM, done, path)
            # Evaluate before checkpointing: a crash during the evaluation then resumes from the previous
            # checkpoint and redoes it, instead of resuming past an evaluation that never finished.
            if done % cfg.train.eval_interval == 0 or done == cfg.train.iters:
                metrics = run_eval(model.student)
                logger.log("eval", done, metrics.to_dict(), f"[{done}] {cfg.data.val_split} mIoU {metrics.mIoU:.2f}  "
                           f"mAcc {metrics.mAcc:.2f}  aAcc {metrics.aAcc:.2f}")
                if env.is_main and metrics.mIoU > best_miou:
                    best_miou = metrics.mIoU
                    save_checkpoint(work_dir / "best.pth", model.student.state_dict(),
                                    meta={**meta, "iteration": done, "mIoU": metrics.mIoU})
            if done % cfg.train.checkpoint_interval == 0 or done == cfg.train.iters:
                save(done)
    if env.is_main:
        save_checkpoint(work_dir / "final.pth", model.student.state_dict(), meta={**meta, "iteration": cfg.train.iters})
        if metrics is not None:
            # Wall time over every session of the run, resumes included.
            summary = {"iterations": cfg.train.iters, "wall_time_s": time_before + time.perf_counter() - t_start,
                       "final": metrics.to_dict(), "teacher": teacher_metrics.to_dict() if teacher_metrics else None,
                       "skipped_steps": skipped}
            atomic_write_text(work_dir / "results.json", json.dumps(summary, indent=1, allow_nan=False))
    logger.close()
    barrier()
    del data  # shut the loader's workers down before the process group goes away
    return TrainResult(work_dir, cfg.train.iters, metrics, teacher_metrics, skipped, history)
