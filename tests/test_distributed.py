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


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not path.exists():
        time.sleep(0.05)
    assert path.exists(), f"{path.name} never appeared (exit {proc.poll()})"


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "final.pth", weights_only=True)["state_dict"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_the_whole_process_group_saves_despite_loader_workers(
        sig: signal.Signals, tiny_dataset: Path, tmp_path: Path) -> None:
    # Ctrl-C, `kill -TERM -PGID` and SLURM signal the DataLoader workers too. They must not die
    # first, or the main process fails ("worker killed by signal") without its stop checkpoint.
    cfg = str(_config_file(tmp_path, tiny_dataset, **{"train.iters": 16, "train.checkpoint_interval": 4,
                                                      "train.eval_interval": 100, "train.batch_size": 2}))
    straight = _segdistill("train", cfg, "--work-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]

    run = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "segdistill.cli", "train", cfg, "--work-dir", str(run),
                             "data.workers=2", "data.persistent_workers=true"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal job or a SLURM step
    _wait_for(run / "checkpoints" / "iter_0000004.pth", proc)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert f"{sig.name} at iteration" in err and "Traceback" not in err, err[-2000:]
    assert not (run / "final.pth").exists(), "the run finished before it could be stopped"

    resumed = _segdistill("train", cfg, "--work-dir", str(run), "data.workers=2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a, b = _final_weights(tmp_path / "straight"), _final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), "workers or the stop changed the trajectory"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find torchrun's workers")
def test_torchrun_elastic_restart_resumes_from_the_last_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    # A short rank timeout turns any hang while re-joining into a failure torchrun restarts again.
    cfg = str(_config_file(tmp_path, tiny_dataset, **{"train.iters": 16, "train.checkpoint_interval": 2,
                                                      "train.eval_interval": 100, "train.batch_size": 2,
                                                      "train.dist_timeout_min": 1}))
    straight = _segdistill("train", cfg, "--work-dir", str(tmp_path / "straight"), nproc=2)
    assert straight.returncode == 0, straight.stderr[-2000:]

    run = tmp_path / "elastic"
    log = (tmp_path / "elastic.log").open("w")
    # As the README tells users: without this, torch 2.13's shared rendezvous store hands restarted
    # ranks their dead peers' addresses (the warning checked below says so).
    env = {**ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "--max-restarts=3", "-m", "segdistill.cli", "train", cfg, "--work-dir", str(run)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(run / "checkpoints" / "iter_0000006.pth", proc)
        ranks = _children(proc.pid)
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGKILL)  # a node fault: one rank vanishes without a word
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "elastic.log").read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in text, "warned although the store is not shared"
    assert "resumed from" in text, text[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["kind"] == "train"] == list(range(1, 17))
    a, b = _final_weights(tmp_path / "straight"), _final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), "the restarted run diverged from the uninterrupted one"


def test_torchrun_restarts_with_a_shared_rendezvous_store_warn(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = str(_config_file(tmp_path, tiny_dataset, **{"train.iters": 2, "train.eval_interval": 100}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "--max-restarts=1", "-m", "segdistill.cli", "train", cfg, "--work-dir", str(tmp_path / "run")]
    out = subprocess.run(launcher, env=ENV, capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and any(m in out.stderr for m in _LAUNCH_FLAKES):
        out = subprocess.run(launcher, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun") == 1  # rank 0 only
