"""``segdistill prepare cityscapes ROOT``: Cityscapes polygons -> ``*_gtFine_labelTrainIds.png`` + split lists;
``segdistill prepare cache CONFIG``: the decoded-image cache of a config's training set.

The first does what mmseg's ``tools/dataset_converters/cityscapes.py ROOT --nproc 8`` does, with the
same cityscapesscripts function, but resumable (finished files are skipped), atomic (a label file is
either complete or absent, even if the run is killed) and with one-line errors. The second runs
:func:`~segdistill.data.cache.build_decoded_cache` (resumable and atomic too).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..fileio import atomic_path, atomic_write_text
from ..progress import progress_bar
from .cache import CacheReport

__all__ = ["PrepareReport", "prepare_cityscapes", "prepare_cache"]

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

    errors: list[str] = []
    jobs = [str(p) for p in todo]
    with progress_bar(len(jobs), "labelTrainIds", unit="file", enabled=progress and bool(jobs)) as bar:
        if nproc == 1 or len(jobs) <= 1:
            for job in jobs:
                outcome = _convert_one(job)
                if outcome:
                    errors.append(outcome)
                bar.update(1)
        else:
            with multiprocessing.get_context().Pool(min(nproc, len(jobs))) as pool:
                for outcome in pool.imap_unordered(_convert_one, jobs, chunksize=max(1, len(jobs) // (nproc * 16))):
                    if outcome:
                        errors.append(outcome)
                    bar.update(1)
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
    from ..config import load_config
    from .cache import build_decoded_cache
    from .datasets import build_dataset

    cfg = load_config(Path(config), overrides)
    if not cfg.data.cache:
        raise UserError(f"{config} sets no data.cache folder; add `cache: /fast/disk/segdistill-cache` under data: "
                        "or pass data.cache=FOLDER on the command line")
    dataset = build_dataset(cfg.data.kind, cfg.data.root, split or cfg.data.train_split)
    return build_decoded_cache(dataset, cfg.data.cache, nproc=nproc, progress=progress, force=force)
