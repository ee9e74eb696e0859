"""The student's fast paths (channels_last, bf16 and fp16 autocast with GradScaler) train like the plain path."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config_tree, write_tiny_folder_dataset

from segdistill.config import Config, config_from_dict
from segdistill.engine import run as run_mod
from segdistill.engine.checkpointing import iter_checkpoints
from segdistill.engine.run import build_student
from segdistill.engine.trainer import train
from segdistill.errors import UserError


def _config(data_root: Path, **overrides: Any) -> Config:
    tree = tiny_config_tree(data_root)
    tree["train"].update(iters=3, eval_interval=100, checkpoint_interval=3)
    return config_from_dict(tree, [f"{k}={v}" for k, v in overrides.items()])


def _update_error(cfg: Config, plain: Path, fast: Path) -> float:
    """||fast update - plain update|| / ||plain update|| over every parameter (not BN running stats)."""
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    start = build_student(cfg, 3).state_dict()
    a = torch.load(plain / "final.pth", weights_only=True)["state_dict"]
    b = torch.load(fast / "final.pth", weights_only=True)["state_dict"]
    keys = [k for k in start if start[k].is_floating_point() and "running_" not in k]
    assert all(b[k].dtype == torch.float32 for k in keys), "the checkpoint must keep float32 master weights"
    da = torch.cat([(a[k] - start[k]).flatten() for k in keys])
    db = torch.cat([(b[k] - start[k]).flatten() for k in keys])
    assert da.norm() > 0, "the plain run did not move the weights"
    return float((db - da).norm() / da.norm())


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    """One plain float32 run (contiguous memory, no autocast) that every fast path is compared with."""
    tmp = tmp_path_factory.mktemp("plain")
    cfg = _config(write_tiny_folder_dataset(tmp / "data"))
    train(cfg, tmp / "plain")
    return cfg, tmp / "plain"


def test_channels_last_student_takes_the_same_steps(plain_run: tuple[Config, Path], tmp_path: Path) -> None:
    cfg, plain = plain_run
    train(_config(Path(cfg.data.root), **{"student.channels_last": "true"}), tmp_path / "cl")
    # An exact float32 path (only the order of float32 sums changes): a float32 bound, measured 4.6e-6.
    assert _update_error(cfg, plain, tmp_path / "cl") < 5e-5


def test_bf16_autocast_student_takes_nearly_the_same_steps(plain_run: tuple[Config, Path], tmp_path: Path) -> None:
    cfg, plain = plain_run
    train(_config(Path(cfg.data.root), **{"train.amp": "bf16"}), tmp_path / "bf16")
    # bf16 keeps 8 bits of mantissa: on this tiny net the 3 updates agree to ~10 % (6 % after one step;
    # fp16's 11 bits give ~1.4 %), far from an unrelated update's ~1.4.
    assert _update_error(cfg, plain, tmp_path / "bf16") < 0.2


def test_fp16_autocast_with_grad_scaler_takes_nearly_the_same_steps(plain_run: tuple[Config, Path],
                                                                     tmp_path: Path) -> None:
    cfg, plain = plain_run
    train(_config(Path(cfg.data.root), **{"train.amp": "fp16"}), tmp_path / "fp16")
    assert _update_error(cfg, plain, tmp_path / "fp16") < 0.04  # measured 1.4 %
    state = torch.load(iter_checkpoints(tmp_path / "fp16")[0], weights_only=False)
    assert state["scaler"]["scale"] == 65536.0, "no overflow expected at the default scale on this tiny run"


def test_fp16_overflow_skips_the_optimizer_step_and_backs_the_scale_off(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A scale of 2^60 overflows fp16 gradients on every step: GradScaler must skip each update.
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0**60))
    train(_config(tiny_dataset, **{"train.amp": "fp16"}), tmp_path / "run")
    state = torch.load(iter_checkpoints(tmp_path / "run")[0], weights_only=False)
    assert state["scaler"]["scale"] == 2.0**57  # halved at each of the 3 steps
    assert state["optimizer"]["state"] == {}, "an optimizer step ran on overflowed gradients"


def test_batch_size_one_is_a_config_error(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^train.batch_size=1: .*set train.batch_size=2 or more"):
        train(_config(tiny_dataset, **{"train.batch_size": 1}), tmp_path / "run")


def test_batch_size_one_is_fine_when_syncbn_pools_several_gpus() -> None:
    student = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.BatchNorm2d(4))
    run_mod.check_norm_batch(student, norm_batch=8, batch_size=1)  # 8 GPUs x 1 under SyncBN
    with pytest.raises(UserError):
        run_mod.check_norm_batch(student, norm_batch=1, batch_size=1)
