"""Through the real command line: torchrun with 2 gloo processes, and a run killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from segdistill.config import config_from_dict, dump_config

from conftest import tiny_config_tree

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _config_file(tmp_path: Path, data_root: Path, **extra: Any) -> Path:
    tree = tiny_config_tree(data_root)
    tree["optim"]["lr"] = 0.01
    tree["train"].update(iters=8, batch_size=4, eval_interval=8, checkpoint_interval=4)
    cfg = config_from_dict(tree, [f"{k}={v}" for k, v in extra.items()])
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_config(cfg))
    return path


def _segdistill(*args: str, nproc: int = 1, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "segdistill.cli"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "segdistill.cli"]
    out = subprocess.run([*launcher, *args], env=ENV, capture_output=True, text=True, timeout=300, **kwargs)
    # A rendezvous port taken by another process or a gloo connect reset on loopback is the
    # machine's, not ours: launch once more, and only for those errors.
    if nproc > 1 and out.returncode != 0 and any(m in out.stderr for m in _LAUNCH_FLAKES):
        out = subprocess.run([*launcher, *args], env=ENV, capture_output=True, text=True, timeout=300, **kwargs)
    return out


_LAUNCH_FLAKES = ("Address already in use", "EADDRINUSE", "Connection reset by peer", "Connection refused")


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_two_gloo_processes_follow_the_single_process_trajectory(tiny_dataset: Path, tmp_path: Path) -> None:
    single = _segdistill("train", str(_config_file(tmp_path, tiny_dataset)), "--work-dir", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-2000:]
    # Same global batch (2 x 2 = 4) and the same samples in the same order: only BN batch statistics
    # (per rank) and dropout masks differ, so the loss curves agree closely but not to the bit.
    double = _segdistill("train", str(_config_file(tmp_path, tiny_dataset)), "--work-dir", str(tmp_path / "two"),
                         "train.batch_size=2", nproc=2)
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        assert abs(a - b) <= 0.05 * a, (one, two)
    # Only rank 0 writes: one metrics file, one set of checkpoints.
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["iter_0000004.pth", "iter_0000008.pth"]

    # Distributed evaluation counts every sample once: the numbers equal one process's exactly.
    ckpt = str(tmp_path / "one" / "final.pth")
    cfg = str(_config_file(tmp_path, tiny_dataset))
    e1 = _segdistill("eval", cfg, "--checkpoint", ckpt, "--out", str(tmp_path / "e1.json"))
    e2 = _segdistill("eval", cfg, "--checkpoint", ckpt, "--out", str(tmp_path / "e2.json"), nproc=2)
    assert e1.returncode == 0 and e2.returncode == 0, e1.stderr[-1000:] + e2.stderr[-1000:]
    m1, m2 = json.loads((tmp_path / "e1.json").read_text()), json.loads((tmp_path / "e2.json").read_text())
    assert m1 == m2
    assert m1["per_class"]["floor"]["support"] > 0


def test_sigkill_mid_run_then_resume_ends_where_an_uninterrupted_run_ends(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = str(_config_file(tmp_path, tiny_dataset, **{"train.iters": 16, "train.checkpoint_interval": 2,
                                                      "train.eval_interval": 100, "train.batch_size": 2}))
    straight = _segdistill("train", cfg, "--work-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "segdistill.cli", "train", cfg, "--work-dir", str(run)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "checkpoints" / "iter_0000006.pth").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final.pth").exists(), "the run finished before it could be killed"

    resumed = _segdistill("train", cfg, "--work-dir", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a = torch.load(tmp_path / "straight" / "final.pth", weights_only=True)["state_dict"]
    b = torch.load(run / "final.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_errors_are_one_line_with_nonzero_exit(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = _config_file(tmp_path, tiny_dataset)
    bad = _segdistill("train", str(cfg), "optim.lrr=0.1")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "did you mean 'lr'" in bad.stderr and "Traceback" not in bad.stderr
    debug = _segdistill("--debug", "train", str(cfg), "optim.lrr=0.1")
    assert debug.returncode == 2 and "Traceback" in debug.stderr


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_wrong_dataset_layout_is_named(tiny_dataset: Path, tmp_path: Path, missing: str) -> None:
    import shutil
    shutil.rmtree(tiny_dataset / missing)
    out = _segdistill("train", str(_config_file(tmp_path, tiny_dataset)), "--work-dir", str(tmp_path / "r"))
    assert out.returncode == 2
    assert f"no {missing}/ folder" in out.stderr and "Traceback" not in out.stderr
