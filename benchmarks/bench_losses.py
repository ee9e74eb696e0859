"""Cost of every distillation loss of segdistill, forward + backward, on a logit map and a feature map.

Usage::

    python benchmarks/bench_losses.py [--repeats 10] [--threads 2]

Prints a markdown table: median and best milliseconds of one forward + backward (student with grad,
teacher without, as in distillation), after one warm-up run; the losses run in turn so that
background load affects them alike. MGD includes its connector (align conv + mask + generation
convs), which is what an MGD term costs per step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from segdistill.distill.connectors import MGDConnector
from segdistill.distill.losses import build_loss


def _cases(channels: int) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    cases: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "cwd (tau 1)": build_loss("cwd", tau=1.0, loss_weight=5.0),
        "cwd + standardize": build_loss("cwd", tau=1.0, loss_weight=5.0, standardize=True),
        "kd (tau 1)": build_loss("kd", tau=1.0, loss_weight=1.0),
        "dist (tau 1)": build_loss("dist", tau=1.0, loss_weight=1.0),
        "dist + standardize": build_loss("dist", tau=1.0, loss_weight=1.0, standardize=True),
    }
    connector = MGDConnector(channels, channels, lambda_mgd=0.65)
    mgd = build_loss("mgd", alpha_mgd=2e-5, loss_weight=1.0)
    cases["mgd (connector + loss)"] = lambda s, t: mgd(connector(s), t)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| map (N,C,H,W) | loss | median ms | min ms |\n| --- | --- | ---: | ---: |")
    for shape in ((2, 19, 64, 128), (2, 512, 64, 128)):
        g = torch.Generator().manual_seed(0)
        teacher = torch.randn(*shape, generator=g)
        cases = _cases(shape[1])
        times: dict[str, list[float]] = {name: [] for name in cases}
        for rep in range(args.repeats + 1):
            for name, fn in cases.items():
                student = torch.randn(*shape, generator=g, requires_grad=True)
                start = time.perf_counter()
                fn(student, teacher).backward()
                if rep:  # the first round is the warm-up
                    times[name].append((time.perf_counter() - start) * 1e3)
        for name, ms in times.items():
            print(f"| {shape} | {name} | {statistics.median(ms):.1f} | {min(ms):.1f} |")


if __name__ == "__main__":
    main()
