"""``segdistill`` command line: subcommands that call the stages; no logic of their own.

A :class:`~segdistill.errors.UserError` anywhere ends the command with one line on stderr and exit
code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .errors import UserError


def _config(args: argparse.Namespace):  # noqa: ANN202 - returns segdistill.config.Config
    from .config import load_config

    return load_config(args.config, args.overrides)


def _work_dir(cfg, args: argparse.Namespace) -> Path:  # noqa: ANN001
    if getattr(args, "work_dir", None):
        return Path(args.work_dir)
    return Path(cfg.work_dir) if cfg.work_dir else Path("runs") / cfg.name


def _eval_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if getattr(args, "mode", None):
        extra.append(f"eval.mode={args.mode}")
    if getattr(args, "tta", False):
        extra += ["eval.flip=true", "eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75]"]
    return extra


def _load_model(name: str, num_classes: int, checkpoint: str, part: str = "student",  # noqa: ANN202
                raw: dict | None = None):
    """Build model ``name`` and load ``checkpoint`` into it strictly: eval, predict, export and viz share this.

    ``raw`` is the checkpoint already read (:func:`~segdistill.models.read_checkpoint`), to read it once.
    """
    from .models import build_segmentor, extract_state_dict, load_state_dict, read_checkpoint

    model = build_segmentor(name, num_classes)
    raw = read_checkpoint(checkpoint) if raw is None else raw
    load_state_dict(model, extract_state_dict(raw, part=part), source=f"checkpoint {checkpoint}")
    return model


# ---- train -------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.checkpointing import iter_checkpoints
    from .engine.trainer import train

    cfg = _config(args)
    work_dir = _work_dir(cfg, args)
    if args.resume is False and iter_checkpoints(work_dir):
        raise UserError(f"{work_dir} already holds checkpoints of a run; drop --no-resume to continue it, "
                        "or choose a new --work-dir")
    resume: bool | Path = Path(args.resume) if isinstance(args.resume, str) else args.resume
    result = train(cfg, work_dir, resume=resume, accept_config_change=args.accept_config_change)
    if result.metrics is not None:
        print(result.metrics.table())
    print(f"run folder: {work_dir}")
    return 0


# ---- eval --------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .data import EvalSet, build_eval_pipeline
    from .engine.distributed import init_distributed
    from .evaluation import evaluate
    from .fileio import atomic_write_text, check_writable

    args.overrides = list(args.overrides) + _eval_overrides(args)
    cfg = _config(args)
    if args.out:  # before an evaluation that can take hours
        check_writable(args.out, "--out")
    env = init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    ds = _dataset_meta(cfg, args.split)
    model = _load_model(args.model or cfg.student.model, ds.num_classes, args.checkpoint, args.part).to(env.device)
    metrics = evaluate(model, EvalSet(ds, build_eval_pipeline(cfg.data.eval_scale)), cfg.eval, env.device,
                       list(ds.classes), rank=env.rank, world_size=env.world_size, workers=cfg.data.workers,
                       progress=not args.no_progress)
    if env.is_main:
        print(metrics.table())
        if args.out:
            atomic_write_text(args.out, json.dumps(metrics.to_dict(), indent=1))
    return 0


# ---- predict / export / viz-channels ------------------------------------------------------------


def _dataset_meta(cfg, split: str | None = None):  # noqa: ANN001, ANN202 - returns a SegDataset
    from .data import build_dataset

    return build_dataset(cfg.data.kind, cfg.data.root, split or cfg.data.val_split)


@dataclass
class ClassInfo:
    """How many classes a checkpoint's model predicts, their names and colours (None: unknown), and whether
    the names came from the checkpoint itself."""

    num_classes: int
    classes: list[str] | None = None
    palette: list[tuple[int, int, int]] | None = None
    from_checkpoint: bool = False


def _meta_classes(raw: dict) -> tuple[int | None, list[str] | None, list[tuple[int, int, int]] | None]:
    """``(count, names, colours)`` a checkpoint's meta records: mmseg 1.x / segdistill ``meta["dataset_meta"]``,
    mmseg 0.x ``meta["CLASSES"]``/``meta["PALETTE"]``, segdistill's ``meta["num_classes"]``."""
    found = raw.get("meta")
    meta: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    found = meta.get("dataset_meta")
    dm: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    listed = dm.get("classes", meta.get("CLASSES"))
    colours = dm.get("palette", meta.get("PALETTE"))
    names = [str(c) for c in listed] if isinstance(listed, (list, tuple)) and listed else None
    try:
        palette = [(int(r), int(g), int(b)) for r, g, b in colours] if colours is not None and len(colours) else None
    except (TypeError, ValueError):
        palette = None
    count = meta.get("num_classes")
    count = count if isinstance(count, int) and count > 0 else (len(names) if names else None)
    return count, names, palette


def _class_info(cfg, raw: dict, checkpoint: str, num_classes: int | None,  # noqa: ANN001
                part: str = "student") -> ClassInfo:
    """The classes of the model in ``raw``, without needing the dataset when anything else says them.

    The count comes from ``--num-classes``, else the checkpoint's meta, else its classifier
    (``decode_head.conv_seg``), else the config's dataset. Names and colours come from the meta, else
    the dataset when it exists and has that many classes; otherwise there are none (default colours).
    """
    from .models import extract_state_dict

    count, names, palette = _meta_classes(raw)
    if num_classes is not None:
        count = num_classes
    if count is None:
        classifier = extract_state_dict(raw, part=part).get("decode_head.conv_seg.weight")
        count = int(classifier.shape[0]) if classifier is not None else None
    if names is not None and len(names) == count:
        return ClassInfo(count, names, palette if palette is not None and len(palette) == count else None, True)
    root = Path(cfg.data.root)
    if root.exists():
        ds = _dataset_meta(cfg)
        if count is None or ds.num_classes == count:
            return ClassInfo(ds.num_classes, list(ds.classes), list(ds.palette))
    if count is None:
        raise UserError(f"cannot tell how many classes {checkpoint} predicts: it records no dataset_meta, has no "
                        f"decode_head.conv_seg, and data.root {root} does not exist; pass --num-classes N")
    print(f"note: {checkpoint} records no class names and the config's dataset ({root}) does not give "
          f"{count} classes; unnamed classes, default colours", file=sys.stderr)
    return ClassInfo(count)


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.distributed import pick_device
    from .evaluation.predict import predict
    from .models import read_checkpoint

    if (args.input is None) == (args.split is None):
        raise UserError("predict needs exactly one of INPUT (an image or a folder) or --split NAME")
    _check_sizes(args)
    if not 0 <= args.opacity <= 1:
        raise UserError(f"--opacity must be in [0, 1], got {args.opacity}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file; predict writes into a folder: choose a folder path")
    args.overrides = list(args.overrides) + _eval_overrides(args)
    cfg = _config(args)
    raw = read_checkpoint(args.checkpoint)
    if args.split:  # the split's images come from the dataset, and so do the classes
        ds = _dataset_meta(cfg, args.split)
        inputs, info = ds, ClassInfo(ds.num_classes, list(ds.classes), list(ds.palette))
    else:
        inputs, info = args.input, _class_info(cfg, raw, args.checkpoint, args.num_classes, args.part)
    model = _load_model(args.model or cfg.student.model, info.num_classes, args.checkpoint, args.part, raw=raw)
    del raw
    device = pick_device(cfg.train.device)
    outputs = predict(model.to(device), inputs, args.out, info.palette, device=device,
                      mode=cfg.eval.mode, crop_size=cfg.eval.crop_size, stride=cfg.eval.stride, flip=cfg.eval.flip,
                      scales=cfg.eval.scales, eval_scale=cfg.data.eval_scale, opacity=args.opacity,
                      progress=not args.no_progress, overwrite=args.overwrite,
                      # the config's dataset (images and labels) is never an output folder, even with --input
                      protected=[cfg.data.root] if Path(cfg.data.root).is_dir() else [])
    print(f"wrote {len(outputs) // 2} predictions (index PNG + overlay) to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .fileio import check_writable
    from .models import read_checkpoint
    from .models.export import export_onnx, export_student

    cfg = _config(args)
    _check_sizes(args)
    check_writable(args.out, "--out")
    if args.onnx:
        check_writable(args.onnx, "--onnx")
    info = _class_info(cfg, read_checkpoint(args.checkpoint), args.checkpoint, args.num_classes)
    # Names the checkpoint records are kept by export_student itself; the dataset's are added when it has none.
    out = export_student(args.checkpoint, args.out, args.model or cfg.student.model, info.num_classes,
                         classes=None if info.from_checkpoint else info.classes,
                         palette=None if info.from_checkpoint else info.palette)
    print(f"student-only checkpoint: {out}")
    if args.onnx:
        model = _load_model(args.model or cfg.student.model, info.num_classes, str(out))
        size = tuple(args.size) if args.size else tuple(cfg.data.crop_size)
        print(f"ONNX ({size[0]}x{size[1]}, checked against onnxruntime when installed): "
              f"{export_onnx(model, args.onnx, size)}")
    return 0


def cmd_viz_channels(args: argparse.Namespace) -> int:
    from .data import read_image
    from .distill.viz import channel_softmax_figure
    from .fileio import check_writable
    from .models import read_checkpoint

    cfg = _config(args)
    if cfg.teacher is None:
        raise UserError(f"{args.config} names no teacher; viz-channels compares a teacher with a student")
    _check_sizes(args)
    check_writable(args.out, "--out")
    raw = read_checkpoint(args.checkpoint)
    info = _class_info(cfg, raw, args.checkpoint, args.num_classes)
    teacher = _load_model(cfg.teacher.model, info.num_classes, args.teacher_checkpoint or cfg.teacher.checkpoint,
                          args.teacher_part)
    student = _load_model(cfg.student.model, info.num_classes, args.checkpoint, raw=raw)
    cwd = [t for t in cfg.distill.losses if t.type == "cwd"]
    tau, tap = (cwd[0].tau, cwd[0].teacher) if cwd else (1.0, "decode_head.conv_seg")
    fig = channel_softmax_figure(teacher, student, read_image(args.image), args.out, tau=tau, tap=tap,
                                 class_names=info.classes, input_size=tuple(args.size) if args.size else None)
    print(f"figure: {fig.path}  (CWD on these channels: {fig.loss:.4f})")
    return 0


def _check_sizes(args: argparse.Namespace) -> None:
    """``--size H W`` and ``--num-classes N``, where a command has them, must be positive."""
    size = getattr(args, "size", None)
    if size is not None and not all(v > 0 for v in size):
        raise UserError(f"--size must be two positive numbers H W, got {' '.join(map(str, size))}")
    classes = getattr(args, "num_classes", None)
    if classes is not None and classes <= 0:
        raise UserError(f"--num-classes must be a positive number, got {classes}")


# ---- info --------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from .models import build_segmentor, model_info

    _check_sizes(args)
    model = build_segmentor(args.model, args.num_classes)
    print(model_info(model, args.model, tuple(args.size)).table())
    return 0


# ---- prepare -------------------------------------------------------------------------------------


def cmd_prepare_cityscapes(args: argparse.Namespace) -> int:
    from .data.prepare import prepare_cityscapes

    print(prepare_cityscapes(args.data_root, nproc=args.nproc, force=args.force, progress=not args.no_progress)
          .summary())
    return 0


def cmd_prepare_cache(args: argparse.Namespace) -> int:
    from .data.prepare import prepare_cache

    print(prepare_cache(args.config, args.overrides, nproc=args.nproc, split=args.split,
                        progress=not args.no_progress, force=args.force).summary())
    return 0


# ---- bench ---------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.report import run_bench_command

    return run_bench_command(args)


# ---- demo --------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.work_dir), quick=args.quick, progress=not args.no_progress)
    return 0


# ---- parser ------------------------------------------------------------------------------------


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value",
                   help="config overrides, e.g. optim.lr=0.005 train.iters=1000")


_NUM_CLASSES_HELP = ("classes of the model (default: the checkpoint's meta or classifier, else the config's dataset; "
                     "the dataset is not needed when the checkpoint says it)")


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes print one line, like every other user error (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="segdistill", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model, or distill one when the config names a teacher")
    _add_config_args(p)
    p.add_argument("--work-dir", help="run folder (default: the config's work_dir or runs/<name>)")
    p.add_argument("--resume", nargs="?", const=True, default=True, metavar="CKPT",
                   help="resume (default: from the newest checkpoint in the run folder; or from CKPT)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to continue an existing run folder")
    p.add_argument("--accept-config-change", action="store_true",
                   help="resume even though the config changed in a way that changes the run (model, data, batch, "
                        "schedule, optimizer, losses, seed); the change is recorded in metrics.jsonl")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint: per-class IoU/Acc, mIoU, mAcc, aAcc")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or URL (mmseg, mmrazor or ours)")
    p.add_argument("--model", help="model name (default: the config's student.model)")
    p.add_argument("--part", choices=["student", "teacher"], default="student",
                   help="which network of an mmrazor distillation checkpoint")
    p.add_argument("--split", help="dataset split (default: data.val_split)")
    p.add_argument("--mode", choices=["whole", "slide"], help="inference mode (default: eval.mode)")
    p.add_argument("--tta", action="store_true", help="flip + scales 0.5..1.75, as mmseg's aug test")
    p.add_argument("--out", help="also write the metrics as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="colour masks and overlays for an image, a folder or a dataset split")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="model checkpoint (file or URL)")
    p.add_argument("--input", help="an image file or a folder of images")
    p.add_argument("--split", help="predict a split of the config's dataset instead")
    p.add_argument("--out", required=True, help="output folder (never an input folder)")
    p.add_argument("--model", help="model name (default: the config's student.model)")
    p.add_argument("--part", choices=["student", "teacher"], default="student")
    p.add_argument("--mode", choices=["whole", "slide"])
    p.add_argument("--tta", action="store_true", help="flip + multi-scale test-time augmentation")
    p.add_argument("--opacity", type=float, default=0.5, help="mask opacity in the overlays")
    p.add_argument("--overwrite", action="store_true", help="replace predictions that already exist in --out")
    p.add_argument("--num-classes", type=int, help=_NUM_CLASSES_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="student-only checkpoint (mmseg-loadable) and optional ONNX")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="a training, mmrazor or mmseg checkpoint")
    p.add_argument("--out", required=True, help="the student-only .pth to write")
    p.add_argument("--model", help="model name (default: the config's student.model)")
    p.add_argument("--onnx", help="also export ONNX to this path")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="ONNX input size (default: data.crop_size)")
    p.add_argument("--num-classes", type=int, help=_NUM_CLASSES_HELP)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("viz-channels", help="teacher vs student channel-wise softmax maps (what CWD aligns)")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="the student checkpoint")
    p.add_argument("--teacher-checkpoint", help="the teacher checkpoint (default: teacher.checkpoint)")
    p.add_argument("--teacher-part", choices=["student", "teacher"], default="student",
                   help="'teacher' to read the teacher out of an mmrazor distillation checkpoint")
    p.add_argument("--image", required=True, help="the image to visualise")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize the image for the forward")
    p.add_argument("--num-classes", type=int, help=_NUM_CLASSES_HELP)
    p.set_defaults(func=cmd_viz_channels)

    p = sub.add_parser("info", help="parameters per part and FLOPs of a model")
    p.add_argument("model", help="model name, e.g. pspnet_r18-d8")
    p.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    p.add_argument("--num-classes", type=int, default=19)
    p.set_defaults(func=cmd_info)

    prepare = sub.add_parser("prepare", help="prepare a dataset for training (Cityscapes: polygons -> "
                                             "labelTrainIds; the decoded-image cache)")
    kinds = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    p = kinds.add_parser("cityscapes", help="write *_gtFine_labelTrainIds.png and train/val/test.txt, "
                                            "like mmseg's converter")
    p.add_argument("data_root", metavar="DATA_ROOT", help="folder holding gtFine/ and leftImg8bit/")
    p.add_argument("--nproc", type=int, default=8, help="parallel processes (default 8)")
    p.add_argument("--force", action="store_true", help="rewrite labels that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=cmd_prepare_cityscapes)
    p = kinds.add_parser("cache", help="decode the config's training images and labels once into data.cache "
                                       "(raw uint8, read by the workers instead of decoding)")
    _add_config_args(p)
    p.add_argument("--nproc", type=int, default=8, help="parallel processes (default 8)")
    p.add_argument("--split", help="the split to cache (default: data.train_split)")
    p.add_argument("--force", action="store_true", help="rewrite entries that are up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=cmd_prepare_cache)

    p = sub.add_parser("demo", help="the whole system on generated street scenes, in minutes on a CPU")
    p.add_argument("--work-dir", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="time a distillation step part by part, or inference latency")
    _add_config_args(p)
    p.add_argument("--mode", choices=["train", "infer", "data"], default="train",
                   help="train: per-step breakdown (default); infer: latency of teacher and student; "
                        "data: the training input pipeline's CPU cost per sample, with and without the cache")
    p.add_argument("--workers", type=int, help="data mode: DataLoader workers for the end-to-end rows "
                                                "(default data.workers; 0 skips them)")
    p.add_argument("--samples", type=int, default=60, help="data mode: samples per measurement (default 60)")
    p.add_argument("--images", type=int, default=24, help="data mode: training images cycled through (default 24)")
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
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segdistill`` console script."""
    parser = build_parser()
    # Overrides may come after options (`train cfg.yaml --work-dir d optim.lr=0.1`), which a
    # positional nargs="*" cannot collect; gather the key=value leftovers here.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"{args.command} takes no key=value overrides: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    from .engine.trainer import TrainingStopped

    try:
        code = int(args.func(args) or 0)
        # Every rank waits for the others, then tears the group down: a rank that exits while a peer
        # is still closing its gloo connections makes that peer abort (SIGABRT).
        from .engine.distributed import barrier, cleanup

        barrier()
        cleanup()
        return code
    except TrainingStopped as stopped:
        # A checkpoint was written; the same command resumes. Not an error worth a traceback.
        print(f"segdistill {args.command}: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    except UserError as e:
        return _fail(args, str(e))
    except KeyboardInterrupt:
        print(f"segdistill {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:
        # Out of memory (host or device) is met, not made: one line with what to lower. Other
        # RuntimeErrors are bugs and keep their traceback.
        if not _is_out_of_memory(e):
            raise
        return _fail(args, f"out of memory ({_first_line(e)}); lower train.batch_size or data.crop_size, evaluate "
                           "large images with eval.mode=slide, or resize the input, then run again")
    except OSError as e:
        # The last line of defence for the environment (a file that vanished, a full disk, a permission):
        # the cause and the file, without a traceback. Known causes have their own UserError already.
        names = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        text = f"{e.strerror}: {names}" if e.strerror and names else e.strerror or _first_line(e)
        return _fail(args, text)


def _fail(args: argparse.Namespace, message: str) -> int:
    """Print ``segdistill CMD: error: <message>`` (the traceback too with ``--debug``) and return exit code 2."""
    if args.debug:
        traceback.print_exc()
    print(f"segdistill {args.command}: error: {_first_line(message)}", file=sys.stderr)
    return 2


def _first_line(err: BaseException | str) -> str:
    """The message of ``err`` on one line: a DataLoader worker's wrapper is undone, and only the first line is kept."""
    from .errors import unwrap_worker_message

    text = unwrap_worker_message(str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or any(
        s in str(err) for s in ("can't allocate memory", "CUDA out of memory", "out of memory"))


if __name__ == "__main__":
    sys.exit(main())
