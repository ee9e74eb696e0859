"""A decoded-image cache: every training image and label stored once as raw uint8, read instead of decoded.

Decoding a 2048x1024 PNG costs a worker about 40 ms, more than all of the augmentation after it.
The cache stores what decoding gives (the RGB image exactly as ``cv2.imread`` decodes it, the label
already mapped to train ids and checked) in one file per source file, which a worker maps into
memory (``mmap``) instead of decoding: no copy, no inflate.

Layout: ``FOLDER/<root name>-<hash of the dataset root>/<path of the source below the root>.sdc``,
so one folder can hold the caches of several datasets. An entry file is:

* 8 bytes ``SDCACHE1`` (the digit is the format version), a little-endian uint32 ``n``;
* ``n`` bytes of JSON: kind (``image``/``label``), key (what the decoding depended on: the label
  mapping for labels), the source's absolute path, size and ``mtime_ns`` when it was decoded,
  shape, dtype, the data offset and a CRC-32 of the data;
* zero padding to the data offset (a multiple of 4096), then the raw C-order array.

An entry is used only if everything agrees: magic, JSON, kind and key, the source's path, size and
mtime (else it is *stale*), and the file's length. Its CRC-32 is checked the first time a process
reads it (1-2 ms for a 6 MB image, once per worker and file, so a few epochs' worth of checks over a
whole run). Anything else (a missing, stale, truncated or damaged entry) makes
:meth:`~segdistill.data.datasets.SegDataset.load` decode the source file instead, with a one-line
:class:`CacheWarning`: the cache can make loading faster, never different.

Entries are written to a temporary file beside the target and renamed over it, so a reader (or a
build killed half-way) never sees half an entry; :func:`build_decoded_cache` skips entries that are
up to date, which makes an interrupted build resumable.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import multiprocessing
import os
import shutil
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import UserError
from ..progress import progress_bar

if TYPE_CHECKING:
    from .datasets import SegDataset

__all__ = ["MAGIC", "SUFFIX", "CacheWarning", "DecodedCache", "CacheReport", "build_decoded_cache", "read_entry"]

MAGIC = b"SDCACHE1"
SUFFIX = ".sdc"
_ALIGN = 4096
_PREFIX = len(MAGIC) + 4
_WARN_LIMIT = 10  # cache warnings one process prints before it only counts them
_STALE_TMP_S = 3600.0  # a temporary file this old belongs to a build that died


class CacheWarning(UserWarning):
    """A cache entry could not be used; the source file was decoded instead (the pixels are right)."""


@dataclass(frozen=True)
class _Header:
    kind: str
    key: str
    source: str
    size: int
    mtime_ns: int
    shape: tuple[int, ...]
    dtype: str
    offset: int
    crc32: int


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _parse_header(buf: bytes | mmap.mmap, file_size: int) -> _Header | str:
    """The entry's header, or why it is unusable."""
    if file_size < _PREFIX or buf[: len(MAGIC)] != MAGIC:
        return "not a cache entry (bad magic)"
    n = int.from_bytes(buf[len(MAGIC):_PREFIX], "little")
    if _PREFIX + n > file_size:
        return "truncated header"
    try:
        meta = json.loads(bytes(buf[_PREFIX:_PREFIX + n]))
        header = _Header(kind=str(meta["kind"]), key=str(meta["key"]), source=str(meta["source"]),
                         size=int(meta["size"]), mtime_ns=int(meta["mtime_ns"]),
                         shape=tuple(int(v) for v in meta["shape"]), dtype=str(meta["dtype"]),
                         offset=int(meta["offset"]), crc32=int(meta["crc32"]))
    except (ValueError, KeyError, TypeError):
        return "damaged header"
    if header.dtype != "uint8" or header.offset < _PREFIX + n or any(v < 0 for v in header.shape):
        return "damaged header"
    if header.offset + int(np.prod(header.shape, dtype=np.int64)) != file_size:
        return f"wrong length ({file_size} bytes for shape {list(header.shape)}; truncated?)"
    return header


def read_entry(path: str | os.PathLike) -> tuple[dict[str, Any], np.ndarray]:
    """Read one entry file whatever its source: ``(header as a dict, array)``. For tools and tests.

    Raises ``ValueError`` saying why when the file is not a valid entry (the CRC-32 is checked).
    """
    data = Path(path).read_bytes()
    header = _parse_header(data, len(data))
    if isinstance(header, str):
        raise ValueError(f"{path}: {header}")
    payload = memoryview(data)[header.offset:]
    if zlib.crc32(payload) != header.crc32:
        raise ValueError(f"{path}: damaged data (CRC-32 mismatch)")
    return header.__dict__.copy(), np.frombuffer(payload, dtype=np.uint8).reshape(header.shape)


class DecodedCache:
    """The cache of one dataset (one ``root``) inside ``folder``.

    :meth:`read` gives an entry's array or says why it cannot; :meth:`write` stores one. A
    ``DecodedCache`` is cheap, picklable, and keeps per process which entries it has CRC-checked.
    """

    def __init__(self, folder: str | os.PathLike, root: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        digest = hashlib.sha1(str(self.root).encode("utf-8")).hexdigest()[:8]
        self.base = Path(os.path.abspath(self.folder)) / f"{self.root.name or 'root'}-{digest}"
        self._verified: dict[str, tuple[int, int, int]] = {}  # entry path -> (inode, size, mtime_ns) checked
        self._warnings = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_verified": {}, "_warnings": 0}

    def entry_path(self, source: str | os.PathLike) -> Path:
        """Where the entry of ``source`` lives (whether or not it exists)."""
        src = Path(os.path.abspath(source))
        try:
            rel = src.relative_to(self.root).as_posix()
        except ValueError:  # a source outside the root: a flat name that cannot collide
            rel = "_outside/" + hashlib.sha1(str(src).encode("utf-8")).hexdigest()[:16] + "_" + src.name
        return self.base / (rel + SUFFIX)

    def _check(self, source: Path, kind: str, key: str, header: _Header | str) -> str | None:
        if isinstance(header, str):
            return header
        if header.kind != kind or header.key != key:
            return f"stale (made for {header.kind} {header.key!r}, not {kind} {key!r})"
        if header.source != os.path.abspath(source):
            return f"stale (made from {header.source})"
        try:
            stamp = _stamp(source)
        except OSError:
            return "source unreadable"
        if stamp != (header.size, header.mtime_ns):
            return "stale (the source file changed since it was cached)"
        return None

    def status(self, source: str | os.PathLike, kind: str, key: str) -> str | None:
        """``None`` if the entry of ``source`` is up to date (header, stamps, length; no CRC), else why not."""
        path = self.entry_path(source)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(_PREFIX)
                n = int.from_bytes(head[len(MAGIC):], "little") if len(head) == _PREFIX else 0
                head += f.read(min(n, 1 << 20))
        except FileNotFoundError:
            return "missing"
        except OSError as err:
            return f"unreadable ({err.strerror})"
        return self._check(Path(source), kind, key, _parse_header(head, size))

    def read(self, source: str | os.PathLike, kind: str, key: str) -> tuple[np.ndarray | None, str | None]:
        """``(read-only array, None)`` from a valid entry, or ``(None, reason)``: missing, stale, or bad."""
        path = self.entry_path(source)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None, "missing"
        except OSError as err:
            return None, f"unreadable ({err.strerror})"
        try:
            st = os.fstat(fd)
            if st.st_size < _PREFIX:
                return None, "not a cache entry (bad magic)"
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as err:
            return None, f"unreadable ({err})"
        finally:
            os.close(fd)
        header = _parse_header(mapped, st.st_size)
        problem = self._check(Path(source), kind, key, header)
        if problem is not None:
            return None, problem
        assert isinstance(header, _Header)
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        key_path = str(path)
        if self._verified.get(key_path) != identity:
            with memoryview(mapped) as view:
                crc = zlib.crc32(view[header.offset:])
            if crc != header.crc32:
                return None, "damaged data (CRC-32 mismatch)"
            self._verified[key_path] = identity
        count = st.st_size - header.offset
        return np.frombuffer(mapped, dtype=np.uint8, count=count, offset=header.offset).reshape(header.shape), None

    def write(self, source: str | os.PathLike, array: np.ndarray, kind: str, key: str,
              stamp: tuple[int, int] | None = None) -> int:
        """Store ``array`` (uint8) as the entry of ``source``; returns the bytes written.

        ``stamp`` is the source's ``(size, mtime_ns)`` taken *before* it was decoded (so a file that
        changes while it is being decoded reads as stale); by default it is taken now.
        """
        if array.dtype != np.uint8:
            raise TypeError(f"the decoded cache stores uint8 arrays, got {array.dtype}")
        size, mtime_ns = stamp if stamp is not None else _stamp(Path(source))
        data = np.ascontiguousarray(array)
        meta = {"kind": kind, "key": key, "source": os.path.abspath(source), "size": size, "mtime_ns": mtime_ns,
                "shape": list(data.shape), "dtype": "uint8", "offset": 0, "crc32": zlib.crc32(data.data)}
        # The offset is part of the JSON, so size the JSON with a generous offset first.
        meta["offset"] = _ALIGN * (1 << 20)
        offset = -(-(_PREFIX + len(json.dumps(meta).encode("utf-8"))) // _ALIGN) * _ALIGN
        meta["offset"] = offset
        text = json.dumps(meta).encode("utf-8")
        path = self.entry_path(source)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + len(text).to_bytes(4, "little") + text)
                f.write(b"\0" * (offset - _PREFIX - len(text)))
                f.write(data.data.cast("B"))
            # No fsync: a crash can leave a renamed file whose data never reached the disk, but its
            # CRC-32 then fails and the reader decodes the source instead.
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return offset + data.nbytes

    def warn(self, source: str | os.PathLike, reason: str) -> None:
        """One line saying that ``source`` is decoded because its entry is unusable (the first few per process)."""
        self._warnings += 1
        if self._warnings <= _WARN_LIMIT:
            more = "; further cache warnings of this process are not shown" if self._warnings == _WARN_LIMIT else ""
            warnings.warn(f"decoded cache entry of {source} is {reason}: decoding the file instead; "
                          f"`segdistill prepare cache CONFIG` rebuilds the cache in {self.folder}{more}",
                          CacheWarning, stacklevel=3)

    def remove_stale_temporaries(self, older_than_s: float = _STALE_TMP_S) -> int:
        """Delete temporary files left by builds that died (untouched for an hour); returns how many."""
        if not self.base.is_dir():
            return 0
        removed, now = 0, time.time()
        for tmp in self.base.rglob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()
                    removed += 1
            except OSError:
                pass
        return removed


# ---------------------------------------------------------------------------------------------
# Building


@dataclass
class CacheReport:
    """What :func:`build_decoded_cache` found and did."""

    folder: Path
    samples: int  # samples considered
    written: int = 0  # samples whose image and/or label entry this run wrote
    up_to_date: int = 0  # samples whose entries were already valid
    bytes_written: int = 0
    bytes_needed: int = 0  # the estimate printed before the build
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the console."""
        return (f"decoded cache {self.folder}: {self.written} samples written ({_gb(self.bytes_written)}), "
                f"{self.up_to_date} already up to date, {self.samples} in all ({self.seconds:.1f} s)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


_BUILD: dict[str, Any] = {}


def _init_build(dataset: SegDataset, cache: DecodedCache) -> None:
    _BUILD["dataset"], _BUILD["cache"] = dataset, cache


def _build_one(job: tuple[int, bool, bool]) -> tuple[int, str | None]:
    """Decode sample ``i`` and write the entries asked for; ``(bytes written, error line or None)``."""
    i, do_image, do_label = job
    dataset: SegDataset = _BUILD["dataset"]
    cache: DecodedCache = _BUILD["cache"]
    image_path, label_path = dataset.image_path(i), dataset.label_path(i)
    try:
        image_stamp, label_stamp = _stamp(image_path), _stamp(label_path)
        image, label = dataset.decode(i)
        written = 0
        if do_image:
            written += cache.write(image_path, image, "image", dataset.image_key(), image_stamp)
        if do_label:
            written += cache.write(label_path, label, "label", dataset.label_key(), label_stamp)
    except UserError as err:
        return 0, str(err)
    except OSError as err:
        return 0, f"cannot write the decoded cache for {image_path} ({err}); check that the cache folder is writable"
    return written, None


def _entry_bytes(shape: Sequence[int]) -> int:
    return _ALIGN + int(np.prod(shape))


def _image_hw(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size[1], im.size[0]
    except (OSError, SyntaxError, ValueError):
        return None


def build_decoded_cache(dataset: SegDataset, folder: str | os.PathLike, nproc: int = 1, progress: bool = True,
                        indices: Sequence[int] | None = None, force: bool = False,
                        log: Callable[[str], None] | None = print) -> CacheReport:
    """Decode every sample of ``dataset`` (or those in ``indices``) into the cache in ``folder``.

    Entries that are up to date (same source path, size and mtime, same label mapping, right length)
    are skipped unless ``force``, so an interrupted build resumes where it stopped. Before writing,
    ``log`` gets one line with the number of samples to write and the disk space they take; a build
    that would not fit on the disk stops with a :class:`UserError` before it starts. ``nproc``
    processes decode in parallel. A source that cannot be decoded (or whose label has values outside
    the class list) stops the build with the usual one-line error naming the file, after the others
    are done.
    """
    start = time.monotonic()
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    cache = DecodedCache(folder, dataset.root)
    try:
        cache.base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the decoded cache folder {cache.base} ({err.strerror}); "
                        "set data.cache to a writable folder") from None
    cache.remove_stale_temporaries()
    chosen = list(range(len(dataset))) if indices is None else sorted({int(i) for i in indices})
    image_key, label_key = dataset.image_key(), dataset.label_key()
    jobs: list[tuple[int, bool, bool]] = []
    needed = 0
    for i in chosen:
        do_image = force or cache.status(dataset.image_path(i), "image", image_key) is not None
        do_label = force or cache.status(dataset.label_path(i), "label", label_key) is not None
        if do_image or do_label:
            jobs.append((i, do_image, do_label))
            hw = _image_hw(dataset.image_path(i)) or (0, 0)
            needed += (_entry_bytes((*hw, 3)) if do_image else 0) + (_entry_bytes(hw) if do_label else 0)
    report = CacheReport(folder=cache.base, samples=len(chosen), up_to_date=len(chosen) - len(jobs),
                         bytes_needed=needed)
    free = shutil.disk_usage(cache.base).free
    if log is not None:
        log(f"decoded cache {cache.base}: {len(jobs)} of {len(chosen)} samples to decode and write, "
            f"{_gb(needed)} on disk ({_gb(free)} free); {report.up_to_date} already up to date")
    if needed > free:
        raise UserError(f"the decoded cache needs {_gb(needed)} but {cache.base} has {_gb(free)} free; "
                        "free some space or set data.cache to a larger disk")
    errors: list[str] = []
    _init_build(dataset, cache)
    with progress_bar(len(jobs), "decoded cache", unit="sample", enabled=progress and bool(jobs)) as bar:
        if nproc == 1 or len(jobs) <= 1:
            outcomes: Any = map(_build_one, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context().Pool(min(nproc, len(jobs)), initializer=_init_build,
                                                      initargs=(dataset, cache))
            outcomes = pool.imap_unordered(_build_one, jobs, chunksize=1)
        try:
            for written, error in outcomes:
                if error:
                    errors.append(error)
                else:
                    report.written += 1
                    report.bytes_written += written
                bar.update(1)
        except BaseException:
            if pool is not None:
                pool.terminate()  # Ctrl-C: stop now; finished entries stay, the next build resumes
            raise
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    _BUILD.clear()
    report.seconds = time.monotonic() - start
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)
    return report
