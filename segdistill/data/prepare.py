"""``segdistill prepare cityscapes ROOT``: Cityscapes polygons -> ``*_gtFine_labelTrainIds.png`` + split lists;
``segdistill prepare cache CONFIG``: the decoded-image cache of a config's training set.

The first does what mmseg's ``tools/dataset_converters/cityscapes.py ROOT --nproc 8`` does, with the
same cityscapesscripts function, but resumable (finished files are skipped), atomic (a label file is
either complete or absent, even if the run is killed) and with one-line errors. The second runs
:func:`~segdistill.data.cache.build_decoded_cache` (resumable and atomic too).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segdistill.data.cache import CacheReport
from segdistill.errors import UserError
from segdistill.fileio import atomic_path, atomic_write_text

__all__ = ["PrepareReport", "prepare_cityscapes", "prepare_cache", "add_prepare_parser", "run_prepare"]

POLYGON_SUFFIX = "_gtFine_polygons.json"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
SPLITS = ("train", "val", "test")


@dataclass
class PrepareReport:
    """What :func:`prepare_cityscapes` did."""

    root: Path
    converted: int = 0  # labelTrainIds files written by this run
    skipped: int = 0  # already present and kept (no ``force``)
    split_counts: dict[str, int] = field(default_factory=dict)  # samples per split list written
    split_files: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Number of polygon files found."""
        return self.converted + self.skipped

    def summary(self) -> str:
        """One line for the console."""
        splits = ", ".join(f"{k}: {v}" for k, v in self.split_counts.items())
        return (
            f"cityscapes at {self.root}: {self.converted} labelTrainIds written, {self.skipped} already there; "
            f"split lists {splits} ({self.seconds:.1f} s)"
        )


def _json2label_function() -> Callable[[str, str, str], None]:
    try:
        from cityscapesscripts.preparation.json2labelImg import json2labelImg
    except ImportError:
        raise UserError('cityscapesscripts is not installed; run pip install "segdistill[cityscapes]"') from None
    return json2labelImg


def _convert_one(json_path: str) -> str | None:
    """Write the labelTrainIds PNG beside one polygon file; return an error line instead of raising."""
    json2label = _json2label_function()
    out = json_path[: -len(POLYGON_SUFFIX)] + TRAIN_ID_SUFFIX
    try:
        # atomic_path keeps the .png suffix last, so Pillow still picks PNG from the name.
        with atomic_path(out) as tmp:
            json2label(json_path, str(tmp), "trainIds")
    except SystemExit:
        # cityscapesscripts prints its complaint and calls sys.exit (an unknown label name, mostly).
        return (f"cannot convert {json_path} (cityscapesscripts rejected it, usually an unknown label name); "
                "fix or remove that polygon file")
    except Exception as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"cannot convert {json_path} ({detail}); fix or remove that polygon file"
    return None


class _Progress:
    """A dependency-free progress bar on stderr."""

    def __init__(self, total: int, enabled: bool, label: str) -> None:
        self.total, self.enabled, self.label = total, enabled and total > 0, label
        self.done, self._start, self._last = 0, time.monotonic(), -1.0

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and self.done != self.total:
            return  # at most ten redraws a second, so a log file does not fill up with bars
        self._last = now
        percent = self.done * 100 // self.total
        width = 30
        filled = width * self.done // self.total
        rate = self.done / max(now - self._start, 1e-9)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {percent:3d}% "
            f"{rate:.1f}/s"
        )
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def prepare_cityscapes(root: str | os.PathLike, nproc: int = 8, force: bool = False,
                       progress: bool = True) -> PrepareReport:
    """Convert every ``gtFine/<split>/<city>/*_gtFine_polygons.json`` under ``root`` to ``*_gtFine_labelTrainIds.png``.

    Files already converted are skipped unless ``force``. Conversions run in ``nproc`` processes,
    each output written atomically. Then ``root/{train,val,test}.txt`` list the samples of each
    split present (one ``<city>/<city>_xxxxxx_yyyyyy`` stem per line, sorted), like mmseg's converter.
    """
    start = time.monotonic()
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise UserError(f"Cityscapes root {root_path} does not exist; "
                        "pass the folder that holds gtFine/ and leftImg8bit/")
    missing = [name for name in ("gtFine", "leftImg8bit") if not (root_path / name).is_dir()]
    if missing:
        raise UserError(
            f"Cityscapes root {root_path} has no {' and no '.join(m + '/' for m in missing)}; "
            f"unpack gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip there"
        )
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    json2label = _json2label_function()  # fail early, before any work, if the extra is missing
    del json2label

    gt_root = root_path / "gtFine"
    polygons = sorted(gt_root.glob(f"*/*/*{POLYGON_SUFFIX}"))
    if not polygons:
        raise UserError(f"no *{POLYGON_SUFFIX} files under {gt_root}/<split>/<city>/; "
                        "is this the Cityscapes gtFine folder?")
    todo = [p for p in polygons if force or not Path(str(p)[: -len(POLYGON_SUFFIX)] + TRAIN_ID_SUFFIX).is_file()]
    report = PrepareReport(root=root_path, skipped=len(polygons) - len(todo))

    bar = _Progress(len(todo), progress, "labelTrainIds")
    errors: list[str] = []
    jobs = [str(p) for p in todo]
    if nproc == 1 or len(jobs) <= 1:
        for job in jobs:
            outcome = _convert_one(job)
            if outcome:
                errors.append(outcome)
            bar.update()
    else:
        with multiprocessing.get_context().Pool(min(nproc, len(jobs))) as pool:
            for outcome in pool.imap_unordered(_convert_one, jobs, chunksize=max(1, len(jobs) // (nproc * 16))):
                if outcome:
                    errors.append(outcome)
                bar.update()
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)
    report.converted = len(jobs)

    for split in SPLITS:
        split_dir = gt_root / split
        if not split_dir.is_dir():
            continue
        stems = sorted(p.relative_to(split_dir).as_posix()[: -len(POLYGON_SUFFIX)]
                       for p in split_dir.glob(f"*/*{POLYGON_SUFFIX}"))
        target = root_path / f"{split}.txt"
        atomic_write_text(target, "".join(s + "\n" for s in stems))
        report.split_counts[split] = len(stems)
        report.split_files.append(target)
    report.seconds = time.monotonic() - start
    return report


def prepare_cache(config: str | os.PathLike, overrides: Sequence[str] = (), nproc: int = 8, split: str | None = None,
                  progress: bool = True, force: bool = False) -> CacheReport:
    """Build the decoded-image cache (``data.cache``) of the config's ``split`` (default: ``data.train_split``).

    One line with the number of samples to write and their disk space is printed before the build
    starts; see :func:`~segdistill.data.cache.build_decoded_cache`.
    """
    from segdistill.config import load_config
    from segdistill.data.cache import build_decoded_cache
    from segdistill.data.datasets import build_dataset

    cfg = load_config(config, overrides)
    if not cfg.data.cache:
        raise UserError(f"{config} sets no data.cache folder; add `cache: /fast/disk/segdistill-cache` under data: "
                        "or pass data.cache=FOLDER on the command line")
    dataset = build_dataset(cfg.data.kind, cfg.data.root, split or cfg.data.train_split)
    return build_decoded_cache(dataset, cfg.data.cache, nproc=nproc, progress=progress, force=force)


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``prepare cityscapes DATA_ROOT ...`` and ``prepare cache CONFIG ...``; the handler is :func:`run_prepare`.

    The parser sets ``func=run_prepare``, so the CLI can dispatch with ``args.func(args)``.
    """
    prepare = subparsers.add_parser("prepare", help="prepare a dataset for training (Cityscapes: polygons -> "
                                                    "labelTrainIds; the decoded-image cache)")
    kinds = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    city = kinds.add_parser("cityscapes", help="write *_gtFine_labelTrainIds.png and train/val/test.txt, "
                                               "like mmseg's converter")
    city.add_argument("data_root", metavar="DATA_ROOT", help="folder holding gtFine/ and leftImg8bit/")
    city.add_argument("--nproc", type=int, default=8, help="parallel processes (default 8)")
    city.add_argument("--force", action="store_true", help="rewrite labels that already exist")
    city.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    cache = kinds.add_parser("cache", help="decode the config's training images and labels once into data.cache "
                                           "(raw uint8, read by the workers instead of decoding)")
    cache.add_argument("config", help="experiment YAML (see configs/); data.cache names the folder")
    cache.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value",
                       help="config overrides, e.g. data.cache=/scratch/cache data.root=/data/cityscapes")
    cache.add_argument("--nproc", type=int, default=8, help="parallel processes (default 8)")
    cache.add_argument("--split", help="the split to cache (default: data.train_split)")
    cache.add_argument("--force", action="store_true", help="rewrite entries that are up to date")
    cache.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    prepare.set_defaults(func=run_prepare)
    return prepare


def run_prepare(args: argparse.Namespace) -> int:
    """Handle ``segdistill prepare ...``; returns the exit code (errors are raised as UserError)."""
    if args.dataset == "cache":
        cache_report = prepare_cache(args.config, args.overrides, nproc=args.nproc, split=args.split,
                                     progress=args.progress, force=args.force)
        print(cache_report.summary())
        return 0
    if args.dataset != "cityscapes":
        raise UserError(f"unknown dataset {args.dataset!r} for prepare; valid: cityscapes, cache")
    report = prepare_cityscapes(args.data_root, nproc=args.nproc, force=args.force, progress=args.progress)
    print(report.summary())
    return 0
