"""Training checkpoints: atomic writes, a few kept, and resume that survives a corrupt last file.

A training checkpoint is an mmseg checkpoint (``meta`` + the student's ``state_dict``) with the rest of
the training state beside it, so mmseg's loader, ``segdistill eval`` and ``segdistill export`` all read
it directly.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..fileio import atomic_path

_ITER_RE = re.compile(r"^iter_(\d+)\.pth$")


def checkpoint_dir(work_dir: Path) -> Path:
    return work_dir / "checkpoints"


def iter_checkpoints(work_dir: Path) -> list[Path]:
    """Training checkpoints in ``work_dir``, newest first."""
    folder = checkpoint_dir(work_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _ITER_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def rng_state() -> dict[str, Any]:
    """Every global RNG the step touches (dropout uses torch's)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(work_dir: Path, iteration: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``checkpoints/iter_<N>.pth`` atomically and delete all but the ``keep`` newest."""
    path = checkpoint_dir(work_dir) / f"iter_{iteration:07d}.pth"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in iter_checkpoints(work_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


def _read(path: Path) -> dict[str, Any]:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, dict) or "state_dict" not in obj or "iteration" not in obj.get("meta", {}):
        raise ValueError("not a segdistill training checkpoint")
    return obj


def load_training_state(work_dir: Path, explicit: Path | None = None) -> tuple[dict[str, Any], Path] | None:
    """The newest readable training checkpoint (or ``explicit``), or None when there is none.

    A truncated or corrupt newest file is reported on stderr and the previous one is used, so a crash
    during a save (or a disk that filled up) costs one checkpoint interval, never the run.
    """
    if explicit is not None:
        if not explicit.is_file():
            raise UserError(f"--resume checkpoint {explicit} does not exist")
        try:
            return _read(explicit), explicit
        except Exception as e:  # noqa: BLE001 - every failure means "cannot resume from this file"
            raise UserError(f"cannot resume from {explicit}: {type(e).__name__}: {e}") from e
    for path in iter_checkpoints(work_dir):
        try:
            return _read(path), path
        except Exception as e:  # noqa: BLE001
            print(f"warning: checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:120]}); "
                  "trying the previous one", file=sys.stderr)
    return None
