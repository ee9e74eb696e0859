"""The one training step: gradient accumulation, the global batch check, DDP's no_sync, exact resume."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_config_tree
from torch import nn

from segdistill import cli
from segdistill.config import Config, config_from_dict, dump_config
from segdistill.engine import step as step_mod
from segdistill.engine.distributed import DistEnv
from segdistill.engine.run import TrainingRun, build_run
from segdistill.engine.step import train_step
from segdistill.engine.trainer import train
from segdistill.errors import UserError


def _cfg(tmp_path: Path, **train: Any) -> Config:
    tree = tiny_config_tree(tmp_path / "unused")
    tree["train"].update(train)
    return config_from_dict(tree)


def _batches(n: int, batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, 3, (batch, 32, 32), generator=g)
        label[:, :2] = 255
        out.append((torch.randn(batch, 3, 32, 32, generator=g), label))
    return out


def _without_batch_statistics(run: TrainingRun) -> TrainingRun:
    # Frozen BN statistics and no dropout: the loss of a batch is then the mean of per-sample losses.
    for m in run.model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    return run


def test_accumulating_k_micro_batches_equals_one_k_times_larger_batch(tmp_path: Path) -> None:
    big = _batches(3, 4)
    halves = [(x[i:i + 2], y[i:i + 2]) for x, y in big for i in (0, 2)]
    one = _without_batch_statistics(build_run(_cfg(tmp_path, batch_size=4, accumulate=1), 3, DistEnv()))
    two = _without_batch_statistics(build_run(_cfg(tmp_path, batch_size=2, accumulate=2), 3, DistEnv()))
    data_one, data_two = iter(big), iter(halves)
    for it in range(3):
        r1 = train_step(one, data_one, it)
        r2 = train_step(two, data_two, it)
        assert r1.applied and r2.applied
        torch.testing.assert_close(r2.total, r1.total, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(one.student.state_dict().items(), two.student.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_with_batchnorm_each_micro_batch_updates_the_running_statistics(tmp_path: Path) -> None:
    """What differs with BN (documented in the README): statistics come from micro-batches, one update each."""
    run = build_run(_cfg(tmp_path, batch_size=2, accumulate=3), 3, DistEnv())
    bn = run.student.backbone.stem[1]
    before = int(bn.num_batches_tracked)
    train_step(run, iter(_batches(3, 2)), 0)
    assert int(bn.num_batches_tracked) == before + 3


def test_the_global_batch_check_names_both_fixes(tmp_path: Path, tiny_dataset: Path) -> None:
    cfg = _cfg(tmp_path, batch_size=2, accumulate=1, global_batch=8)
    with pytest.raises(UserError) as e:
        build_run(cfg, 3, DistEnv())
    message = str(e.value)
    assert "train.accumulate=4" in message and "train.global_batch=2" in message
    assert build_run(_cfg(tmp_path, batch_size=2, accumulate=4, global_batch=8), 3, DistEnv()).global_batch == 8
    # Through the CLI: one line, exit 2, before any training.
    tree = tiny_config_tree(tiny_dataset)
    tree["train"]["global_batch"] = 8
    path = tmp_path / "g.yaml"
    path.write_text(dump_config(config_from_dict(tree)))
    assert cli.main(["train", str(path), "--work-dir", str(tmp_path / "run")]) == 2


def test_a_stop_during_an_accumulation_window_finishes_the_step_and_resumes_exactly(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tiny_config_tree(tiny_dataset)
    tree["train"].update(accumulate=2, checkpoint_interval=100, eval_interval=100)
    cfg = config_from_dict(tree)
    train(cfg, tmp_path / "straight")

    real = step_mod.to_device
    calls = {"n": 0}

    def signal_in_second_micro_batch_of_iteration_3(batch: Any, run: TrainingRun) -> Any:
        calls["n"] += 1
        if calls["n"] == 2 * 2 + 2:  # iterations 1-2 used 4 micro-batches; this is the 2nd of iteration 3
            signal.raise_signal(signal.SIGTERM)
        return real(batch, run)

    monkeypatch.setattr(step_mod, "to_device", signal_in_second_micro_batch_of_iteration_3)
    from segdistill.engine.trainer import TrainingStopped

    with pytest.raises(TrainingStopped):
        train(cfg, tmp_path / "resumed")
    monkeypatch.setattr(step_mod, "to_device", real)
    state = torch.load(sorted((tmp_path / "resumed" / "checkpoints").glob("iter_*.pth"))[-1], weights_only=False)
    assert state["meta"]["iteration"] == 3  # the window was finished, not cut
    train(cfg, tmp_path / "resumed")
    a = torch.load(tmp_path / "straight" / "final.pth", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "final.pth", weights_only=False)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _count_allreduces(rank: int, store: str, accumulate: int, out: Any) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        tree = tiny_config_tree(Path("unused"))
        tree["train"].update(batch_size=2, accumulate=accumulate)
        run = build_run(config_from_dict(tree), 3, DistEnv(rank=rank, world_size=2))
        calls = [0]

        def counting(state, bucket):  # noqa: ANN001, ANN202 - DDP inspects real (not string) annotations
            calls[0] += 1
            work = dist.all_reduce(bucket.buffer(), async_op=True)
            return work.get_future().then(lambda f: f.value()[0] / 2)

        counting.__annotations__ = {"bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}
        run.trainable.register_comm_hook(None, counting)  # type: ignore[operator]
        data: Iterator[Any] = iter(_batches(2 * accumulate, 2, seed=rank))
        for it in range(2):
            train_step(run, data, it)
        out[rank] = calls[0]
    finally:
        dist.destroy_process_group()


def _allreduce_counts(tmp_path: Path, accumulate: int) -> dict[int, int]:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_count_allreduces, args=(str(tmp_path / f"store{accumulate}"), accumulate, out), nprocs=2, join=True)
        return dict(out)


def test_ddp_reduces_gradients_only_on_the_last_micro_batch(tmp_path: Path) -> None:
    """Two gloo processes, 2 steps: accumulating 3 micro-batches costs the same bucket all-reduces as 1."""
    single = _allreduce_counts(tmp_path, 1)
    accumulated = _allreduce_counts(tmp_path, 3)
    assert single[0] == single[1] >= 2  # at least one bucket per step
    assert accumulated == single  # without no_sync every micro-batch would all-reduce (3x)
