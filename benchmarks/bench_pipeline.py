"""How many training samples per second one DataLoader worker delivers (decode + full training pipeline).

Usage:
    python benchmarks/bench_pipeline.py [--camvid ../shared/data/camvid] [--samples 60] [--threads 1]

Cases:
  * CamVid: real 360x480 frames, scale (480, 360), ratio 0.5-2.0, crop 256x256;
  * Cityscapes-sized: 1024x2048 synthetic street scenes (the demo generator at full size, stored as
    PNG like Cityscapes), scale (2048, 1024), ratio 0.5-2.0, crop 512x1024 (the reference recipe).

Runs in one process with ``--threads`` OpenCV/torch threads (1 = what a DataLoader worker gets
when the main process pins them). Prints two markdown tables: throughput, and time per stage.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

from segdistill.data import CamVidDataset, CityscapesDataset, SegDataset, build_train_pipeline, generate_demo_scenes
from segdistill.data.transforms import Compose

REPO = Path(__file__).resolve().parents[1]


class TimedCompose:
    """Run a Compose, adding each stage's wall time to ``totals``."""

    def __init__(self, pipeline: Compose, totals: dict[str, float]) -> None:
        self.pipeline, self.totals = pipeline, totals

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        for t in self.pipeline.transforms:
            start = time.perf_counter()
            image, label = t(image, label, rng)
            self.totals[type(t).__name__] += time.perf_counter() - start
        return image, label


def run_case(ds: SegDataset, pipeline: Compose, samples: int, seed: int = 0) -> tuple[float, float, dict[str, float]]:
    """Return (samples/s with decoding, samples/s of the pipeline alone, seconds per stage per sample)."""
    totals: dict[str, float] = defaultdict(float)
    timed = TimedCompose(pipeline, totals)
    load_time = pipe_time = 0.0
    for k in range(samples):
        rng = np.random.default_rng([seed, k])
        start = time.perf_counter()
        image, label = ds.load(k % len(ds))
        mid = time.perf_counter()
        timed(image, label, rng)
        end = time.perf_counter()
        load_time += mid - start
        pipe_time += end - mid
    stages = {"decode": load_time / samples, **{name: v / samples for name, v in totals.items()}}
    return samples / (load_time + pipe_time), samples / pipe_time, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", type=Path, default=REPO.parent / "shared" / "data" / "camvid")
    parser.add_argument("--samples", type=int, default=60, help="samples per case (after 3 warm-up samples)")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV and torch threads (a DataLoader worker: 1)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)

    cases: list[tuple[str, SegDataset, Compose, str]] = []
    if args.camvid.is_dir():
        cases.append(
            ("CamVid (real)", CamVidDataset(args.camvid, "train"), build_train_pipeline((256, 256), (480, 360), (0.5, 2.0)), "360x480 -> 256x256")
        )
    else:
        print(f"(no CamVid at {args.camvid}; skipping that case)")
    tmp = tempfile.TemporaryDirectory()
    generate_demo_scenes(tmp.name, num_train=4, num_val=0, size=(1024, 2048), seed=0)
    cityscapes_like = CityscapesDataset(tmp.name, "train") if _prepare(Path(tmp.name)) else None
    if cityscapes_like is not None:
        cases.append(
            ("Cityscapes-sized (synthetic)", cityscapes_like, build_train_pipeline((512, 1024), (2048, 1024), (0.5, 2.0)), "1024x2048 -> 512x1024")
        )

    results = []
    for name, ds, pipeline, sizes in cases:
        run_case(ds, pipeline, 3, seed=99)  # warm-up: page cache, OpenCV lazy init
        with_decode, pipe_only, stages = run_case(ds, pipeline, args.samples)
        results.append((name, sizes, with_decode, pipe_only, stages))

    print(f"\n{args.samples} samples per case, {args.threads} thread(s), torch {torch.__version__}, OpenCV {cv2.__version__}\n")
    print("| data | input -> crop | samples/s (decode + pipeline) | ms/sample | samples/s (pipeline only) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, sizes, with_decode, pipe_only, _ in results:
        print(f"| {name} | {sizes} | {with_decode:.1f} | {1000 / with_decode:.1f} | {pipe_only:.1f} |")
    stage_names = list(dict.fromkeys(s for r in results for s in r[4]))
    print("\nms per sample and stage:\n")
    print("| data | " + " | ".join(stage_names) + " |")
    print("| --- | " + " | ".join("---:" for _ in stage_names) + " |")
    for name, _, _, _, stages in results:
        print(f"| {name} | " + " | ".join(f"{1000 * stages.get(s, 0.0):.1f}" for s in stage_names) + " |")
    tmp.cleanup()


def _prepare(root: Path) -> bool:
    """Make labelTrainIds for the synthetic frames (needs cityscapesscripts)."""
    try:
        from segdistill.data import prepare_cityscapes

        prepare_cityscapes(root, nproc=1, progress=False)
    except Exception as err:  # the benchmark still reports CamVid without the extra
        print(f"(cannot prepare synthetic Cityscapes frames: {err}; skipping that case)")
        return False
    return True


if __name__ == "__main__":
    main()
