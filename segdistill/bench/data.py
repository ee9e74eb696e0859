"""``segdistill bench CONFIG --mode data``: how many training samples per second the input pipeline delivers.

Two measurements, each with the files read from disk (decoded) and from the decoded-image cache:

**One worker.** This process does exactly what one DataLoader worker does for the configured
training set (the trainer's own :func:`~segdistill.engine.trainer.build_train_set`, then
``train_set[(index, seed)]`` and the default collate of each batch), with one OpenCV and torch
thread as a worker has. It is timed in CPU time of this thread (``time.thread_time``): CPU ms per
sample, and its inverse, samples/s per core, do not depend on what else the machine runs, where wall
time does. Each stage's CPU time is reported too (``load`` = decode or cache read of image and label).

**End to end.** The trainer's own DataLoader (:func:`~segdistill.engine.trainer.train_loader`) with
``workers`` worker processes, in wall time: the rate a training loop would see if it never waited
on the device.

The benchmark uses the first ``images`` training samples, read once before timing so both cases read
from the page cache. Its decoded cache is ``data.cache`` when the config sets one (entries for those
samples are built there if missing), else a temporary folder removed afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from ..config import Config
from ..data import SegDataset, build_dataset, build_decoded_cache
from ..data.datasets import png_decoder
from ..engine.distributed import DistEnv
from ..engine.trainer import build_train_set, train_loader
from ..errors import UserError

__all__ = ["DataBenchRow", "DataBench", "bench_data"]


@dataclass
class DataBenchRow:
    """One measurement: ``source`` is ``decode`` (image files) or ``cache`` (decoded-image cache)."""

    source: str
    workers: int  # 0: one worker's work in this process (CPU time); N: the DataLoader with N workers
    samples: int
    wall_s: float
    cpu_s: float | None = None  # CPU time of the one-worker measurement
    stages_ms: dict[str, float] = field(default_factory=dict)  # CPU ms per sample and stage

    @property
    def cpu_ms_per_sample(self) -> float | None:
        return None if self.cpu_s is None else 1e3 * self.cpu_s / self.samples

    @property
    def samples_per_s_per_core(self) -> float | None:
        return None if not self.cpu_s else self.samples / self.cpu_s

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "cpu_ms_per_sample": self.cpu_ms_per_sample,
                "samples_per_s_per_core": self.samples_per_s_per_core, "samples_per_s": self.samples_per_s}


@dataclass
class DataBench:
    """The rows of one benchmark and what they were measured on."""

    config: str
    data: str  # the dataset, the images used and their size on disk
    pipeline: str  # the training pipeline's settings
    batch: int
    rows: list[DataBenchRow]

    def row(self, source: str, workers: int) -> DataBenchRow | None:
        return next((r for r in self.rows if r.source == source and r.workers == workers), None)

    def table(self) -> str:
        """Markdown: CPU ms and samples/s per core of one worker, and the DataLoader's samples/s, per source."""
        lines = ["| images from | measured | samples | CPU ms / sample | samples/s per core | samples/s (wall) |",
                 "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in self.rows:
            where = "one worker (CPU time)" if r.workers == 0 else f"DataLoader, {r.workers} workers"
            cpu = f"{r.cpu_ms_per_sample:.1f}" if r.cpu_ms_per_sample is not None else "-"
            core = f"{r.samples_per_s_per_core:.1f}" if r.samples_per_s_per_core is not None else "-"
            source = "decoded files" if r.source == "decode" else "decoded cache"
            lines.append(f"| {source} | {where} | {r.samples} | {cpu} | {core} | {r.samples_per_s:.1f} |")
        return "\n".join(lines)

    def stage_table(self) -> str:
        """Markdown: CPU ms per sample and stage of the one-worker measurements."""
        singles = [r for r in self.rows if r.workers == 0 and r.stages_ms]
        if not singles:
            return ""
        names = list(dict.fromkeys(s for r in singles for s in r.stages_ms))
        lines = ["| images from | " + " | ".join(names) + " |", "| --- | " + " | ".join("---:" for _ in names) + " |"]
        for r in singles:
            source = "decoded files" if r.source == "decode" else "decoded cache"
            lines.append(f"| {source} | " + " | ".join(f"{r.stages_ms.get(n, 0.0):.1f}" for n in names) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        """Both tables under a line saying what was measured."""
        head = f"{self.config}: {self.data}; {self.pipeline}; batch {self.batch}"
        stages = self.stage_table()
        return head + "\n\n" + self.table() + ("\n\nCPU ms per sample and stage:\n\n" + stages if stages else "")

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "data": self.data, "pipeline": self.pipeline, "batch": self.batch,
                "rows": [r.to_dict() for r in self.rows]}


class _Timed:
    """Wraps a callable and adds its CPU time (this thread) to ``totals[name]``."""

    def __init__(self, name: str, fn: Callable[..., Any], totals: dict[str, float]) -> None:
        self.name, self.fn, self.totals = name, fn, totals

    def __call__(self, *args: Any) -> Any:
        start = time.thread_time()
        out = self.fn(*args)
        self.totals[self.name] = self.totals.get(self.name, 0.0) + time.thread_time() - start
        return out


def _one_worker(cfg: Config, dataset: SegDataset, source: str, samples: int, batch: int) -> DataBenchRow:
    """One worker's work in this thread: samples through the trainer's training set, collated by batch."""
    train_set = build_train_set(cfg, dataset)
    totals: dict[str, float] = {}
    pipeline = train_set.pipeline
    if hasattr(pipeline, "transforms") and hasattr(pipeline, "pack"):  # a TrainPipeline: time each stage
        dataset.load = _Timed("load", dataset.load, totals)  # type: ignore[method-assign,assignment]
        pipeline.transforms = [_Timed(type(t).__name__, t, totals) for t in pipeline.transforms]
        pipeline.pack = _Timed("pack", pipeline.pack, totals)
    collate = _Timed("collate", torch.utils.data.default_collate, totals)
    n = len(dataset)
    for k in range(min(n, 3)):  # warm-up: first calls of OpenCV's functions, lazy imports
        train_set[(k, 10**6 + k)]
    totals.clear()
    wall, cpu = time.perf_counter(), time.thread_time()
    pending = []
    for k in range(samples):
        pending.append(train_set[(k % n, k)])
        if len(pending) == batch or k == samples - 1:
            collate(pending)
            pending = []
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    stages = {name: 1e3 * t / samples for name, t in totals.items()}
    return DataBenchRow(source=source, workers=0, samples=samples, wall_s=wall, cpu_s=cpu, stages_ms=stages)


def _data_loader(cfg: Config, dataset: SegDataset, source: str, samples: int, workers: int) -> DataBenchRow:
    """The trainer's DataLoader with ``workers`` workers: samples/s of wall time after a warm-up."""
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=workers))
    loader: Iterator[Any] = train_loader(cfg, build_train_set(cfg, dataset), DistEnv(), 0)
    batch = cfg.train.batch_size
    for _ in range(max(workers, 1)):  # workers started, first batches out
        next(loader)
    batches = max(1, -(-samples // batch))
    wall = time.perf_counter()
    for _ in range(batches):
        next(loader)
    wall = time.perf_counter() - wall
    del loader  # shuts the workers down
    return DataBenchRow(source=source, workers=workers, samples=batches * batch, wall_s=wall)


def _describe(dataset: SegDataset) -> str:
    sizes = [os.path.getsize(dataset.image_path(i)) for i in range(len(dataset))]
    shapes = set()
    for i in range(len(dataset)):
        with Image.open(dataset.image_path(i)) as im:
            shapes.add(f"{im.size[1]}x{im.size[0]}")
    suffixes = sorted({dataset.image_path(i).suffix for i in range(len(dataset))})
    return (f"{type(dataset).__name__} {dataset.split or ''} at {dataset.root}, {len(dataset)} images "
            f"({'/'.join(suffixes)}, {', '.join(sorted(shapes))} HxW, {np.mean(sizes) / 1e6:.2f} MB on average); "
            f"PNG decoder: {png_decoder()}")


def bench_data(cfg: Config, workers: int | None = None, samples: int = 60, images: int = 24,
               progress: bool = True) -> DataBench:
    """Benchmark the training input pipeline of ``cfg``: one worker (CPU time) and the DataLoader (wall time).

    ``workers``: DataLoader workers for the end-to-end rows (default ``data.workers``; 0 skips them).
    ``samples``: samples per measurement. ``images``: how many training samples (the first ones) are
    cycled through. ``progress``: a line on stderr per measurement.
    """
    if samples < 1 or images < 1:
        raise UserError(f"bench --mode data needs --samples and --images of at least 1, got {samples} and {images}")
    workers = cfg.data.workers if workers is None else int(workers)
    full = build_dataset(cfg.data.kind, cfg.data.root, cfg.data.train_split)
    dataset = full.subset(range(min(images, len(full))))
    description = _describe(dataset)
    d = cfg.data
    pipeline = (f"scale {tuple(d.scale)}, ratio {tuple(d.ratio_range)}, crop {tuple(d.crop_size)} (HxW), "
                f"cat_max_ratio {d.cat_max_ratio}, flip {d.flip_prob}, photometric {d.photometric}")
    batch = cfg.train.batch_size
    for i in range(len(dataset)):  # into the page cache, and every file checked once
        dataset.decode(i)

    threads = cv2.getNumThreads(), torch.get_num_threads()
    rows: list[DataBenchRow] = []
    with tempfile.TemporaryDirectory(prefix="segdistill-bench-cache-") as tmp:
        folder = Path(cfg.data.cache) if cfg.data.cache else Path(tmp)
        build_decoded_cache(dataset, folder, nproc=1, progress=False, log=None)
        cached = dataset.subset(range(len(dataset)))
        cached.use_cache(folder)
        for i in range(len(cached)):
            cached.load(i)  # CRC-checked once here, as each worker does on its first read
        cases = [("decode", dataset), ("cache", cached)]
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        try:
            for source, ds in cases:
                _say(progress, f"bench data: one worker, {source}, {samples} samples")
                rows.append(_one_worker(cfg, ds.subset(range(len(ds))), source, samples, batch))
        finally:
            cv2.setNumThreads(threads[0])
            torch.set_num_threads(threads[1])
        if workers > 0:
            for source, ds in cases:
                _say(progress, f"bench data: DataLoader, {workers} workers, {source}, {samples} samples")
                rows.append(_data_loader(cfg, ds, source, samples, workers))
    return DataBench(config=cfg.name, data=description, pipeline=pipeline, batch=batch, rows=rows)


def _say(enabled: bool, line: str) -> None:
    if enabled:
        print(line, file=sys.stderr, flush=True)
