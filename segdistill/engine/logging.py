"""Where a run reports: a console line, ``metrics.jsonl`` (one JSON object per event), TensorBoard."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory of this process, or its peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return rss_kb / 1024


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class RunLogger:
    """Writes every event to ``metrics.jsonl`` and, when installed, TensorBoard; prints log lines.

    Only rank 0 creates one with ``enabled=True``; the others get a silent logger.
    """

    def __init__(self, work_dir: Path, enabled: bool = True, resume_iteration: int | None = None,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = work_dir / "metrics.jsonl"
        self._tb: Any = None
        if not enabled:
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        if resume_iteration is not None and self.path.exists():
            self._truncate_after(resume_iteration)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(work_dir / "tb"), purge_step=resume_iteration)
            except ImportError:
                self._tb = None

    def _truncate_after(self, iteration: int) -> None:
        # A resumed run repeats the iterations after its checkpoint; drop their old records so the
        # file describes one consistent run.
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("iter", 0) <= iteration:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def log(self, kind: str, iteration: int, values: dict[str, Any], console: str | None = None) -> None:
        """Record one event (``kind`` = train, eval, ...) at ``iteration``."""
        if not self.enabled:
            return
        record = {"kind": kind, "iter": iteration, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        # TensorBoard's writer thread reopens its file by name: in a run folder deleted under the run it
        # would die with a traceback, so it gets nothing more (the trainer then stops in one line).
        if self._tb is not None and Path(self._tb.log_dir).is_dir():
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, iteration)
        if console:
            print(console, file=sys.stdout, flush=True)

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None and Path(self._tb.log_dir).is_dir():
                self._tb.close()
