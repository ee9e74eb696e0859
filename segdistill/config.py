"""Experiment configs: one YAML file per experiment, read into typed, validated dataclasses.

``load_config(path, overrides)`` reads the YAML, applies ``key.sub=value`` overrides (list items by
index: ``distill.losses.0.tau=2``), checks every key and type (an unknown key names the nearest valid
one) and every range, and returns a :class:`Config`. ``dump_config`` writes the resolved config back
as YAML, which every run saves in its folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import UserError


@dataclass
class DataConfig:
    """Dataset and the training/evaluation pipelines (mmseg's semantics)."""

    kind: Literal["cityscapes", "camvid", "folder"] = "cityscapes"
    root: str = "data/cityscapes"
    train_split: str = "train"
    val_split: str = "val"
    # Training pipeline: RandomResize(scale, ratio_range) -> RandomCrop(crop_size, cat_max_ratio)
    # -> RandomFlip -> PhotoMetricDistortion in the workers (uint8); Normalize -> Pad on the device.
    scale: tuple[int, int] = (2048, 1024)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 1024)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    # Evaluation resize (keep ratio, (long, short) edge like mmseg's Resize); null = native size.
    eval_scale: tuple[int, int] | None = (2048, 1024)
    workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    # Decoded-image cache folder (raw uint8, memory-mapped; `segdistill prepare cache CONFIG`); null = decode files.
    cache: str | None = None


@dataclass
class StudentConfig:
    """The network that trains."""

    model: str = "pspnet_r18-d8"
    pretrained_backbone: str | None = None  # ImageNet resnetXX_v1c weights (path or URL)
    checkpoint: str | None = None  # initialise the whole model from a checkpoint instead
    aux_weight: float | None = None  # every auxiliary head's loss weight; null = the model's own (mmseg's)
    avg_non_ignore: bool = False  # False = mmseg's CE averaging over all pixels, ignored ones included
    channels_last: bool = False
    sync_bn: bool = True  # SyncBatchNorm when training on several CUDA devices


@dataclass
class TeacherConfig:
    """The frozen network that teaches; ``mode: reference`` reproduces mmrazor's train-mode teacher."""

    model: str = "pspnet_r101-d8"
    checkpoint: str = ""
    mode: Literal["eval", "reference"] = "eval"
    channels_last: bool = True
    bf16: bool = True  # autocast the teacher's forward where the device supports bfloat16
    fold_bn: bool = True
    compile: bool = False


@dataclass(frozen=True)
class DistillTerm:
    """One distillation term between a tapped student module and a tapped teacher module.

    The one schema of a term: the config validates it, the distiller builds its loss from it.
    """

    name: str = "cwd_logits"
    type: Literal["cwd", "kd", "pairwise", "at", "mse", "dist", "mgd"] = "cwd"
    student: str = "decode_head.conv_seg"
    teacher: str = "decode_head.conv_seg"
    weight: float = 5.0
    tau: float = 1.0  # cwd, kd, dist
    connector: Literal["convbn", "convbnrelu", "identity", "mgd"] | None = None  # mgd: required by (only) type mgd
    # When the two maps differ in H, W (e.g. a stride-4 student, a stride-8 teacher): "student" resizes the
    # teacher's map to the student's, "teacher" the student's (after its connector) to the teacher's, both
    # bilinear with align_corners=False; "none" refuses in one line. See docs/losses.md.
    align: Literal["none", "student", "teacher"] = "none"
    pool_size: int | None = None  # pairwise: average-pool both maps to this size first (memory is O((HW)^2))
    p: float = 2.0  # at: the exponent of the attention map
    inter_weight: float = 1.0  # dist: weight of the inter-class relation (each pixel's classes)
    intra_weight: float = 1.0  # dist: weight of the intra-class relation (each class over the batch's pixels)
    alpha_mgd: float = 2e-5  # mgd: mmrazor's factor of the summed squared error / N
    lambda_mgd: float = 0.65  # mgd: probability that the mgd connector masks a position, in [0, 1)
    standardize: bool = False  # cwd, kd, dist: z-score the logits along the softmax axis before tau


@dataclass
class DistillConfig:
    """The distillation terms; an empty list with a teacher still runs (and only costs time)."""

    losses: list[DistillTerm] = field(default_factory=list)


@dataclass
class ParamRule:
    """mmengine's ``paramwise_cfg.custom_keys`` entry: parameters whose name contains ``key`` get these
    multipliers of the learning rate and the weight decay (the longest matching key wins)."""

    key: str = ""
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass
class OptimConfig:
    """The optimizer and the learning-rate schedule (a pure function of the iteration).

    lr(it) = (lr - min_lr) * (1 - it/iters)^power + min_lr, with an optional linear warm-up from
    ``lr * warmup_ratio``; ``schedule`` says how the two compose (see :func:`~segdistill.engine.schedule.poly_lr`).
    """

    type: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    weight_decay: float = 0.0005
    norm_weight_decay: float | None = None  # weight decay on norm layers and biases; null = same as above
    paramwise: list[ParamRule] = field(default_factory=list)  # e.g. SegFormer: head lr x10, no decay on norms
    power: float = 0.9
    min_lr: float = 0.0001
    warmup_iters: int = 0
    warmup_ratio: float = 0.1  # linear warm-up starts at lr * warmup_ratio (mmengine's LinearLR start_factor)
    # "mmengine": exactly mmseg 1.x's LinearLR then PolyLR; "scaled_warmup": segdistill 0.1's form (the CamVid
    # study keeps it). See segdistill.engine.schedule.poly_lr.
    schedule: Literal["mmengine", "scaled_warmup"] = "mmengine"
    grad_clip: float | None = None  # max global grad norm


@dataclass
class TrainConfig:
    """The loop: length, batch, precision, and how often to log, evaluate and save."""

    iters: int = 80000
    batch_size: int = 2  # per process (per GPU)
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    # The recipe's samples per optimizer step over all processes (world size x batch_size x accumulate).
    # A run whose effective global batch differs stops with the exact fixes; null = no check.
    global_batch: int | None = None
    amp: Literal["none", "bf16", "fp16"] = "none"
    device: str = "auto"  # auto | cpu | cuda
    log_interval: int = 50
    eval_interval: int = 8000
    checkpoint_interval: int = 8000
    max_nonfinite_steps: int = 20  # stop after this many non-finite losses in a row
    eval_teacher: bool = True  # evaluate the teacher once at the start of a distillation run
    dist_timeout_min: float = 30.0  # how long ranks wait for each other (joining, collectives) before failing


@dataclass
class EvalConfig:
    """Inference used by evaluation: whole image or sliding window, optional flip / multi-scale."""

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    flip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class Config:
    """One experiment."""

    name: str = "experiment"
    seed: int = 0
    work_dir: str | None = None  # default: runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------------
# Reading


def _nearest(key: str, valid: typing.Iterable[str]) -> str:
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {near[0]!r}?)" if near else f" (valid keys: {', '.join(valid)})"


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (YAML lists -> tuples, int -> float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
            return tuple(_convert(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{where}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads `1e-4` as a string; accept what Python reads as a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        # Every float field of every dataclass passes here: nan and inf (`.nan`, `inf`, `1e999`) are refused once.
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise UserError(f"unknown config key {path!r}{_nearest(str(key), names)}")
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    # YAML's scalar rules make `lr=1e-3`, `amp=bf16`, `teacher=null` and `crop=[256,512]` all work.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Apply one ``key.sub=value`` to the raw YAML tree (before validation)."""
    if "=" not in override:
        raise UserError(f"override {override!r} is not of the form key.sub=value")
    dotted, text = override.split("=", 1)
    keys = dotted.strip().split(".")
    node: Any = tree
    if not all(keys):
        raise UserError(f"override {override!r}: {dotted.strip()!r} has an empty key; write key.sub=value")
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_index(key, node, keys[: i + 1])]
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        if not isinstance(node, (dict, list)):
            raise UserError(f"override key {dotted.strip()!r}: {'.'.join(keys[: i + 1])!r} is a single value "
                            f"({node!r}), not a mapping or a list, so it has no {keys[i + 1]!r}")
    last = keys[-1]
    if isinstance(node, list):
        node[_index(last, node, keys)] = _parse_scalar(text)
    else:
        node[last] = _parse_scalar(text)


def _index(key: str, node: list[Any], path: list[str]) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise UserError(f"override key {'.'.join(path)!r}: {key!r} is not an index below {len(node)}")
    return int(key)


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def validate(cfg: Config) -> Config:
    """Range checks that types alone cannot express."""
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise UserError(f"config key {key!r}: {msg}")

    need(0 <= cfg.seed < 2**32, "seed", f"must be an integer in [0, 2**32), got {cfg.seed}")
    need(cfg.optim.lr > 0, "optim.lr", f"must be > 0, got {cfg.optim.lr}")
    need(0 <= cfg.optim.momentum < 1, "optim.momentum", f"must be in [0, 1), got {cfg.optim.momentum}")
    need(_DEVICE_RE.match(cfg.train.device) is not None, "train.device",
         f"must be auto, cpu, cuda or cuda:N, got {cfg.train.device!r}")
    need(0 <= cfg.optim.min_lr <= cfg.optim.lr, "optim.min_lr", "must be in [0, optim.lr]")
    need(cfg.optim.power >= 0, "optim.power", "must be >= 0")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(cfg.optim.warmup_iters >= 0, "optim.warmup_iters", "must be >= 0")
    need(0 < cfg.optim.warmup_ratio <= 1, "optim.warmup_ratio", "must be in (0, 1]")
    need(cfg.optim.warmup_iters < cfg.train.iters, "optim.warmup_iters", "must be below train.iters")
    need(all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas", "must be two numbers in [0, 1)")
    for i, rule in enumerate(cfg.optim.paramwise):
        need(bool(rule.key), f"optim.paramwise.{i}.key", "must be a non-empty part of a parameter name")
        need(math.isfinite(rule.lr_mult) and rule.lr_mult >= 0, f"optim.paramwise.{i}.lr_mult", "must be >= 0")
        need(math.isfinite(rule.decay_mult) and rule.decay_mult >= 0, f"optim.paramwise.{i}.decay_mult",
             "must be >= 0")
    need(cfg.optim.grad_clip is None or cfg.optim.grad_clip > 0, "optim.grad_clip", "must be > 0 or null")
    need(cfg.train.iters > 0, "train.iters", f"must be > 0, got {cfg.train.iters}")
    need(cfg.train.batch_size > 0, "train.batch_size", "must be > 0")
    need(cfg.train.accumulate > 0, "train.accumulate", f"must be >= 1, got {cfg.train.accumulate}")
    need(cfg.train.global_batch is None or cfg.train.global_batch > 0, "train.global_batch", "must be > 0 or null")
    need(cfg.train.dist_timeout_min > 0, "train.dist_timeout_min", "must be > 0 (minutes)")
    for key in ("log_interval", "eval_interval", "checkpoint_interval", "max_nonfinite_steps"):
        need(getattr(cfg.train, key) > 0, f"train.{key}", "must be > 0")
    need(cfg.data.workers >= 0, "data.workers", "must be >= 0")
    need(all(c > 0 for c in cfg.data.crop_size), "data.crop_size", "must be positive")
    need(all(c > 0 for c in cfg.data.scale), "data.scale", f"must be positive, got {list(cfg.data.scale)}")
    need(cfg.data.eval_scale is None or all(c > 0 for c in cfg.data.eval_scale), "data.eval_scale",
         "must be positive or null")
    need(0 < cfg.data.ratio_range[0] <= cfg.data.ratio_range[1], "data.ratio_range", "must be 0 < low <= high")
    # The largest image RandomResize can give has a short edge of min(scale) * max(ratio); a crop
    # larger than that is mostly padding, which is almost always a units mistake (H W vs W H).
    max_short = min(cfg.data.scale) * cfg.data.ratio_range[1]
    need(min(cfg.data.crop_size) <= max_short, "data.crop_size",
         f"{list(cfg.data.crop_size)} is larger than what the pipeline can give (short edge <= {max_short:g}); "
         "lower the crop or raise data.scale")
    need(0 < cfg.data.cat_max_ratio <= 1, "data.cat_max_ratio", "must be in (0, 1]")
    need(0 <= cfg.data.flip_prob <= 1, "data.flip_prob", "must be in [0, 1]")
    need(cfg.student.aux_weight is None or cfg.student.aux_weight >= 0, "student.aux_weight", "must be >= 0 or null")
    names = [loss.name for loss in cfg.distill.losses]
    need(len(names) == len(set(names)), "distill.losses", f"names must be unique, got {names}")
    for i, loss in enumerate(cfg.distill.losses):
        for key in ("tau", "weight", "p", "inter_weight", "intra_weight", "alpha_mgd", "lambda_mgd"):
            need(math.isfinite(getattr(loss, key)), f"distill.losses.{i}.{key}",
                 f"must be a finite number, got {getattr(loss, key)}")
        need(loss.tau > 0, f"distill.losses.{i}.tau", f"must be > 0, got {loss.tau}")
        need(loss.weight >= 0, f"distill.losses.{i}.weight", f"must be >= 0, got {loss.weight}")
        need(loss.pool_size is None or loss.pool_size > 0, f"distill.losses.{i}.pool_size", "must be > 0 or null")
        need(loss.p > 0, f"distill.losses.{i}.p", f"must be > 0, got {loss.p}")
        need(loss.inter_weight >= 0, f"distill.losses.{i}.inter_weight", f"must be >= 0, got {loss.inter_weight}")
        need(loss.intra_weight >= 0, f"distill.losses.{i}.intra_weight", f"must be >= 0, got {loss.intra_weight}")
        need(loss.alpha_mgd > 0, f"distill.losses.{i}.alpha_mgd", f"must be > 0, got {loss.alpha_mgd}")
        need(0 <= loss.lambda_mgd < 1, f"distill.losses.{i}.lambda_mgd", f"must be in [0, 1), got {loss.lambda_mgd}")
        need(not loss.standardize or loss.type in ("cwd", "kd", "dist"), f"distill.losses.{i}.standardize",
             f"logit standardization applies to types cwd, kd and dist, not {loss.type!r}")
        need(loss.type != "mgd" or loss.connector == "mgd", f"distill.losses.{i}.connector",
             f"a term of type 'mgd' generates the teacher feature through 'connector: mgd', got {loss.connector!r}")
        need(loss.connector != "mgd" or loss.type == "mgd", f"distill.losses.{i}.connector",
             f"'connector: mgd' belongs to terms of type 'mgd', not {loss.type!r}")
    need(not cfg.distill.losses or cfg.teacher is not None, "distill.losses", "distillation losses need a teacher")
    if cfg.teacher is not None:
        need(bool(cfg.teacher.checkpoint), "teacher.checkpoint", "a teacher needs its checkpoint (path or URL)")
    if cfg.eval.mode == "slide":
        need(cfg.eval.crop_size is not None and cfg.eval.stride is not None, "eval.mode",
             "slide needs eval.crop_size and eval.stride")
    for key in ("crop_size", "stride"):
        size = getattr(cfg.eval, key)
        need(size is None or all(c > 0 for c in size), f"eval.{key}", f"must be positive or null, got {size}")
    need(len(cfg.eval.scales) > 0 and all(s > 0 for s in cfg.eval.scales), "eval.scales", "must be positive")
    from .models import MODELS  # late import: the config stage must not need torch to parse

    for key, name in [("student.model", cfg.student.model)] + (
            [("teacher.model", cfg.teacher.model)] if cfg.teacher else []):
        need(name in MODELS, key, f"unknown model {name!r}{_nearest(name, MODELS)}")
    return cfg


def config_from_dict(tree: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
    """Build a validated :class:`Config` from a raw mapping plus ``key.sub=value`` overrides."""
    tree = _deepcopy(tree)
    for override in overrides:
        apply_override(tree, override)
    return validate(_build(Config, tree))


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML experiment file, apply overrides, and validate."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        tree = load_yaml(read_text_file(path, "config file")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(tree, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    try:
        return config_from_dict(tree, overrides)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error.

    Plain PyYAML keeps the last of two equal keys, so a second ``optim:`` block silently replaces the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line}); "
                                "keep one", key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping (a YAMLError naming the key and lines)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and where (line, column)."""
    problem = getattr(err, "problem", None)
    mark = getattr(err, "problem_mark", None)
    if problem and mark is not None and "(line" not in problem:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return problem or str(err).splitlines()[0]


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; a file in another encoding or one that cannot be read is a one-line UserError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at position {e.start}); "
                        "save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None


def to_dict(cfg: Any) -> Any:
    """The config as plain YAML-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: Config) -> str:
    """YAML text of the resolved config; ``load_config`` on it gives the same config back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _deepcopy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deepcopy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deepcopy(v) for v in tree]
    return tree
