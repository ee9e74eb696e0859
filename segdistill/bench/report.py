"""Markdown tables of the benchmark and the ``segdistill bench`` command handler."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..config import load_config
from ..engine.distributed import pick_device
from ..errors import UserError
from ..fileio import atomic_write_text
from .infer import InferRow, bench_infer
from .timing import median
from .train import TrainBench, bench_train, compare_variants, variants


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}" if seconds >= 0.01 else f"{seconds * 1e3:.2f}"


def train_table(results: Sequence[TrainBench]) -> str:
    """Markdown: one row per benchmark with the median parts (ms), throughput, memory and FLOPs."""
    lines = [
        "| variant | data | teacher fwd | forward (student + terms) | backward | optimizer | step | images/s "
        "| peak MB (delta) | GFLOP/step | GFLOP/s | teacher alone + student alone | step / unavoidable |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.label} | {_ms(r.part('data'))} | {_ms(r.part('teacher'))} | {_ms(r.part('forward'))} "
            f"| {_ms(r.part('backward'))} | {_ms(r.part('optimizer'))} | {_ms(r.step_s)} | {r.images_per_s:.2f} "
            f"| {r.peak_memory_mb:.0f} ({r.memory_delta_mb:+.0f}) | {r.flops['total'] / 1e9:.1f} "
            f"| {r.flops_per_s / 1e9:.1f} | {_ms(median(r.teacher_alone))} + {_ms(median(r.student_alone))} "
            f"| {r.overhead_ratio:.3f} |")
    return "\n".join(lines)


def train_summary(results: Sequence[TrainBench]) -> str:
    """The issue's targets in words, under the table."""
    out = []
    for r in results:
        out.append(f"- {r.label}: distillation step (compute) {_ms(r.part('compute'))} ms / (teacher fwd + student "
                   f"step) {_ms(r.unavoidable_s)} ms = {r.overhead_ratio:.3f} (target <= 1.05); what distillation "
                   f"adds (by difference) {r.distill_s * 1e3:+.1f} ms")
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


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _machine(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "load_average_start": _load_average()}


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
    if args.workers is not None and args.workers < 0:
        raise UserError(f"bench --workers must be >= 0, got {args.workers}")
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
    if args.mode == "data":
        from .data import bench_data

        data = bench_data(cfg, workers=args.workers, samples=args.samples, images=args.images,
                          progress=not args.no_progress)
        print(data.markdown())
        report["data"] = data.to_dict()
    elif args.mode == "infer":
        rows = bench_infer(cfg, iters=args.iters, warmup=args.warmup, num_classes=args.num_classes,
                           compile=not args.no_compile, onnx=not args.no_onnx, device=device)
        print(infer_table(rows))
        report["infer"] = [r.to_dict() for r in rows]
    else:
        kwargs = {"iters": args.iters, "warmup": args.warmup, "synthetic": args.synthetic,
                  "num_classes": args.num_classes, "load_weights": args.load_weights, "device": device}
        if args.compare:
            results = compare_variants(cfg, variants(args.switches), isolate=not args.in_process,
                                       progress=not args.no_progress, **kwargs)
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
