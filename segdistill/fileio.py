"""Atomic file writes: a reader never sees a half-written checkpoint, label or prediction."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

#: The names :func:`atomic_path` gives its temporary files: ``.<stem>.<8 random characters>.tmp<suffix>``
#: (``tempfile.mkstemp``'s random part is 8 characters of ``[a-z0-9_]``).
TEMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    Write the whole file to the yielded path (any writer that takes a path works: ``torch.save``,
    ``cv2.imwrite``, ``PIL.Image.save``). If the body raises, the temporary file is removed and
    ``path`` is left as it was. The rename is atomic on POSIX because both live in one folder.

    A destination that cannot take the file (a folder, under a file, read-only, no permission, a full
    disk: an OSError of :data:`WRITE_ERRNOS` or torch.save's errno-less RuntimeError) is a one-line
    :class:`~segdistill.errors.UserError` naming ``path`` and the cause; anything else propagates.
    """
    path = Path(path)
    check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Keep the real suffix last so writers that pick a format from the extension still work. The name
        # is what TEMP_RE matches: a killed writer's leftovers can be recognised and removed later.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as err:
        raise UserError(cannot_write_message(path, err)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_write_failure(err):
            raise UserError(cannot_write_message(path, err)) from err
        raise


#: errno values that say the destination cannot take the file (not a network or a reader failure).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR,
                          errno.ENOTDIR, errno.EFBIG, errno.EIO, errno.ENAMETOOLONG})
#: What torch.save's C++ writer says when the underlying write fails (ENOSPC among others); it keeps no errno.
_TORCH_WRITE_FAILURES = ("unexpected pos", "PytorchStreamWriter failed", "file write failed", "iostream error")
#: Below this many free bytes a failed write is put down to a full disk.
FULL_DISK_BYTES = 64 << 20


def is_write_failure(err: BaseException) -> bool:
    """Whether ``err`` (raised while writing a file) says the file could not be written: an OSError with a
    write-related errno, or torch.save's errno-less RuntimeError."""
    if isinstance(err, OSError):
        return err.errno in WRITE_ERRNOS
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILURES)


def _free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def cannot_write_message(path: Path, err: BaseException) -> str:
    """One line naming ``path`` and why it could not be written, with what to do."""
    free = _free_bytes(path.parent)
    full = free is not None and free < FULL_DISK_BYTES
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT) or (
            not isinstance(err, OSError) and full):
        free_text = f" ({free / 2**20:.0f} MiB free)" if free is not None else ""
        return (f"cannot write {path}: no space left on the device{free_text}; "
                "free some space or choose a folder on another disk")
    if isinstance(err, OSError):
        cause = err.strerror or str(err)
        if err.errno == errno.EROFS:
            return f"cannot write {path}: the file system is read-only; choose a writable folder"
        if err.errno in (errno.EACCES, errno.EPERM):
            return f"cannot write {path}: permission denied; choose a folder you can write to"
        if err.errno == errno.ENOTDIR:
            return f"cannot write {path}: a part of its folder is a file, not a folder; choose another path"
        if err.errno == errno.EISDIR:
            return f"cannot write {path}: it is a folder; give a file name"
        return f"cannot write {path}: {cause}; choose another path"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    free_text = f"; {free / 2**20:.0f} MiB free on that disk" if free is not None else ""
    return f"cannot write {path}: the write failed ({first}){free_text}; check the disk or choose another folder"


def check_writable(path: str | os.PathLike, what: str = "") -> Path:
    """Refuse, in one line, an output file that cannot be written, before hours of work produce it.

    ``path`` must not be a folder, nothing above it may be a file, and the nearest existing folder above
    it must be writable (its missing folders are created when the file is written). ``what`` names the
    output in the message (e.g. ``"--out"``). Returns ``path``.
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise UserError(f"cannot write {label}: it is a folder; give a file name")
    folder = path.parent
    while not folder.exists():
        if folder.is_symlink():
            raise UserError(f"cannot write {label}: {folder} is a broken link; choose another path")
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {label}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {label}: the folder {folder} is not writable (permission denied or "
                        "read-only); choose another path")
    return path


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_path` that a killed process left in ``folder`` (not below it).

    Only names that :data:`TEMP_RE` matches are touched. Call it only where no other process of ours
    can be writing at the same time (a run folder whose lock this process holds). Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if TEMP_RE.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; without this a crash can still lose it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
