"""The training loop: schedule, outputs, exact resume, non-finite steps, signals."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import stop_at, tiny_config_tree

from segdistill.config import Config, config_from_dict, load_config
from segdistill.engine import trainer as trainer_mod
from segdistill.engine.checkpointing import iter_checkpoints
from segdistill.engine.schedule import poly_lr
from segdistill.engine.trainer import TrainingStopped, train
from segdistill.errors import UserError
from segdistill.models import build_segmentor, load_checkpoint, save_checkpoint


def tiny_config(data_root: Path, **overrides: Any) -> Config:
    return config_from_dict(tiny_config_tree(data_root), [f"{k}={v}" for k, v in overrides.items()])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["state_dict"]


def _mmengine_chained(base: float, iters: int, power: float, eta_min: float, warmup: int, start: float) -> list[float]:
    """mmengine's LinearLR then PolyLR as its schedulers step them (chained form, span end - begin - 1)."""
    lrs, lr = [], base
    schedulers = ([("linear", 0, warmup)] if warmup else []) + [("poly", warmup, iters)]
    steps = dict.fromkeys(range(len(schedulers)), -1)
    for t in range(iters):
        for k, (kind, begin, end) in enumerate(schedulers):
            if not begin <= t < end:
                continue
            steps[k] += 1
            last, total = steps[k], end - begin - 1
            if kind == "linear":
                lr = lr * start if last == 0 else lr * (1 + (1 - start) / (total * start + (last - 1) * (1 - start)))
            elif last > 0:
                lr = (lr - eta_min) * (1 - 1 / (total - last + 1)) ** power + eta_min
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("iters,power,eta_min,warmup,start", [(100, 0.9, 1e-4, 0, 0.1), (120, 1.0, 0.0, 15, 1e-6),
                                                             (80, 0.9, 1e-4, 10, 0.1)])
def test_the_schedule_is_mmengines_linear_then_poly(iters: int, power: float, eta_min: float, warmup: int,
                                                    start: float) -> None:
    want = _mmengine_chained(0.01, iters, power, eta_min, warmup, start)
    got = [poly_lr(t, 0.01, iters, power, eta_min, warmup, start, "mmengine") for t in range(iters)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert got[-1] == pytest.approx(eta_min, abs=1e-15)  # mmengine reaches eta_min at the last iteration


def test_the_scaled_warmup_schedule_of_the_camvid_study() -> None:
    assert poly_lr(0, 0.01, 100, 0.9, 1e-4, schedule="scaled_warmup") == pytest.approx(0.01)
    assert poly_lr(50, 0.01, 100, 0.9, 1e-4, schedule="scaled_warmup") == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    assert poly_lr(0, 0.01, 100, 0.9, 0.0, 10, 0.1, "scaled_warmup") == pytest.approx(0.001)
    assert poly_lr(10, 0.01, 100, 0.9, 0.0, 10, 0.1, "scaled_warmup") == pytest.approx(0.01 * 0.9**0.9)


def test_a_run_writes_config_metrics_and_mmseg_checkpoints(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_dataset)
    result = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert load_config(run / "config.yaml") == cfg
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in records if r["kind"] == "train"]
    assert [r["iter"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss_decode", "loss_aux", "loss", "lr", "data_time", "step_time", "memory_mb"):
        assert key in train_rows[0]
    assert [r["iter"] for r in records if r["kind"] == "eval"] == [3, 6]
    assert [p.name for p in iter_checkpoints(run)] == ["iter_0000006.pth", "iter_0000004.pth"]
    for name in ("best.pth", "final.pth"):
        load_checkpoint(build_segmentor("pspnet_r18-d8-tiny", 3), run / name)  # strict
    results = json.loads((run / "results.json").read_text())
    assert results["final"]["mIoU"] == pytest.approx(result.metrics.mIoU)
    assert set(results["final"]["per_class"]) == {"floor", "bright", "dark"}


def test_sigterm_saves_and_the_resumed_run_ends_with_identical_weights(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tiny_dataset, **{"train.checkpoint_interval": 100, "train.eval_interval": 100})
    train(cfg, tmp_path / "straight")

    with monkeypatch.context() as m:
        stop_at(m, 2)
        with pytest.raises(TrainingStopped, match="SIGTERM at iteration 3"):
            train(cfg, tmp_path / "stopped")
    assert [p.name for p in iter_checkpoints(tmp_path / "stopped")] == ["iter_0000003.pth"]
    train(cfg, tmp_path / "stopped")  # resumes automatically from the run folder

    a, b = _weights(tmp_path / "straight" / "final.pth"), _weights(tmp_path / "stopped" / "final.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    rows = [json.loads(x) for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_resume_skips_a_corrupt_newest_checkpoint(tiny_dataset: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tiny_dataset, **{"train.eval_interval": 100})
    train(cfg, tmp_path / "run")
    newest, previous = iter_checkpoints(tmp_path / "run")
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # a crash mid-write on a filesystem without atomic rename
    found = trainer_mod.load_training_state(tmp_path / "run")
    assert found is not None and found[1] == previous
    assert "unreadable" in capsys.readouterr().err


def test_nonfinite_losses_skip_the_step_and_stop_after_k(tiny_dataset: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from segdistill.distill.distiller import DistillStudent

    real_forward = DistillStudent.forward
    calls = {"n": 0}

    def poisoned(self: DistillStudent, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        losses = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        # One isolated NaN, then NaN for good from iteration 5 (not right after the iteration-3 checkpoint:
        # a checkpoint whose weights give the first loss of the fatal streak is set aside as suspect).
        if calls["n"] == 2 or calls["n"] >= 5:
            losses["loss_decode"] = losses["loss_decode"] * float("nan")
        return losses

    monkeypatch.setattr(DistillStudent, "forward", poisoned)
    cfg = tiny_config(tiny_dataset, **{"train.max_nonfinite_steps": 2, "train.iters": 10,
                                       "train.eval_interval": 100, "train.checkpoint_interval": 3})
    with pytest.raises(UserError, match="2 non-finite losses in a row at iteration 6"):
        train(cfg, tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "nonfinite"] == [2, 5, 6]
    assert [r["skipped"] for r in records if r["kind"] == "train"] == [0, 1, 1, 1, 2]
    # The last good checkpoint is kept and holds finite weights.
    (ckpt,) = iter_checkpoints(tmp_path / "run")
    assert ckpt.name == "iter_0000003.pth"
    assert all(torch.isfinite(v).all() for v in _weights(ckpt).values() if v.is_floating_point())


def test_a_skipped_step_leaves_the_weights_untouched(tiny_dataset: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from segdistill.distill.distiller import DistillStudent

    real_forward = DistillStudent.forward

    def always_nan(self: DistillStudent, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        losses = real_forward(self, *args, **kwargs)
        return {k: v * float("nan") for k, v in losses.items()}

    monkeypatch.setattr(DistillStudent, "forward", always_nan)
    cfg = tiny_config(tiny_dataset, **{"train.iters": 2, "train.max_nonfinite_steps": 5, "train.eval_interval": 100})
    train(cfg, tmp_path / "run")
    torch.manual_seed(cfg.seed)
    fresh = build_segmentor("pspnet_r18-d8-tiny", 3).state_dict()
    trained = _weights(tmp_path / "run" / "final.pth")
    # Parameters and BN running statistics move only through a real step; BN buffers do update
    # in the forward, so compare the parameters.
    params = {k for k, _ in build_segmentor("pspnet_r18-d8-tiny", 3).named_parameters()}
    assert all(torch.equal(fresh[k], trained[k]) for k in params)


def test_distillation_run_with_a_teacher_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "teacher.pth", build_segmentor("pspnet_r50-d8-tiny", 3).state_dict())
    cfg = config_from_dict({
        **{k: v for k, v in _raw(tiny_config(tiny_dataset)).items() if k != "teacher"},
        "teacher": {"model": "pspnet_r50-d8-tiny", "checkpoint": str(tmp_path / "teacher.pth")},
        "distill": {"losses": [
            {"name": "cwd_logits", "type": "cwd", "student": "decode_head.conv_seg",
             "teacher": "decode_head.conv_seg", "tau": 1.0, "weight": 5.0},
            {"name": "cwd_feat", "type": "cwd", "student": "decode_head.bottleneck",
             "teacher": "decode_head.bottleneck", "tau": 1.0, "weight": 1.0, "connector": "convbn"}]},
    })
    result = train(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kind"] == "eval_teacher"
    assert {"loss_cwd_logits", "loss_cwd_feat"} <= set(rows[1])
    assert result.teacher_metrics is not None
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "iter_0000006.pth", weights_only=False)
    assert set(ckpt["connectors"]) and not any(k.startswith("connectors") for k in ckpt["state_dict"])


def _raw(cfg: Config) -> dict[str, Any]:
    from segdistill.config import to_dict
    return to_dict(cfg)


def test_unwritable_run_folder_is_a_user_error(tiny_dataset: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write to the run folder"):
        train(tiny_config(tiny_dataset), blocker / "run")


@pytest.mark.parametrize("case, message", [
    ("missing", "teacher.pth does not exist"),
    ("corrupt", "is unreadable"),
    ("classes", r"predicts 7 classes but the dataset \(folder at"),
    ("model", "does not fit the model: .*missing"),
])
def test_bad_teacher_checkpoints_are_one_line_errors(case: str, message: str, tiny_dataset: Path,
                                                     tmp_path: Path) -> None:
    path = tmp_path / "teacher.pth"
    if case == "corrupt":
        path.write_bytes(b"PK\x03\x04 not really a checkpoint")
    elif case == "classes":
        save_checkpoint(path, build_segmentor("pspnet_r50-d8-tiny", 7).state_dict())
    elif case == "model":
        save_checkpoint(path, build_segmentor("pspnet_r18-d8-tiny", 3).state_dict())
    tree = _raw(tiny_config(tiny_dataset))
    tree["teacher"] = {"model": "pspnet_r50-d8-tiny", "checkpoint": str(path)}
    with pytest.raises(UserError, match=message) as err:
        train(config_from_dict(tree), tmp_path / "run")
    assert "\n" not in str(err.value)


def test_an_elastic_restart_of_a_finished_run_is_done_not_an_error(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tiny_dataset, **{"train.iters": 2, "train.eval_interval": 100})
    train(cfg, tmp_path / "run")
    with pytest.raises(UserError, match="already at iteration 2 of 2"):
        train(cfg, tmp_path / "run")  # a person re-running a finished run is told so
    # torchrun --max-restarts restarts the whole group when a rank fails while exiting a finished run.
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    capsys.readouterr()
    result = train(cfg, tmp_path / "run")
    assert result.iterations == 2 and "already complete" in capsys.readouterr().out


def test_a_second_ctrl_c_stops_without_waiting_for_the_checkpoint() -> None:
    # Independent of what the test process inherited (SIGINT is ignored under `&`, nohup, some CI runners):
    # set Python's own handler for the test, and compare with it afterwards.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with trainer_mod._StopSignal() as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.signum == signal.SIGINT  # the first asks for a checkpoint and a clean stop
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_a_run_started_with_sigint_ignored_keeps_ignoring_it_but_still_saves_on_sigterm() -> None:
    inherited = {sig: signal.signal(sig, handler) for sig, handler in
                 ((signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, signal.SIG_DFL))}
    try:
        with trainer_mod._StopSignal() as stop:
            signal.raise_signal(signal.SIGINT)  # a background run: the terminal's Ctrl-C is not for it
            assert stop.signum == 0
            signal.raise_signal(signal.SIGTERM)
            assert stop.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        for sig, handler in inherited.items():
            signal.signal(sig, handler)


def test_a_crash_during_the_final_evaluation_resumes_and_finishes(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Bug: the checkpoint was written before the evaluation of the same iteration, so a crash in the
    # final evaluation left iter_<last>.pth without final.pth, and the rerun refused as "already at
    # iteration 6 of 6". The CamVid teacher lost its iteration-400 evaluation the same way.
    cfg = tiny_config(tiny_dataset, **{"train.checkpoint_interval": 3, "train.eval_interval": 3})
    real = trainer_mod.evaluate
    calls = []

    def crash_on_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("evaluation worker died")
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "evaluate", crash_on_second)
        with pytest.raises(RuntimeError, match="worker died"):
            train(cfg, tmp_path / "run")
    assert [p.name for p in iter_checkpoints(tmp_path / "run")] == ["iter_0000003.pth"]
    train(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["kind"] == "eval"] == [3, 6]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["iterations"] == 6
    assert (tmp_path / "run" / "final.pth").is_file()
