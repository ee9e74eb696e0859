"""Shared fixtures: where the read-only reference files and real data live, skipping without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from skip_policy import SHARED_SKIP, pytest_runtest_makereport  # noqa: F401 - the hook: on CI these skips fail

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGDISTILL_SHARED", REPO.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present ({SHARED_SKIP})")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference``: mmseg and mmrazor oracle outputs."""
    return _need(SHARED / "reference")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """``../shared/data/camvid``: 468 real CamVid frames (SegNet layout)."""
    return _need(SHARED / "data" / "camvid")


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Two cores on CI: keep intra-op threads fixed so tests are deterministic and do not oversubscribe.
    torch.set_num_threads(2)


def write_tiny_folder_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: tuple[int, int] = (64, 96),
                              seed: int = 0) -> Path:
    """A learnable 3-class folder dataset: a bright and a dark rectangle on a mid-grey textured floor."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("floor 128 64 128\nbright 220 220 0\ndark 0 0 142\n")
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = np.zeros((h, w), np.uint8)
            image = rng.normal(120, 20, (h, w, 3))
            for cls, value in ((1, 230.0), (2, 20.0)):
                y, x = rng.integers(0, h - h // 3), rng.integers(0, w - w // 3)
                label[y:y + h // 3, x:x + w // 3] = cls
                image[y:y + h // 3, x:x + w // 3] = rng.normal(value, 15, (h // 3, w // 3, 3))
            label[:2, :] = 255  # an ignored border, as real datasets have
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / split / f"f{i:03d}.png")
            Image.fromarray(label).save(root / "masks" / split / f"f{i:03d}.png")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A folder dataset (3 classes, 8 train / 4 val images of 64x96) in a temporary folder."""
    return write_tiny_folder_dataset(tmp_path / "tiny_data")


def tiny_config_tree(data_root: Path) -> dict:
    """A raw config for the tiny folder dataset: PSPNet-R18-D8-tiny, 48x48 crops, 6 iterations of batch 2."""
    return {
        "name": "tiny",
        "data": {"kind": "folder", "root": str(data_root), "scale": [96, 64], "ratio_range": [0.75, 1.25],
                 "crop_size": [48, 48], "eval_scale": None, "workers": 0},
        "student": {"model": "pspnet_r18-d8-tiny"},
        "optim": {"lr": 0.02, "min_lr": 0.0},
        "train": {"iters": 6, "batch_size": 2, "log_interval": 1, "eval_interval": 3, "checkpoint_interval": 2},
    }


def stop_at(monkeypatch: pytest.MonkeyPatch, iteration: int) -> None:
    """Deliver SIGTERM to this process while iteration ``iteration`` (0-based) of a training run runs.

    The signal is raised when the step computes its learning rate, so the step finishes and the
    trainer then saves a checkpoint and stops, as it does for a real SIGTERM.
    """
    import signal

    from segdistill.engine import run as run_mod

    real = run_mod.poly_lr

    def lr_then_signal(it: int, *args: object) -> float:
        if it == iteration:
            signal.raise_signal(signal.SIGTERM)
        return real(it, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(run_mod, "poly_lr", lr_then_signal)
