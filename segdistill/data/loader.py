"""DataLoader worker set-up shared by training and evaluation.

A stop signal sent to a whole process group (Ctrl-C in a terminal, ``kill -TERM -PGID``, SLURM's
``scancel`` or preemption, which signal every process of a job step) reaches the DataLoader workers
as well as the main process. By default a worker dies on it, and the main process then fails with
"DataLoader worker killed by signal" before it can write its stop checkpoint. Workers therefore
leave SIGINT and SIGTERM to the main process, which saves, then shuts its workers down as usual.
"""

from __future__ import annotations

import os
import signal
import threading

import cv2


def prepare_worker_fork() -> None:
    """Call in the main process before creating a DataLoader with workers.

    OpenCV's own thread pool in every worker oversubscribes the cores; setting it inside a worker can
    hang forked workers once the parent has used OpenCV, so it is set here, once, and inherited.
    """
    cv2.setNumThreads(1)


def _exit_on_parent_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        # The parent terminates a worker that did not stop when asked: obey it. Anyone else (a
        # group-wide signal) is the main process's business; it will stop the workers itself.
        if info.si_pid == parent:
            os._exit(0)


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for every loader: ignore SIGINT, and SIGTERM unless the parent sends it."""
    del worker_id  # every worker is set up the same way
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):  # POSIX; Windows has no process groups to signal
        # Blocked in this (the only) thread, so the waiting thread alone receives SIGTERM and can see
        # who sent it; a plain SIG_IGN would also ignore the parent's terminate().
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_exit_on_parent_sigterm, args=(os.getppid(),), daemon=True,
                         name="sigterm-from-parent").start()
