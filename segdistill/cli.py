"""``segdistill`` command line: subcommands that call the stages; no logic of their own.

A :class:`~segdistill.errors.UserError` anywhere ends the command with one line on stderr and exit
code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

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
    result = train(cfg, work_dir, resume=resume)
    if result.metrics is not None:
        print(result.metrics.table())
    print(f"run folder: {work_dir}")
    return 0


# ---- eval --------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .data import EvalSet, build_dataset, build_eval_pipeline
    from .engine.distributed import init_distributed
    from .evaluation import evaluate
    from .fileio import atomic_write_text
    from .models import build_segmentor, load_checkpoint

    args.overrides = list(args.overrides) + _eval_overrides(args)
    cfg = _config(args)
    env = init_distributed(cfg.train.device)
    ds = build_dataset(cfg.data.kind, cfg.data.root, args.split or cfg.data.val_split)
    model = build_segmentor(args.model or cfg.student.model, ds.num_classes)
    load_checkpoint(model, args.checkpoint, part=args.part)
    model.to(env.device)
    metrics = evaluate(model, EvalSet(ds, build_eval_pipeline(cfg.data.eval_scale)), cfg.eval, env.device,
                       list(ds.classes), rank=env.rank, world_size=env.world_size, workers=cfg.data.workers)
    if env.is_main:
        print(metrics.table())
        if args.out:
            atomic_write_text(args.out, json.dumps(metrics.to_dict(), indent=1))
    return 0


# ---- info --------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from .models import build_segmentor, model_info

    model = build_segmentor(args.model, args.num_classes)
    print(model_info(model, args.model, tuple(args.size)).table())
    return 0


# ---- prepare -----------------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import prepare_cityscapes

    report = prepare_cityscapes(args.data_root, nproc=args.nproc, force=args.force)
    print(report.summary())
    return 0


# ---- demo --------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.work_dir), quick=args.quick)
    return 0


# ---- parser ------------------------------------------------------------------------------------


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value",
                   help="config overrides, e.g. optim.lr=0.005 train.iters=1000")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segdistill", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model, or distill one when the config names a teacher")
    _add_config_args(p)
    p.add_argument("--work-dir", help="run folder (default: the config's work_dir or runs/<name>)")
    p.add_argument("--resume", nargs="?", const=True, default=True, metavar="CKPT",
                   help="resume (default: from the newest checkpoint in the run folder; or from CKPT)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to continue an existing run folder")
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
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="parameters per part and FLOPs of a model")
    p.add_argument("model", help="model name, e.g. pspnet_r18-d8")
    p.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    p.add_argument("--num-classes", type=int, default=19)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prepare", help="prepare a dataset (Cityscapes polygons -> labelTrainIds)")
    psub = p.add_subparsers(dest="dataset", required=True)
    pc = psub.add_parser("cityscapes", help="write *_gtFine_labelTrainIds.png for every polygon file")
    pc.add_argument("data_root", help="folder holding leftImg8bit/ and gtFine/")
    pc.add_argument("--nproc", type=int, default=8, help="parallel processes")
    pc.add_argument("--force", action="store_true", help="convert again even where the output exists")
    pc.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="the whole system on generated street scenes, in minutes on a CPU")
    p.add_argument("--work-dir", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.set_defaults(func=cmd_demo)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Subcommands contributed by other modules: each adds its parser and sets ``func``.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


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
        return int(args.func(args) or 0)
    except TrainingStopped as stopped:
        # A checkpoint was written; the same command resumes. Not an error worth a traceback.
        print(f"segdistill {args.command}: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"segdistill {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segdistill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
