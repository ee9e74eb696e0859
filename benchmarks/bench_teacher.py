"""Frozen-teacher fast paths against a plain float32 eval forward (what the reference pays per step).

    python benchmarks/bench_teacher.py --model pspnet_r101-d8 --batch 2 --size 256 512

Prints a markdown table: median forward time of each variant and its speed-up over the plain
float32 ``model(x)`` in eval mode (both heads, as mmrazor's teacher computes them).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from segdistill.distill.teacher import FrozenTeacher
from segdistill.models import build_segmentor

VARIANTS: dict[str, dict[str, bool]] = {
    "taps only (fp32)": {},
    "+ channels_last": {"channels_last": True},
    "+ fold_bn": {"fold_bn": True},
    "+ bf16": {"bf16": True},
    "all (channels_last + fold_bn + bf16)": {"channels_last": True, "fold_bn": True, "bf16": True},
    "all + compile": {"channels_last": True, "fold_bn": True, "bf16": True, "compile": True},
}


def timed(fn, x: torch.Tensor, warmup: int, repeats: int) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pspnet_r101-d8")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    base = build_segmentor(args.model, 19).eval()
    x = torch.randn(args.batch, 3, *args.size)

    with torch.no_grad():
        plain = timed(lambda v: base(v), x, 1, args.repeats)
    rows = [("plain float32 eval forward (both heads)", plain)]
    for name, switches in VARIANTS.items():
        if args.no_compile and switches.get("compile"):
            continue
        teacher = FrozenTeacher(copy.deepcopy(base), ["decode_head.conv_seg"], **switches)
        rows.append((name, timed(teacher, x, 2 if switches.get("compile") else 1, args.repeats)))
    print(f"{args.model}, input {args.batch}x3x{args.size[0]}x{args.size[1]}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| teacher forward | median ms | speed-up |")
    print("| --- | ---: | ---: |")
    for name, t in rows:
        print(f"| {name} | {t * 1e3:.0f} | {plain / t:.2f}x |")


if __name__ == "__main__":
    main()
