"""Time and memory of the CWD loss, forward + backward, against textbook formulations.

Usage::

    python benchmarks/bench_cwd_loss.py [--repeats 10] [--threads 2] [--tau 4]

For each map shape and each implementation it prints, as a markdown table:

* ``median ms`` / ``min ms``: wall time of one forward + backward (student requires grad,
  teacher does not, as in distillation), after one warm-up run, the implementations run in
  turn so that background load affects them alike;
* ``saved``: bytes of the distinct tensors autograd keeps for backward, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (what stays alive between forward and backward,
  i.e. what a real network pays for on top of its own activations);
* ``peak``: peak of the bytes allocated by torch's CPU allocator from the start of the forward
  pass to the end of the backward pass (inputs excluded, the student gradient included), rebuilt
  from the allocation events of ``torch.profiler`` with ``profile_memory=True``;
* ``rel. err vs fp64``: |loss - ref| / ref, the relative difference from a float64 computation, as a sanity check.

Implementations: ``segdistill`` (this project's ``ChannelWiseDivergence``), ``mmrazor formula``
(the reference's expression: softmax and log-softmax of the teacher, log-softmax of the
student, two products), ``softmax-log`` (softmax of both maps, then ``log``, multiply, sum) and
``kl_div`` (``log_softmax`` of both + ``F.kl_div(log_target=True)``, plain autograd).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from segdistill.distill.losses import ChannelWiseDivergence

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def softmax_log(tau: float) -> LossFn:
    """Textbook formulation: probabilities first, then their logs."""

    def fn(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = s.shape
        p_s = torch.softmax(s.reshape(n * c, h * w) / tau, dim=1)
        p_t = torch.softmax(t.reshape(n * c, h * w) / tau, dim=1)
        return torch.sum(p_t * (torch.log(p_t) - torch.log(p_s))) * tau**2 / (n * c)

    return fn


def mmrazor_formula(tau: float) -> LossFn:
    """The reference's expression, ``sum(softmax_T * log_softmax_T - softmax_T * log_softmax_S)``."""

    def fn(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = s.shape
        t2, s2 = t.reshape(-1, h * w) / tau, s.reshape(-1, h * w) / tau
        p_t = torch.softmax(t2, dim=1)
        return torch.sum(p_t * torch.log_softmax(t2, dim=1) - p_t * torch.log_softmax(s2, dim=1)) * tau**2 / (c * n)

    return fn


def kl_div(tau: float) -> LossFn:
    """Log-softmax of both maps and ``F.kl_div`` with a log target, differentiated by autograd."""

    def fn(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = s.shape
        log_p_s = torch.log_softmax(s.reshape(n * c, h * w) / tau, dim=1)
        log_p_t = torch.log_softmax(t.reshape(n * c, h * w) / tau, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) * tau**2 / (n * c)

    return fn


def reference64(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    n, c, h, w = s.shape
    log_p_s = torch.log_softmax(s.double().reshape(n * c, h * w) / tau, dim=1)
    log_p_t = torch.log_softmax(t.double().reshape(n * c, h * w) / tau, dim=1)
    return float((log_p_t.exp() * (log_p_t - log_p_s)).sum() * tau**2 / (n * c))


def saved_bytes(fn: LossFn, s: torch.Tensor, t: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        # Distinct storages only: a tensor saved twice (or a view of another) costs nothing more,
        # and the inputs themselves are not extra memory.
        ptr = x.untyped_storage().data_ptr()
        if ptr not in (s.untyped_storage().data_ptr(), t.untyped_storage().data_ptr()):
            storages[ptr] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = fn(s, t)
    loss.backward()
    s.grad = None
    return sum(storages.values())


def peak_bytes(fn: LossFn, s: torch.Tensor, t: torch.Tensor) -> int:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(s, t).backward()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    s.grad = None
    return peak


def one_run_ms(fn: LossFn, s: torch.Tensor, t: torch.Tensor) -> float:
    s.grad = None
    start = time.perf_counter()
    fn(s, t).backward()
    elapsed = (time.perf_counter() - start) * 1e3
    s.grad = None
    return elapsed


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tau", type=float, default=4.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tau = args.tau
    impls: dict[str, LossFn] = {
        "segdistill": ChannelWiseDivergence(tau=tau),
        "mmrazor formula": mmrazor_formula(tau),
        "softmax-log": softmax_log(tau),
        "kl_div": kl_div(tau),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tau={tau}, "
          f"{args.repeats} forward+backward runs per implementation ({5 * args.repeats} for the small map), "
          "interleaved\n")
    print("| shape (N,C,H,W) | one map MiB | implementation | median ms | min ms | saved MiB | peak MiB "
          "| rel. err vs fp64 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for shape in [(2, 19, 64, 128), (2, 512, 64, 128)]:
        g = torch.Generator().manual_seed(0)
        s = (torch.randn(shape, generator=g) * 5).requires_grad_(True)
        t = torch.randn(shape, generator=g) * 5
        ref = reference64(s.detach(), t, tau)
        one_map = s.numel() * s.element_size()
        times: dict[str, list[float]] = {name: [] for name in impls}
        for fn in impls.values():
            one_run_ms(fn, s, t)  # warm-up
        # Round-robin so that load from other processes on a shared machine hits every
        # implementation alike; the minimum is the least-disturbed run.
        # The small map runs in about a millisecond: more runs for the same confidence.
        repeats = args.repeats * (5 if s.numel() < 2**20 else 1)
        for _ in range(repeats):
            for name, fn in impls.items():
                times[name].append(one_run_ms(fn, s, t))
        for name, fn in impls.items():
            err = abs(float(fn(s, t).detach()) - ref) / abs(ref)
            s.grad = None
            saved = saved_bytes(fn, s, t)
            peak = peak_bytes(fn, s, t)
            ms_med, ms_min = statistics.median(times[name]), min(times[name])
            print(f"| {shape} | {mib(one_map)} | {name} | {ms_med:.1f} | {ms_min:.1f} | {mib(saved)} | {mib(peak)} "
                  f"| {err:.1e} |", flush=True)

if __name__ == "__main__":
    main()
