"""Shared fixtures: where the read-only reference files and real data live, skipping without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGDISTILL_SHARED", REPO.parent / "shared"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (only the developers' machines have ../shared)")
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
