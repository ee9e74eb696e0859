"""What one training run owns, built once by :func:`build_run`: the trainer and the benchmark share it.

A :class:`TrainingRun` holds the student (inside :class:`~segdistill.distill.distiller.DistillStudent`
with its connectors and losses), the frozen teacher (outside DDP), the trainable wrapper (DDP on
several processes, else the model itself), the optimizer and the grad scaler. The only training
step, :func:`~segdistill.engine.step.train_step`, runs on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config, ParamRule
from ..data.preprocess import DataPreprocessor
from ..distill.distiller import DistillStudent, check_compatible, tap_channels
from ..distill.teacher import FrozenTeacher, ReferenceCostTeacher
from ..errors import UserError
from ..models import (
    build_segmentor,
    extract_state_dict,
    load_backbone_checkpoint,
    load_checkpoint,
    load_state_dict,
    read_checkpoint,
)
from ..models.ops import to_channels_last
from ..models.segmentor import EncoderDecoder
from .distributed import DistEnv
from .schedule import poly_lr

#: ``teacher(image, label) -> {tap name: float32 map}``
TeacherFn = Callable[[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]


def build_student(cfg: Config, num_classes: int, *, load_weights: bool = True) -> EncoderDecoder:
    """The student, initialised from ImageNet backbone weights or a full checkpoint when configured.

    ``load_weights=False`` keeps the random initialisation (the benchmark: no download).
    """
    student = build_segmentor(cfg.student.model, num_classes)
    if load_weights and cfg.student.pretrained_backbone:
        load_backbone_checkpoint(student.backbone, cfg.student.pretrained_backbone)
    if load_weights and cfg.student.checkpoint:
        load_checkpoint(student, cfg.student.checkpoint)
    student.set_loss_options(cfg.student.aux_weight, cfg.student.avg_non_ignore)
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


def param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float | None) -> list[dict[str, Any]]:
    """One group, or two when norm layers and biases get their own weight decay."""
    if norm_weight_decay is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if isinstance(module, norm_types) or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": norm_weight_decay}]


def paramwise_groups(model: nn.Module, weight_decay: float, rules: list[ParamRule],
                     strip_prefix: str = "student.") -> list[dict[str, Any]]:
    """One group per parameter, with mmengine's ``custom_keys`` semantics: the longest key (then the
    alphabetically first) that is a substring of the parameter's name sets ``lr_mult`` and the weight
    decay's ``decay_mult``. Names are the segmentor's own (``decode_head.conv_seg.weight``), as in mmseg."""
    keys = sorted(sorted(r.key for r in rules), key=len, reverse=True)
    by_key = {r.key: r for r in rules}
    groups: list[dict[str, Any]] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.removeprefix(strip_prefix)
        rule = next((by_key[k] for k in keys if k in name), None)
        lr_mult = rule.lr_mult if rule else 1.0
        decay = weight_decay * (rule.decay_mult if rule else 1.0)
        groups.append({"params": [p], "weight_decay": decay, "lr_mult": lr_mult, "name": name})
    return groups


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over ``model``'s trainable parameters (student + connectors).

    Each param group may carry ``lr_mult``; the step sets ``lr = lr_at(it) * lr_mult`` on every group.
    """
    o = cfg.optim
    if o.paramwise:
        groups = paramwise_groups(model, o.weight_decay, o.paramwise)
    else:
        groups = param_groups(model, o.weight_decay, o.norm_weight_decay)
    if o.type == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)


def lr_at(cfg: Config, it: int) -> float:
    """The learning rate of iteration ``it``: a pure function of the iteration (no scheduler state)."""
    o = cfg.optim
    return poly_lr(it, o.lr, cfg.train.iters, o.power, o.min_lr, o.warmup_iters, o.warmup_ratio, o.schedule)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the student's forward (the loss scaling of fp16 is the run's GradScaler).

    fp16 also runs on a CPU, slowly; it is allowed there so the GPU path (autocast + GradScaler) can
    be exercised and tested anywhere. bf16 is the CPU's fast choice.
    """
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def check_norm_batch(student: nn.Module, norm_batch: int, batch_size: int) -> None:
    """Fail before the first step, in one line, where BatchNorm would see a single value per channel.

    The PSP and ASPP heads pool to 1x1 before a BatchNorm, so its batch statistics need two samples
    per normalisation group: one process's batch, or the whole global batch under SyncBN.
    """
    pooled = any(isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)) for m in student.modules())
    if pooled and norm_batch < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules()):
        raise UserError(f"train.batch_size={batch_size}: the student's BatchNorm after its 1x1 pooling needs at least "
                        "2 samples per batch; set train.batch_size=2 or more (on several GPUs, student.sync_bn=true "
                        "pools the statistics over every GPU's batch)")


def effective_global_batch(cfg: Config, world_size: int) -> int:
    """Samples per optimizer step over every process: world size x batch per process x accumulation."""
    return world_size * cfg.train.batch_size * cfg.train.accumulate


def check_global_batch(cfg: Config, world_size: int) -> int:
    """The effective global batch; a one-line error when it differs from ``train.global_batch``."""
    got = effective_global_batch(cfg, world_size)
    want = cfg.train.global_batch
    if want is not None and got != want:
        b, k = cfg.train.batch_size, cfg.train.accumulate
        fix = ""
        if want % (world_size * b) == 0:
            fix = f"set train.accumulate={want // (world_size * b)} (the reference's batch), or "
        raise UserError(f"global batch {got} ({world_size} process(es) x train.batch_size={b} x train.accumulate={k}) "
                        f"differs from train.global_batch={want}, the recipe's; {fix}set train.global_batch={got} "
                        "to accept the change")
    return got


@dataclass
class TrainingRun:
    """Everything one training run steps: see the module docstring."""

    cfg: Config
    env: DistEnv
    model: DistillStudent
    trainable: nn.Module
    teacher: TeacherFn | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    global_batch: int
    preprocessor: DataPreprocessor = field(default_factory=DataPreprocessor)

    @property
    def student(self) -> EncoderDecoder:
        return self.model.student

    @property
    def teacher_model(self) -> EncoderDecoder | None:
        return getattr(self.teacher, "model", None)

    @property
    def distills(self) -> bool:
        """Whether a step runs the teacher and the distillation terms."""
        return self.teacher is not None and bool(self.model.terms)


def build_run(cfg: Config, num_classes: int, env: DistEnv, *, load_weights: bool = True,
              reference_teacher: bool = False) -> TrainingRun:
    """Build the run as configured, identically on every rank.

    ``load_weights=False`` keeps every weight randomly initialised (the benchmark: no download);
    ``reference_teacher=True`` uses :class:`~segdistill.distill.teacher.ReferenceCostTeacher`, what
    mmrazor's teacher costs (the benchmark's "all fast paths off" variant).
    """
    global_batch = check_global_batch(cfg, env.world_size)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    student = build_student(cfg, num_classes, load_weights=load_weights)
    terms = list(cfg.distill.losses)
    teacher: TeacherFn | None = None
    channels: dict[str, tuple[int, int]] | None = None
    if cfg.teacher is not None:
        taps = [t.teacher for t in terms]
        if reference_teacher:
            net = build_segmentor(cfg.teacher.model, num_classes)
            if load_weights:
                load_checkpoint(net, cfg.teacher.checkpoint)
            teacher = ReferenceCostTeacher(net.to(env.device), taps)
        else:
            teacher = build_teacher(cfg, num_classes, taps, env.device, load_weights=load_weights)
        teacher_net: EncoderDecoder = teacher.model  # type: ignore[attr-defined]
        channels = tap_channels(student, teacher_net, terms) if terms else {}
        check_compatible(student, teacher_net, terms, channels)
    model = DistillStudent(student, terms, channels).to(env.device)
    sync_bn = env.distributed and env.device.type == "cuda" and cfg.student.sync_bn
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    check_norm_batch(student, cfg.train.batch_size * (env.world_size if sync_bn else 1), cfg.train.batch_size)
    if cfg.student.channels_last:
        to_channels_last(model)
    trainable: nn.Module = model
    if env.distributed:
        trainable = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.train.amp == "fp16")
    model.train()
    torch.manual_seed(cfg.seed + env.rank)  # per-rank dropout noise (a resumed run restores its RNG instead)
    return TrainingRun(cfg, env, model, trainable, teacher, optimizer, scaler, global_batch)
