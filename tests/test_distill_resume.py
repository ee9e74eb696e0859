"""Distillation runs resumed exactly, and run on two gloo processes with the teacher outside DDP.

The distillation here has everything a resume can lose: a frozen teacher in ``mode=reference``
(dropout on, so the RNG state must come back exactly), a feature term through a trainable connector
(its weights and momentum must come back), and fp16 autocast with a GradScaler whose scale grows
every step (its state must come back).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import stop_at, tiny_config_tree
from torch.nn.parallel import DistributedDataParallel as DDP

from segdistill.config import Config, config_from_dict, dump_config
from segdistill.engine.checkpointing import iter_checkpoints
from segdistill.engine.distributed import DistEnv
from segdistill.engine.run import build_run
from segdistill.engine.step import train_step
from segdistill.engine.trainer import TrainingStopped, train
from segdistill.models import build_segmentor, save_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TERMS = [
    {"name": "cwd_logits", "type": "cwd", "student": "decode_head.conv_seg", "teacher": "decode_head.conv_seg",
     "tau": 1.0, "weight": 5.0},
    {"name": "cwd_feats", "type": "cwd", "student": "decode_head.bottleneck", "teacher": "decode_head.bottleneck",
     "tau": 4.0, "weight": 3.0, "connector": "convbn"},
]


def _teacher_checkpoint(path: Path) -> Path:
    torch.manual_seed(3)
    return save_checkpoint(path, build_segmentor("pspnet_r50-d8-tiny", 3).state_dict())


def _distill_tree(data_root: Path, teacher: Path, **train: Any) -> dict[str, Any]:
    """PSPNet-R50-D8-tiny -> PSPNet-R18-D8-tiny on the tiny dataset: logits CWD + feature CWD with a connector."""
    tree = tiny_config_tree(data_root)
    tree["train"].update({"eval_interval": 100, "checkpoint_interval": 2, "eval_teacher": False, **train})
    tree["teacher"] = {"model": "pspnet_r50-d8-tiny", "checkpoint": str(teacher)}
    tree["distill"] = {"losses": TERMS}
    return tree


def _config(tree: dict[str, Any], **overrides: Any) -> Config:
    return config_from_dict(tree, [f"{k}={v}" for k, v in overrides.items()])


def _state(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=False)


def _assert_same_tensors(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    assert a.keys() == b.keys(), what
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{what}: {len(diff)} tensors differ, e.g. {diff[:3]}"


def _train_losses(run: Path) -> list[dict[str, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss")} for r in rows if r["kind"] == "train"]


def test_sigterm_mid_distillation_then_resume_is_exact(tiny_dataset: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The scale grows at every step (2^8 -> 2^14 over 6 steps), so a scaler that restarts from its
    # initial state after the resume ends at another scale (and, through fp16 rounding, other weights).
    monkeypatch.setattr(torch.amp, "GradScaler",
                        functools.partial(torch.amp.GradScaler, init_scale=2.0**8, growth_interval=1))
    tree = _distill_tree(tiny_dataset, _teacher_checkpoint(tmp_path / "teacher.pth"))
    cfg = _config(tree, **{"train.amp": "fp16", "teacher.mode": "reference"})
    train(cfg, tmp_path / "straight")

    with monkeypatch.context() as m:
        stop_at(m, 2)
        with pytest.raises(TrainingStopped, match="SIGTERM at iteration 3"):
            train(cfg, tmp_path / "stopped")
    assert [p.name for p in iter_checkpoints(tmp_path / "stopped")] == ["iter_0000003.pth", "iter_0000002.pth"]
    train(cfg, tmp_path / "stopped")  # resumes from iter_0000003.pth

    straight, resumed = tmp_path / "straight", tmp_path / "stopped"
    _assert_same_tensors(_state(straight / "final.pth")["state_dict"], _state(resumed / "final.pth")["state_dict"],
                         "student weights")
    a, b = (_state(iter_checkpoints(r)[0]) for r in (straight, resumed))
    assert a["meta"]["iteration"] == b["meta"]["iteration"] == 6
    _assert_same_tensors(a["connectors"], b["connectors"], "connector weights")
    assert a["connectors"], "the connector is checkpointed"
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] > 2.0**8, (a["scaler"], b["scaler"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # Every logged loss after the resume, the teacher's noisy targets included, is the uninterrupted run's.
    assert _train_losses(straight) == _train_losses(resumed)
    assert {"loss_cwd_logits", "loss_cwd_feats"} <= set(_train_losses(resumed)[-1])


def test_cli_resume_from_an_older_checkpoint_ends_where_the_uninterrupted_run_ends(
        tiny_dataset: Path, tmp_path: Path) -> None:
    tree = _distill_tree(tiny_dataset, _teacher_checkpoint(tmp_path / "teacher.pth"))
    cfg = tmp_path / "distill.yaml"
    cfg.write_text(dump_config(_config(tree, **{"teacher.mode": "reference"})))
    run = tmp_path / "run"
    torch.set_num_threads(1)  # as the command below (OMP_NUM_THREADS=1): the same float reductions
    train(_config(tree, **{"teacher.mode": "reference"}), run)
    want = _state(run / "final.pth")["state_dict"]
    older = run / "checkpoints" / "iter_0000004.pth"
    assert iter_checkpoints(run)[0].name == "iter_0000006.pth"  # the newest is the finished run's
    shutil.copy(older, tmp_path / "older.pth")
    (run / "final.pth").unlink()

    out = subprocess.run([sys.executable, "-m", "segdistill.cli", "train", str(cfg), "--work-dir", str(run),
                          "--resume", str(tmp_path / "older.pth")], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {tmp_path / 'older.pth'} at iteration 4" in out.stdout
    _assert_same_tensors(want, _state(run / "final.pth")["state_dict"], "student weights")


# ---- two gloo processes ----------------------------------------------------------------------------

GLOBAL = 4  # the global batch of the comparison: 2 processes x 2, or 1 process x 4


def _synthetic_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(GLOBAL, 3, 48, 48, generator=g), torch.randint(0, 3, (GLOBAL, 48, 48), generator=g)


def _one_step(cfg: Config, env: DistEnv, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Build the run, check what DDP holds, and train iteration 0 with every BN and dropout in eval mode.

    Eval mode makes each sample's forward independent of the rest of its batch, so 2 x 2 samples and
    1 x 4 samples take the same step (up to the order of float additions).
    """
    run = build_run(cfg, 3, env)
    student = set(run.model.student.parameters())
    connectors = set(run.model.connectors.parameters())
    teacher = list(run.teacher_model.parameters())
    assert connectors and not student & connectors
    assert all(not p.requires_grad for p in teacher), "a teacher parameter requires grad"
    if env.distributed:
        assert isinstance(run.trainable, DDP)
        held = set(run.trainable.parameters())
        assert not held & set(teacher), "a teacher parameter is inside DDP"
        assert held == student | connectors, "DDP must hold exactly the student's and the connectors' parameters"
        assert run.trainable.module is run.model
        assert not getattr(run.trainable, "parameters_to_ignore", set())
    else:
        assert run.trainable is run.model
    run.model.eval()
    step = train_step(run, iter([(images, labels)]), 0)
    assert step.applied
    assert all(p.grad is None for p in teacher)
    return {"losses": {k: float(v) for k, v in step.losses.items()},
            "student": {k: v.detach().clone() for k, v in run.model.student.state_dict().items()},
            "connectors": {k: v.detach().clone() for k, v in run.model.connectors.state_dict().items()}}


def _rank_main(rank: int, world: int, store: str, tree: dict[str, Any], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        images, labels = _synthetic_batch()
        per = GLOBAL // world
        mine = slice(rank * per, (rank + 1) * per)
        result = _one_step(_config(tree, **{"train.batch_size": per}), DistEnv(rank, world),
                           images[mine], labels[mine])
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_wrap_only_the_student_and_connectors_and_take_the_single_process_step(
        tiny_dataset: Path, tmp_path: Path) -> None:
    tree = _distill_tree(tiny_dataset, _teacher_checkpoint(tmp_path / "teacher.pth"))
    mp.spawn(_rank_main, args=(2, str(tmp_path / "store"), tree, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single = _one_step(_config(tree, **{"train.batch_size": GLOBAL}), DistEnv(), *_synthetic_batch())

    # DDP averaged the gradients: both ranks hold the same weights, to the bit.
    for part in ("student", "connectors"):
        _assert_same_tensors(ranks[0][part], ranks[1][part], f"{part} on rank 0 vs rank 1")
    # Each loss is a mean over its samples, so the mean of the two ranks' losses is the single process's.
    assert ranks[0]["losses"].keys() == single["losses"].keys()
    for name, value in single["losses"].items():
        mean = (ranks[0]["losses"][name] + ranks[1]["losses"][name]) / 2
        assert mean == pytest.approx(value, rel=1e-5), name
    # The same update: || two-process update - one-process update || / || one-process update || <= 1e-4.
    # Float32 alone: the gradients are summed in another order (measured 2e-6 for the student, 1e-5 for
    # the connector, whose update is small against the rounding of its weights); a step without the
    # all-reduce, or on another batch, is off by order 1.
    torch.manual_seed(0)
    start = build_run(_config(tree), 3, DistEnv())
    initial = {"student": start.model.student.state_dict(), "connectors": start.model.connectors.state_dict()}
    for part in ("student", "connectors"):
        keys = [k for k, v in initial[part].items() if v.is_floating_point() and "running_" not in k]
        d1 = torch.cat([(single[part][k] - initial[part][k]).flatten() for k in keys])
        d2 = torch.cat([(ranks[0][part][k] - initial[part][k]).flatten() for k in keys])
        assert d1.norm() > 0, f"the {part} did not move"
        rel = float((d2 - d1).norm() / d1.norm())
        assert rel <= 1e-4, (part, rel)


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "segdistill.cli", "train", *args], env=ENV, capture_output=True, text=True,
                          timeout=300)


def test_torchrun_distillation_on_two_gloo_ranks_and_its_exact_resume(tiny_dataset: Path, tmp_path: Path) -> None:
    """``torchrun --standalone --nproc_per_node 2 -m segdistill.cli train``, then ``--resume`` an older checkpoint.

    Against one process with batch 4 (same samples, same crops, same initial weights), exactly two
    things differ. In train mode each rank's BatchNorm normalises over its own 2 samples instead of 4:
    the PSP head's 1x1-pooled branch then sees 2 values per channel instead of 4, which alone moves the
    first update by order 1 (measured: 0.97 of its norm, with or without dropout), and the connector's
    BN feeds the feature term directly. And each rank draws its own dropout masks (seed + rank). So the
    first iteration's losses, computed before any update, agree closely (measured: CE terms 0.1 %,
    distillation terms 3-6 %), and the weights are not compared (the eval-mode step above is).
    Resuming the two-process run from its first checkpoint, with every rank's RNG state, is exact.
    """
    tree = _distill_tree(tiny_dataset, _teacher_checkpoint(tmp_path / "teacher.pth"),
                         iters=4, checkpoint_interval=2, eval_interval=4)
    cfg = tmp_path / "two.yaml"
    cfg.write_text(dump_config(_config(tree)))  # the recipe's eval-mode teacher: no dropout noise in the targets
    two = tmp_path / "two"
    out = _torchrun(str(cfg), "--work-dir", str(two))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "global batch 4 = 2 process(es) x batch 2" in out.stdout
    train(_config(tree, **{"train.batch_size": 4}), tmp_path / "one")

    losses_two, losses_one = _train_losses(two), _train_losses(tmp_path / "one")
    assert len(losses_two) == len(losses_one) == 4
    assert set(losses_two[0]) == set(losses_one[0]) >= {"loss_decode", "loss_aux", "loss_cwd_logits", "loss_cwd_feats"}
    for name in ("loss_decode", "loss_aux"):
        assert losses_two[0][name] == pytest.approx(losses_one[0][name], rel=0.01), name
    for name in ("loss_cwd_logits", "loss_cwd_feats", "loss"):
        assert losses_two[0][name] == pytest.approx(losses_one[0][name], rel=0.15), name
    # Only rank 0 writes; a checkpoint holds every rank's RNG state (distinct: per-rank dropout) and the connector.
    assert [p.name for p in iter_checkpoints(two)] == ["iter_0000004.pth", "iter_0000002.pth"]
    older = _state(two / "checkpoints" / "iter_0000002.pth")
    assert len(older["rng"]) == 2 and not torch.equal(older["rng"][0]["torch"], older["rng"][1]["torch"])
    assert set(older["connectors"])

    want = _state(two / "final.pth")["state_dict"]
    shutil.copy(two / "checkpoints" / "iter_0000002.pth", tmp_path / "older.pth")
    (two / "final.pth").unlink()
    out = _torchrun(str(cfg), "--work-dir", str(two), "--resume", str(tmp_path / "older.pth"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "at iteration 2" in out.stdout
    _assert_same_tensors(want, _state(two / "final.pth")["state_dict"], "two-process student weights")
