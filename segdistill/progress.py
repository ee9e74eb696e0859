"""Progress of every long command (eval, predict, prepare, the demo's phases, the benchmark's variants).

One library, tqdm: on a terminal a bar with rate and ETA; when stderr is not a terminal (a log file,
CI, SLURM) plain lines every ``interval`` seconds instead of carriage returns; nothing at all on
ranks other than 0 or when disabled (``--no-progress``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class _Lines:
    """tqdm's counters and formatting, printed as whole lines (no carriage returns) for logs."""

    def __init__(self, total: int | None, desc: str, unit: str, interval: float) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.n = 0
        self.postfix = ""
        self._start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval or (self.total is not None and self.n >= self.total):
            self._last = now
            self._print(now)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def _print(self, now: float) -> None:
        line = tqdm.format_meter(self.n, self.total, now - self._start, prefix=self.desc, unit=self.unit,
                                 postfix=self.postfix or None, ncols=0)
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Nothing to clear: every line is already complete."""


class _Off:
    """A bar that does nothing (``--no-progress``, or ranks other than 0)."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True,
                 interval: float = 30.0) -> Iterator[Any]:
    """A progress bar on stderr; ``bar.update(n)`` as work is done, ``bar.set_postfix_str(text)``.

    A tqdm bar on a terminal, tqdm-formatted lines every ``interval`` seconds (and at the end)
    otherwise, nothing when disabled or on ranks other than 0.
    """
    bar: Any
    if not enabled or _rank() != 0:
        bar = _Off()
    elif sys.stderr.isatty():
        bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)
    else:
        bar = _Lines(total, desc, unit, interval)
    try:
        yield bar
    finally:
        bar.close()
