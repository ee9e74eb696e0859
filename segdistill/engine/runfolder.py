"""The guard of a run folder: one live run per folder, and a folder that disappears is noticed.

``segdistill train`` holds an exclusive ``fcntl.flock`` on ``<run folder>/.segdistill.lock`` while it
trains (rank 0 only). A second run on the same folder is refused in one line instead of interleaving
its checkpoints and logs with the first one's. The kernel drops the lock when the holding process ends
in any way, SIGKILL and power loss included, so a crashed run never leaves the folder locked. The lock
file itself stays (an empty-looking file naming the last holder); it is not the lock.

Processes forked from the holder (DataLoader workers) close their copy of the lock's descriptor right
after the fork: otherwise a worker that outlives a killed trainer for a few seconds would keep the
folder locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import UserError

LOCK_NAME = ".segdistill.lock"

_HELD_FDS: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunFolderLock:
    """An exclusive lock on a run folder, held from :meth:`acquire` until :meth:`release` or process exit."""

    def __init__(self, work_dir: Path, fd: int | None) -> None:
        self.work_dir = work_dir
        self.path = work_dir / LOCK_NAME
        self._fd = fd
        self._id = os.fstat(fd)[1:3] if fd is not None else None  # (inode, device) of the lock file we hold

    @classmethod
    def acquire(cls, work_dir: Path) -> RunFolderLock:
        """Lock ``work_dir`` (which must exist) or raise :class:`UserError` naming the live run that holds it."""
        path = work_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                try:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                finally:
                    os.close(fd)
                raise UserError(f"run folder {work_dir} is in use by another segdistill train ({holder or 'unknown'}); "
                                "wait for it to end or stop it, or choose another --work-dir") from None
            os.close(fd)
            # A filesystem without flock support: train without the guard rather than not at all.
            print(f"warning: cannot lock the run folder {work_dir} ({e.strerror}); a second run started in it "
                  "would not be refused", file=sys.stderr)
            return cls(work_dir, None)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        _HELD_FDS.add(fd)
        return cls(work_dir, fd)

    def intact(self) -> bool:
        """Whether the run folder is still where it was: the lock file we hold is still at its path.

        False when the folder (or the lock file) was deleted, moved or replaced after :meth:`acquire`.
        """
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return self._id is None or (st.st_ino, st.st_dev) == self._id

    def release(self) -> None:
        """Unlock (also done by the kernel when the process ends)."""
        if self._fd is not None:
            _HELD_FDS.discard(self._fd)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
            self._fd = None
