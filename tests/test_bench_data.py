"""``bench --mode data``: rows and tables on a tiny dataset (timings are not checked, only what is reported)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segdistill.bench.data import bench_data
from segdistill.config import config_from_dict


def test_bench_data_reports_both_sources_per_worker_and_through_the_loader(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "cs"
    for i in range(3):
        (root / "leftImg8bit" / "train" / "aachen").mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "train" / "aachen").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        cv2.imwrite(str(root / "leftImg8bit" / "train" / "aachen" / f"aachen_000000_{i:06d}_leftImg8bit.png"),
                    rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
        Image.fromarray(rng.choice(np.array([0, 3, 255], np.uint8), (24, 40))).save(
            root / "gtFine" / "train" / "aachen" / f"aachen_000000_{i:06d}_gtFine_labelTrainIds.png")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cfg = config_from_dict({"data": {"kind": "cityscapes", "root": str(root), "scale": [40, 24],
                                     "crop_size": [16, 16]}, "train": {"batch_size": 2}})
    result = bench_data(cfg, workers=1, samples=6, images=2, progress=False)
    assert [(r.source, r.workers) for r in result.rows] == [("decode", 0), ("cache", 0), ("decode", 1), ("cache", 1)]
    one = result.row("cache", 0)
    assert one is not None and one.samples == 6 and one.cpu_ms_per_sample and one.samples_per_s_per_core
    assert set(one.stages_ms) >= {"load", "RandomResize", "RandomCrop", "pack", "collate"}
    loader = result.row("decode", 1)
    assert loader is not None and loader.cpu_s is None and loader.samples_per_s > 0
    table = result.table()
    assert table.count("\n") == 5 and "samples/s per core" in table and "DataLoader, 1 workers" in table
    assert "| decoded cache | one worker (CPU time) | 6 |" in table
    assert "load" in result.stage_table() and "2 images" in result.markdown()
    assert result.to_dict()["rows"][0]["cpu_ms_per_sample"] > 0
    assert not list(tmp_path.glob("segdistill-bench-cache-*"))  # its temporary cache is removed
