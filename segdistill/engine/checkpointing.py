"""Training checkpoints: atomic writes, a few kept, and resume that survives a corrupt last file.

A training checkpoint is an mmseg checkpoint (``meta`` + the student's ``state_dict``) with the rest of
the training state beside it, so mmseg's loader, ``segdistill eval`` and ``segdistill export`` all read
it directly. ``meta["config"]`` is the config it was trained with: a resume compares the new config
with it (:func:`config_changes`).
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import config_from_dict, to_dict
from ..errors import UserError
from ..fileio import atomic_path
from ..models.checkpoint import read_pickled

if TYPE_CHECKING:
    from ..config import Config

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


#: What a training checkpoint holds besides ``meta["iteration"]``.
TRAINING_KEYS = ("state_dict", "connectors", "optimizer", "scaler", "rng")


def _read(path: Path) -> dict[str, Any]:
    """The training state in ``path``, with DDP's ``module.`` prefixes removed; a one-line error otherwise."""
    obj = read_pickled(path, "checkpoint")
    meta = obj.get("meta") if isinstance(obj, dict) else None
    missing = [k for k in TRAINING_KEYS if not isinstance(obj, dict) or k not in obj]
    if not isinstance(meta, dict) or "iteration" not in meta:
        missing.append("meta.iteration")
    if missing:
        # final.pth, best.pth, an export, an mmseg/mmrazor checkpoint: weights without the training state.
        raise UserError(f"{path} is not a segdistill training checkpoint (it has no {', '.join(missing)}), so a run "
                        "cannot resume from it; resume from a run folder's checkpoints/iter_*.pth, or start a new run "
                        f"from its weights with student.checkpoint={path}")
    for key in ("state_dict", "connectors"):
        obj[key] = {k.removeprefix("module."): v for k, v in obj[key].items()}
    return obj


def load_training_state(work_dir: Path, explicit: Path | None = None) -> tuple[dict[str, Any], Path] | None:
    """The newest readable training checkpoint (or ``explicit``), or None when there is none.

    A truncated or corrupt newest file is reported on stderr and the previous one is used, so a crash
    during a save (or a disk that filled up) costs one checkpoint interval, never the run.
    """
    if explicit is not None:
        if not explicit.is_file():
            raise UserError(f"--resume checkpoint {explicit} does not exist")
        return _read(explicit), explicit
    for path in iter_checkpoints(work_dir):
        try:
            return _read(path), path
        except Exception as e:  # noqa: BLE001
            print(f"warning: checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:120]}); "
                  "trying the previous one", file=sys.stderr)
    return None


#: Config keys a resumed run may change freely: they change how often it reports or saves, or where and
#: how fast it runs, not what it computes.
RESUME_SAFE_KEYS = frozenset({
    "name", "work_dir", "train.log_interval", "train.eval_interval", "train.checkpoint_interval", "train.device",
    "train.dist_timeout_min", "train.eval_teacher", "train.max_nonfinite_steps", "data.workers", "data.pin_memory",
    "data.persistent_workers",
})
_ABSENT = "(absent)"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists of mappings (``distill.losses``) by index."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {f"{prefix}length": len(tree)} if prefix else {}
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(trained_with: dict[str, Any], cfg: Config) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value trained with, value now)}`` for every key whose value differs.

    ``trained_with`` is a checkpoint's ``meta["config"]``; keys added to the config schema since it was
    written count with their defaults.
    """
    try:
        old = to_dict(config_from_dict(trained_with))
    except UserError:  # a key since removed or renamed: compare the raw values
        old = trained_with
    a, b = _flatten(old), _flatten(to_dict(cfg))
    keys = list(b) + [k for k in a if k not in b]
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def describe_changes(changes: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
    """``optim.lr 0.02 -> 0.01, train.batch_size 2 -> 4`` (the first ``limit``, then a count)."""
    def short(v: Any) -> str:
        text = str(v)
        return text if len(text) <= 40 else text[:37] + "..."
    parts = [f"{k} {short(a)} -> {short(b)}" for k, (a, b) in list(changes.items())[:limit]]
    if len(changes) > limit:
        parts.append(f"... {len(changes) - limit} more")
    return ", ".join(parts)
