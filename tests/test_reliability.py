"""Nothing a user made is lost, and real OpenMMLab checkpoints load as they are: each case through the CLI.

mmengine checkpoints without mmengine; export/predict/info without the dataset; resume from the wrong
kind of file; predict never writing among the data or over files; killed writes; the run-folder lock;
the config check on resume; finite checkpoints only.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_config_tree, write_tiny_folder_dataset
from PIL import Image

from segdistill.cli import main
from segdistill.config import config_from_dict, dump_config, load_config
from segdistill.engine import run as run_mod
from segdistill.engine.checkpointing import iter_checkpoints
from segdistill.models import build_segmentor, save_checkpoint

STUDENT, TEACHER = "pspnet_r18-d8-tiny", "pspnet_r50-d8-tiny"
CLASSES = ["floor", "bright", "dark"]  # what write_tiny_folder_dataset's classes.txt says
PALETTE = [(128, 64, 128), (220, 220, 0), (0, 0, 142)]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> str:
    """Run the CLI, expect exit 2 and exactly one error line (no traceback) holding every fragment."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"segdistill {argv[0]}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _write_config(path: Path, data_root: Path, **overrides: Any) -> Path:
    tree = tiny_config_tree(data_root)
    tree["train"].update({"iters": 4, "checkpoint_interval": 2, "eval_interval": 4})
    path.write_text(dump_config(config_from_dict(tree, [f"{k}={v}" for k, v in overrides.items()])))
    return path


def _finite(path: Path) -> bool:
    state = torch.load(path, weights_only=False)
    trees = [state["state_dict"], state.get("connectors", {}), state.get("optimizer", {}).get("state", {})]
    tensors = [t for tree in trees for t in _tensors(tree)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensors(v)]
    return []


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A finished 4-iteration run (checkpoints at 2 and 4): (config file, run folder, dataset root). Read only."""
    base = tmp_path_factory.mktemp("finished")
    data = write_tiny_folder_dataset(base / "data")
    cfg = _write_config(base / "tiny.yaml", data)
    assert main(["train", str(cfg), "--work-dir", str(base / "run")]) == 0
    return cfg, base / "run", data


# ---- 1. mmengine / mmrazor checkpoints without mmengine ------------------------------------------


class HistoryBuffer:
    """mmengine.logging.history_buffer.HistoryBuffer's pickled form: numpy arrays in its __dict__."""

    def __init__(self, log: list[float], count: list[int]) -> None:
        self._log_history = np.array(log)
        self._count_history = np.array(count)
        self.max_length = 1000000


class MessageHub:
    """mmengine.logging.message_hub.MessageHub: pickled through __getstate__ -> __dict__."""

    def __init__(self, name: str, log_scalars: dict, runtime_info: dict) -> None:
        self.instance_name = name
        self._log_scalars = log_scalars
        self._runtime_info = runtime_info
        self._resumed_keys = collections.OrderedDict((k, True) for k in [*log_scalars, *runtime_info])

    def __getstate__(self) -> dict:
        return self.__dict__


class ConfigDict(dict):
    """mmengine.config.config.ConfigDict (an addict.Dict): its own state is itself."""

    def __getstate__(self) -> dict:
        return self

    def __setstate__(self, state: dict) -> None:
        self.update(state)


_MMENGINE = {"mmengine.logging.history_buffer": HistoryBuffer, "mmengine.logging.message_hub": MessageHub,
             "mmengine.config.config": ConfigDict}


def save_like_mmengine(path: Path, state_dict: dict[str, torch.Tensor], dataset_meta: dict,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What mmengine's Runner.save_checkpoint writes (mmseg 1.x, mmrazor 1.x), its classes pickled under
    mmengine's module names; the modules exist only while saving."""
    with monkeypatch.context() as m:
        for name in ("mmengine", "mmengine.logging", "mmengine.config", *_MMENGINE):
            m.setitem(sys.modules, name, types.ModuleType(name))
        for module, cls in _MMENGINE.items():
            m.setattr(sys.modules[module], cls.__name__, cls, raising=False)
            m.setattr(cls, "__module__", module)
        cfg = ConfigDict(model=ConfigDict(type="SingleTeacherDistill"), optim_wrapper=ConfigDict(lr=0.01))
        hub = MessageHub("mmengine", collections.OrderedDict({"train/loss": HistoryBuffer([1.5, 1.2], [1, 1])}),
                         collections.OrderedDict(cfg=cfg, iter=80000, dataset_meta=dataset_meta))
        torch.save({
            "meta": {"cfg": "model = dict(type='SingleTeacherDistill')", "seed": 0, "experiment_name": "cwd",
                     "time": "20231224_101010", "mmengine_version": "0.10.7", "epoch": 0, "iter": 80000,
                     "dataset_meta": dataset_meta},
            "state_dict": collections.OrderedDict(state_dict),
            "message_hub": hub,
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}},
                          "param_groups": [{"lr": 1e-4, "momentum": 0.9, "params": [0]}]},
            "param_schedulers": [{"by_epoch": False, "base_values": [0.01], "last_step": 80000, "eta_min": 1e-4,
                                  "power": 0.9, "_last_lr": [np.float64(1e-4)]}],
        }, path)


def test_mmrazor_checkpoint_of_mmengines_runner_loads_without_mmengine(
        finished: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _, _ = finished
    torch.manual_seed(5)
    student, teacher = build_segmentor(STUDENT, 3), build_segmentor(TEACHER, 3)
    sd = {f"architecture.{k}": v for k, v in student.state_dict().items()}
    sd.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    sd["distiller.connectors.loss_s4.weight"] = torch.zeros(2)
    ckpt = tmp_path / "cwd_mmrazor.pth"
    meta = {"classes": ("road", "car", "sky"), "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "label_map": None,
            "reduce_zero_label": False}
    save_like_mmengine(ckpt, sd, meta, monkeypatch)
    for name in ("mmengine", "mmcv"):  # not importable here, even where installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        torch.load(ckpt, weights_only=False)  # what `segdistill eval` did before: "No module named 'mmengine'"

    plain = save_checkpoint(tmp_path / "plain.pth", student.state_dict())
    for name, path, extra in [("razor", ckpt, []), ("plain", plain, [])]:
        assert main(["eval", str(cfg), "--checkpoint", str(path), "--out", str(tmp_path / f"{name}.json"), *extra]) == 0
    assert json.loads((tmp_path / "razor.json").read_text()) == json.loads((tmp_path / "plain.json").read_text())
    assert main(["eval", str(cfg), "--checkpoint", str(ckpt), "--part", "teacher", "--model", TEACHER]) == 0

    # export needs neither mmengine nor the dataset: classes and palette come from the checkpoint.
    out = tmp_path / "student.pth"
    assert main(["export", str(cfg), "--checkpoint", str(ckpt), "--out", str(out), "data.root=/nonexistent"]) == 0
    exported = torch.load(out, weights_only=True)
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in student.state_dict().items())
    assert exported["meta"]["dataset_meta"]["classes"] == ["road", "car", "sky"]
    assert exported["meta"]["source_meta"]["iter"] == 80000


def test_files_that_name_other_code_and_corrupt_files_are_refused(
        finished: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, run, _ = finished
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    torch.save({"state_dict": torch.load(run / "final.pth", weights_only=True)["state_dict"], "x": Payload()},
               tmp_path / "evil.pth")
    _error(capsys, ["export", str(cfg), "--checkpoint", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "e.pth")],
           "needs builtins.exec to load, which segdistill does not run")
    assert not marker.exists()

    data = (run / "final.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    _error(capsys, ["export", str(cfg), "--checkpoint", str(tmp_path / "cut.pth"), "--out", str(tmp_path / "c.pth")],
           "cut.pth is unreadable (", "it may be truncated")
    _error(capsys, ["train", str(cfg), "--work-dir", str(tmp_path / "r"), "--resume", str(tmp_path / "cut.pth")],
           "cut.pth is unreadable (")


# ---- 2. export, predict, info without the dataset -------------------------------------------------


def test_export_predict_info_need_no_dataset_when_the_checkpoint_says_the_classes(
        finished: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, run, data = finished
    images = tmp_path / "images"
    shutil.copytree(data / "images" / "val", images)
    gone = ["data.root=/nonexistent/cityscapes"]

    assert main(["export", str(cfg), "--checkpoint", str(run / "final.pth"), "--out", str(tmp_path / "s.pth"),
                 *gone]) == 0
    assert torch.load(tmp_path / "s.pth", weights_only=True)["meta"]["dataset_meta"]["classes"] == CLASSES
    assert main(["predict", str(cfg), "--checkpoint", str(run / "final.pth"), "--input", str(images),
                 "--out", str(tmp_path / "pred"), *gone]) == 0
    with Image.open(tmp_path / "pred" / "f000_pred.png") as im:  # the checkpoint's palette, not default colours
        assert [tuple(im.getpalette()[3 * i:3 * i + 3]) for i in range(3)] == PALETTE

    # A bare state dict records nothing: its classifier says 3 classes, and the colours are default ones.
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(run / "final.pth", weights_only=True)["state_dict"], bare)
    capsys.readouterr()
    assert main(["predict", str(cfg), "--checkpoint", str(bare), "--input", str(images),
                 "--out", str(tmp_path / "pred2"), *gone]) == 0
    assert "records no class names" in capsys.readouterr().err
    assert main(["export", str(cfg), "--checkpoint", str(bare), "--out", str(tmp_path / "b.pth"), *gone]) == 0
    _error(capsys, ["predict", str(cfg), "--checkpoint", str(bare), "--input", str(images), "--out",
                    str(tmp_path / "p3"), "--num-classes", "5", *gone], "does not fit the model")
    torch.save({"state_dict": {"backbone.stem.0.weight": torch.zeros(1)}}, tmp_path / "headless.pth")
    _error(capsys, ["predict", str(cfg), "--checkpoint", str(tmp_path / "headless.pth"), "--input", str(images),
                    "--out", str(tmp_path / "p4"), *gone], "pass --num-classes N")
    assert main(["info", STUDENT, "--num-classes", "3", "--size", "32", "32"]) == 0


# ---- 3. --resume FILE with the wrong kind of checkpoint -------------------------------------------


def test_resume_from_weights_only_files_is_one_line_and_from_ddp_prefixed_works(
        finished: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run, _ = finished
    for name in ("final.pth", "best.pth"):
        _error(capsys, ["train", str(cfg), "--work-dir", str(tmp_path / "a"), "--resume", str(run / name)],
               f"{name} is not a segdistill training checkpoint (it has no connectors, optimizer, scaler, rng)",
               f"student.checkpoint={run / name}")
    mm = tmp_path / "mmseg_runner.pth"
    save_like_mmengine(mm, torch.load(run / "final.pth", weights_only=True)["state_dict"], {}, monkeypatch)
    _error(capsys, ["train", str(cfg), "--work-dir", str(tmp_path / "a"), "--resume", str(mm)],
           "is not a segdistill training checkpoint", "meta.iteration")
    assert not (tmp_path / "a" / "config.yaml").exists()  # a refused run leaves no config behind

    # A training checkpoint whose weights carry DDP's `module.` prefix resumes, to the same final weights.
    state = torch.load(run / "checkpoints" / "iter_0000002.pth", weights_only=False)
    state["state_dict"] = {f"module.{k}": v for k, v in state["state_dict"].items()}
    torch.save(state, tmp_path / "ddp.pth")
    assert main(["train", str(cfg), "--work-dir", str(tmp_path / "b"), "--resume", str(tmp_path / "ddp.pth")]) == 0
    a = torch.load(run / "final.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- 4. predict never writes among the data or over files; killed writes; a deleted run folder ----


def test_predict_never_writes_into_the_data_nor_over_existing_files(
        finished: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, run, data = finished
    before = sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*"))
    ckpt = ["--checkpoint", str(run / "final.pth")]
    for out in (data / "masks" / "val", data / "images" / "val" / "preds", data / "extra"):
        _error(capsys, ["predict", str(cfg), *ckpt, "--split", "val", "--out", str(out)],
               "is inside the input or dataset folder")
    _error(capsys, ["predict", str(cfg), *ckpt, "--input", str(data / "images" / "val"),
                    "--out", str(data / "images" / "val" / "preds")], "is inside the input or dataset folder")
    # With --input, the config's dataset is protected too: predictions among the labels break later runs.
    _error(capsys, ["predict", str(cfg), *ckpt, "--input", str(data / "images" / "val"),
                    "--out", str(data / "masks" / "val")], "is inside the input or dataset folder")
    assert sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*")) == before

    out = tmp_path / "pred"
    assert main(["predict", str(cfg), *ckpt, "--split", "val", "--out", str(out)]) == 0
    mine = out / "f000_pred.png"
    mine.write_bytes(b"a file the user edited")
    _error(capsys, ["predict", str(cfg), *ckpt, "--split", "val", "--out", str(out)],
           "already exists (8 of the 8 outputs do); pass --overwrite")
    assert mine.read_bytes() == b"a file the user edited"
    assert main(["predict", str(cfg), *ckpt, "--split", "val", "--out", str(out), "--overwrite"]) == 0
    assert Image.open(mine).mode == "P"


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # e.g. TensorBoard's writer
def test_a_run_folder_deleted_mid_run_ends_in_one_line(
        finished: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _, _ = finished
    run = tmp_path / "run"
    real = run_mod.poly_lr

    def delete_at_2(it: int, *args: Any) -> float:
        if it == 2:
            shutil.rmtree(run)
        return real(it, *args)

    monkeypatch.setattr(run_mod, "poly_lr", delete_at_2)
    # Deleted during iteration 3; noticed at its log line (every iteration here), before any write.
    _error(capsys, ["train", str(cfg), "--work-dir", str(run)],
           f"the run folder {run} was deleted or moved during the run (noticed at iteration 3)")
    assert not run.exists()  # nothing re-created it


_STALLED_RUN = """
import pathlib, sys, time
import torch

marker = pathlib.Path(sys.argv[1])

def stalled_save(obj, f, *args, **kwargs):  # the first checkpoint write stops half-way and hangs
    pathlib.Path(f).write_bytes(b"half a checkpoint")
    marker.write_text("in save")
    time.sleep(300)

torch.save = stalled_save
from segdistill.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_the_run_folder_lock_and_a_killed_checkpoint_write(
        finished: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _, _ = finished
    run, marker = tmp_path / "run", tmp_path / "in_save"
    stray = tmp_path / ".iter_0000002.abcd1234.tmp.pth"  # our naming, but outside the run folder: not ours to delete
    stray.write_bytes(b"x")
    # data.workers=1: a forked loader worker must not keep the lock once the trainer is killed.
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", _STALLED_RUN, str(marker), "train", str(cfg), "--work-dir",
                                 str(run), "data.workers=1"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the first run never reached its checkpoint"
            time.sleep(0.2)
        _error(capsys, ["train", str(cfg), "--work-dir", str(run)],
               f"run folder {run} is in use by another segdistill train (pid {proc.pid} on ")
    finally:
        proc.kill()
        proc.wait()
    temps = [p.name for p in (run / "checkpoints").iterdir()]
    assert len(temps) == 1 and temps[0].startswith(".iter_0000002.") and temps[0].endswith(".tmp.pth")
    capsys.readouterr()
    assert main(["train", str(cfg), "--work-dir", str(run)]) == 0  # SIGKILL left no lock behind
    assert "removed 1 temporary file(s) of an interrupted write" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000002.pth", "iter_0000004.pth"]
    assert stray.exists()


# ---- 6. the config check on resume -----------------------------------------------------------------


def test_a_resume_refuses_a_changed_run_unless_accepted(
        finished: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, finished_run, _ = finished
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    saved = (run / "config.yaml").read_bytes()
    train = ["train", str(cfg), "--work-dir", str(run)]
    _error(capsys, [*train, "optim.lr=0.01"], "differs from the one", "iter_0000004.pth was trained with: "
           "optim.lr 0.02 -> 0.01; that is no longer the same run", "--accept-config-change")
    line = _error(capsys, [*train, "train.batch_size=4", "seed=1", "train.log_interval=2", "data.workers=1"],
                  "train.batch_size 2 -> 4", "seed 0 -> 1")
    assert "log_interval" not in line and "workers" not in line  # harmless changes are not listed
    _error(capsys, [*train, "train.log_interval=2", "train.device=cpu", "name=renamed"],
           "already at iteration 4 of 4; to train longer, raise train.iters and pass --accept-config-change")
    _error(capsys, [*train, "train.iters=6"], "train.iters 4 -> 6")
    _error(capsys, [*train, "train.iters=6", f"student.model={TEACHER}", "--accept-config-change"],
           f"cannot resume from {run / 'checkpoints' / 'iter_0000004.pth'}: its weights do not fit {TEACHER}")
    assert (run / "config.yaml").read_bytes() == saved  # no refused attempt rewrote it

    assert main([*train, "train.iters=6", "--accept-config-change"]) == 0
    changes = [r for r in _records(run) if r["kind"] == "config_change"]
    assert [(r["iter"], r["accepted"]) for r in changes] == [(5, {"train.iters": [4, 6]})]
    assert load_config(run / "config.yaml").train.iters == 6
    assert [p.name for p in iter_checkpoints(run)] == ["iter_0000006.pth", "iter_0000004.pth"]


# ---- 7. only finite checkpoints; a run with non-finite weights never ends with exit 0 --------------


def test_an_exploding_run_names_a_finite_checkpoint_and_resumes_from_it_with_a_lower_lr(
        finished: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _, _ = finished
    run = tmp_path / "run"
    train = ["train", str(cfg), "--work-dir", str(run), "train.iters=6", "train.checkpoint_interval=1",
             "train.max_nonfinite_steps=2"]
    real = run_mod.poly_lr

    def sigterm_at_2(it: int, *args: Any) -> float:
        if it == 2:
            signal.raise_signal(signal.SIGTERM)
        return real(it, *args)

    with monkeypatch.context() as m:
        m.setattr(run_mod, "poly_lr", sigterm_at_2)
        assert main(train) == 128 + signal.SIGTERM
    assert [p.name for p in iter_checkpoints(run)] == ["iter_0000003.pth", "iter_0000002.pth"]

    # lr 1e30 from iteration 4: its step leaves huge (still finite) weights, which give NaN from step 5 on.
    line = _error(capsys, [*train, "optim.lr=1e30", "--accept-config-change"],
                  "2 non-finite losses in a row at iteration 6; the last good checkpoint is "
                  f"{run / 'checkpoints' / 'iter_0000003.pth'}; lower optim.lr",
                  "set aside: iter_0000004.pth -> iter_0000004.suspect.pth")
    assert "--accept-config-change" in line
    # iter_2 was pruned when iter_4 was written (2 are kept); iter_4 gave the first NaN: set aside.
    assert [p.name for p in iter_checkpoints(run)] == ["iter_0000003.pth"]
    assert all(_finite(p) for p in iter_checkpoints(run))
    skipped = [r["iter"] for r in _records(run) if r["kind"] == "checkpoint_skipped"]
    assert skipped == [5]  # the step before it was not finite
    assert not (run / "final.pth").exists()

    assert main([*train, "optim.lr=0.01", "--accept-config-change"]) == 0  # as the message advises
    assert _finite(run / "checkpoints" / "iter_0000006.pth")
    # The exploded session's records after iteration 3 are gone, its accepted change with them.
    changes = [(r["iter"], r["accepted"]) for r in _records(run) if r["kind"] == "config_change"]
    assert changes == [(4, {"optim.lr": [0.02, 0.01]})]


def test_a_run_whose_weights_became_nonfinite_never_exits_0(
        finished: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _, _ = finished
    run = tmp_path / "run"
    train = ["train", str(cfg), "--work-dir", str(run), "train.iters=3", "train.checkpoint_interval=1"]
    # Fewer steps than max_nonfinite_steps (20): the loss guard alone would not stop this run.
    _error(capsys, [*train, "optim.lr=1e30"], "the weights are not finite at the end of the run (iteration 3), so "
           "final.pth was not written; no good checkpoint was saved; lower optim.lr")
    assert not (run / "final.pth").exists() and not (run / "best.pth").exists()
    assert iter_checkpoints(run) == []  # iteration 1's exploded weights are set aside, never offered
    assert main(train) == 0  # the original lr starts again
    assert _finite(run / "final.pth") and all(_finite(p) for p in iter_checkpoints(run))
