"""CPU time one DataLoader worker spends per training sample, for whichever segdistill is on the path.

Usage:
    python benchmarks/data_worker_cpu.py ROOT [--samples 48] [--cache FOLDER] [--profile]

Runs the Cityscapes recipe's training pipeline (scale (2048, 1024), ratio 0.5-2.0, crop 512x1024,
cat_max_ratio 0.75, flip, photometric distortion) on the Cityscapes-layout frames under ROOT, exactly
as a worker does: ``TrainSet[(index, seed)]`` and the default collate of batches of 2, with one
OpenCV/torch thread, timed in this thread's CPU time. It only uses API that every segdistill version
has, so the same command measures an older checkout to compare against, e.g. the float pipeline
before uint8 workers (``git archive 48f3486 segdistill | tar -x -C /tmp/old`` then
``PYTHONPATH=/tmp/old python benchmarks/data_worker_cpu.py ROOT``). ``--profile`` prints cProfile's
top functions by CPU time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import cv2
import torch

import segdistill
from segdistill.data import CityscapesDataset, TrainSet, build_train_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="Cityscapes-layout folder (e.g. from benchmarks/make_street_frames.py)")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--cache", help="read through this decoded-image cache (built if missing; new versions only)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top 15 functions (CPU time)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    dataset = CityscapesDataset(args.root, "train")
    if args.cache:
        from segdistill.data import build_decoded_cache

        build_decoded_cache(dataset, args.cache, nproc=1, progress=False, log=None)
        dataset.use_cache(args.cache)
    pipeline = build_train_pipeline((512, 1024), (2048, 1024), (0.5, 2.0), cat_max_ratio=0.75)
    train_set = TrainSet(dataset, pipeline, seed=0)
    for k in range(len(dataset)):  # warm-up; every file into the page cache
        train_set[(k, 10**6 + k)]
    profile = cProfile.Profile(time.thread_time) if args.profile else None
    if profile is not None:
        profile.enable()
    cpu = time.thread_time()
    batch = []
    for k in range(args.samples):
        batch.append(train_set[(k % len(dataset), k)])
        if len(batch) == 2:
            torch.utils.data.default_collate(batch)
            batch = []
    cpu = time.thread_time() - cpu
    if profile is not None:
        profile.disable()
    where = segdistill.__file__.rsplit("/segdistill/", 1)[0]
    print(f"segdistill from {where}, {'cache' if args.cache else 'decode'}: {1e3 * cpu / args.samples:.1f} CPU ms "
          f"per sample, {args.samples / cpu:.1f} samples/s per core ({args.samples} samples)")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
