"""Timing helpers of the benchmark: device barriers, medians and peak memory per window of work."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a barrier a region's time lands in the next one.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def _rss_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a window of work: CUDA max allocated, or the process's peak resident set on CPU.

    On Linux the RSS high-water mark is reset by writing ``5`` to ``/proc/self/clear_refs``, so each
    window gets its own peak; elsewhere the lifetime peak (``ru_maxrss``) is the best available.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "CUDA max allocated" if device.type == "cuda" else "CPU peak RSS"
        self.baseline = 0.0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind = "CPU lifetime peak RSS"
        self.baseline = _rss_mb("VmRSS") or 0.0

    def peak(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _rss_mb("VmHWM")
        return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


