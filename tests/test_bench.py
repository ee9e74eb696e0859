"""``segdistill bench``: the step breakdown adds up, FLOPs and gradients are right, every mode runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_config_tree
from torch.utils.flop_counter import FlopCounterMode

from segdistill import cli
from segdistill.bench import report as bench_report
from segdistill.bench import train as bench
from segdistill.bench.infer import bench_infer
from segdistill.bench.train import bench_train, compare_variants, real_batches, timed_step, variants
from segdistill.config import Config, DistillTerm, config_from_dict, load_config
from segdistill.distill.distiller import DistillStudent, tap_channels
from segdistill.distill.teacher import FrozenTeacher
from segdistill.engine.distributed import DistEnv
from segdistill.engine.run import build_run
from segdistill.engine.step import STEP_REGIONS
from segdistill.engine.trainer import train
from segdistill.errors import UserError
from segdistill.models import build_segmentor, save_checkpoint

CWD_LOGITS = {"name": "cwd_logits", "type": "cwd", "student": "decode_head.conv_seg",
              "teacher": "decode_head.conv_seg", "tau": 1.0, "weight": 5.0}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Overrides conftest's 2 threads: on a 2-core machine shared with other jobs, two OpenMP threads
    # that spin-wait for each other make a tiny step up to 100x slower; the results do not change.
    torch.set_num_threads(1)


def write_config(tmp_path: Path, teacher: bool = True, losses: list[dict[str, Any]] | None = None,
                 **sections: dict[str, Any]) -> Path:
    tree: dict[str, Any] = {
        "name": "bench_tiny",
        "data": {"kind": "cityscapes", "crop_size": [48, 64], "workers": 0},
        "student": {"model": "pspnet_r18-d8-tiny"},
        "train": {"batch_size": 2, "iters": 100},
    }
    if teacher:
        tree["teacher"] = {"model": "pspnet_r50-d8-tiny", "checkpoint": "never-loaded.pth"}
        tree["distill"] = {"losses": losses if losses is not None else [CWD_LOGITS]}
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def run_cli(*argv: str) -> int:
    # Through segdistill's real CLI: overrides after options, UserError -> one line and exit code 2.
    return cli.main(["bench", *argv])


def test_train_report_names_every_region_and_writes_json(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path)
    out = tmp_path / "results" / "bench.json"
    assert run_cli(str(cfg_path), "--synthetic", "--iters", "2", "--warmup", "1", "--crop", "32", "48",
                   "--batch", "3", "--threads", "1", "--json", str(out), "optim.lr=0.005") == 0
    stdout = capsys.readouterr().out
    assert "| variant | data | teacher fwd | forward (student + terms) | backward | optimizer | step |" in stdout
    assert "target <= 1.05" in stdout

    report = json.loads(out.read_text())
    assert report["machine"]["threads"] == 1
    assert report["mode"] == "train" and report["overrides"][-2:] == ["data.crop_size=[32,48]", "train.batch_size=3"]
    [r] = report["train"]
    assert r["batch"] == 3 and r["crop"] == [32, 48]
    assert r["settings"]["teacher.bf16"] and r["settings"]["data"] == "synthetic"
    assert len(r["steps_s"]) == len(r["teacher_alone_s"]) == len(r["student_alone_s"]) == 2
    for step in r["steps_s"]:
        assert set(step) == set(STEP_REGIONS) | {"total"}


def _config(tmp_path: Path, **kw: Any) -> Config:
    return load_config(write_config(tmp_path, **kw))


def test_flops_equal_an_independent_count(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    result = bench_train(cfg, iters=1, warmup=0, synthetic=True)
    h, w = cfg.data.crop_size
    image = torch.randn(cfg.train.batch_size, 3, h, w)
    label = torch.randint(0, 19, (cfg.train.batch_size, h, w))
    # Independent: a plain frozen teacher (no fast paths) and the trainer's one-backward step.
    teacher = FrozenTeacher(build_segmentor("pspnet_r50-d8-tiny", 19), ["decode_head.conv_seg"])
    with FlopCounterMode(display=False) as t_count:
        teacher_out = teacher(image)
    student = build_segmentor("pspnet_r18-d8-tiny", 19)
    terms = [DistillTerm(**CWD_LOGITS)]
    model = DistillStudent(student, terms, tap_channels(student, teacher.model, terms))
    with FlopCounterMode(display=False) as s_count:
        sum(model(image, label, teacher_out).values()).backward()
    assert t_count.get_total_flops() > 0 and s_count.get_total_flops() > 0
    assert result.flops == {"teacher_forward": t_count.get_total_flops(),
                            "student_forward_backward": s_count.get_total_flops(),
                            "total": t_count.get_total_flops() + s_count.get_total_flops()}


def _teacher_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(3)
    path = tmp_path / "teacher.pth"
    save_checkpoint(path, build_segmentor("pspnet_r50-d8-tiny", 3).state_dict(), meta={})
    return path


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_benchmark_steps_exactly_the_trainers_step(tiny_dataset: Path, tmp_path: Path, accumulate: int) -> None:
    """Same run, same data: the trainer's weights after 3 iterations equal the benchmark's, to the bit."""
    tree = tiny_config_tree(tiny_dataset)
    tree["teacher"] = {"model": "pspnet_r50-d8-tiny", "checkpoint": str(_teacher_checkpoint(tmp_path)),
                       "bf16": False}
    tree["distill"] = {"losses": [CWD_LOGITS, {"name": "cwd_feats", "type": "cwd", "student": "decode_head.bottleneck",
                                               "teacher": "decode_head.bottleneck", "connector": "convbn",
                                               "weight": 1.0, "tau": 4.0}]}
    tree["train"].update({"iters": 3, "eval_interval": 100, "checkpoint_interval": 100, "eval_teacher": False,
                          "accumulate": accumulate})
    cfg = config_from_dict(tree)
    trained = train(cfg, tmp_path / "run")
    assert trained.iterations == 3
    final = torch.load(tmp_path / "run" / "final.pth", weights_only=False)["state_dict"]

    env = DistEnv()
    run = build_run(cfg, 3, env)  # loads the same teacher checkpoint
    data = real_batches(cfg, env)
    for it in range(3):
        timed_step(run, data, it)
    ours = run.student.state_dict()
    assert set(ours) == set(final)
    for key, value in final.items():
        assert torch.equal(ours[key], value), key


def test_real_dataloader_on_a_folder_dataset(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path, data={"kind": "folder", "root": str(tiny_dataset), "scale": [96, 64],
                                            "ratio_range": [0.75, 1.25], "crop_size": [48, 48], "workers": 0})
    out = tmp_path / "b.json"
    assert run_cli(str(cfg_path), "--iters", "2", "--warmup", "1", "--json", str(out)) == 0
    [r] = json.loads(out.read_text())["train"]
    assert r["settings"]["data"].startswith(f"folder {tiny_dataset}")
    assert r["crop"] == [48, 48]
    for step in r["steps_s"]:
        assert step["data"] > 0 and step["teacher"] > 0
    assert len(r["steps_s"]) == len(r["teacher_alone_s"]) == len(r["student_alone_s"]) == 2
    # The models were built for the dataset's 3 classes: fewer classifier FLOPs than with 19.
    cfg19 = dataclasses.replace(load_config(cfg_path), data=dataclasses.replace(load_config(cfg_path).data,
                                                                                 kind="cityscapes"))
    flops19 = bench_train(cfg19, iters=1, warmup=0, synthetic=True).flops["total"]
    assert r["flops"]["total"] < flops19


def test_infer_mode_reports_every_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "infer.json"
    assert run_cli(str(write_config(tmp_path)), "--mode", "infer", "--iters", "2", "--warmup", "0",
                   "--no-compile", "--no-onnx", "--json", str(out)) == 0
    assert "| model | backend | batch | latency ms | images/s | note |" in capsys.readouterr().out
    rows = json.loads(out.read_text())["infer"]
    keys = {(r["role"], r["backend"], r["batch"]) for r in rows}
    assert len(keys) == len(rows) == 2 * 2 * 4  # teacher+student, batch 1 and 2, four backends
    for r in rows:
        if r["backend"].startswith("eager"):
            assert r["latency_ms"] > 0
            assert r["images_per_s"] == pytest.approx(r["batch"] / (r["latency_ms"] / 1e3))
        else:
            assert r["latency_ms"] is None and r["images_per_s"] is None and r["note"].startswith("skipped")


def test_onnxruntime_row_checks_the_graph(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg = load_config(write_config(tmp_path, teacher=False), ["train.batch_size=1"])
    rows = bench_infer(cfg, iters=1, warmup=0, compile=False)
    [ort_row] = [r for r in rows if r.backend.startswith("onnxruntime")]
    assert ort_row.latency_ms is not None and ort_row.latency_ms > 0, ort_row.note
    diff = float(ort_row.note.rsplit(" ", 1)[1])
    assert diff < 1e-3


def test_a_failing_compile_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", no_compiler)
    cfg = load_config(write_config(tmp_path, teacher=False))
    rows = bench_infer(cfg, iters=1, warmup=0, onnx=False)
    compiled = [r for r in rows if r.backend.startswith("torch.compile")]
    assert [r.batch for r in compiled] == [1, 2]
    for r in compiled:
        assert r.latency_ms is None and r.note == "n/a: RuntimeError: no C++ compiler found"
    assert "n/a" in bench_report.infer_table(rows)


def test_compare_all_off_against_all_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp.json"
    assert run_cli(str(write_config(tmp_path)), "--synthetic", "--compare", "--in-process", "--iters", "1",
                   "--warmup", "0", "--json", str(out)) == 0
    assert "target <= 0.5" in capsys.readouterr().out
    report = json.loads(out.read_text())
    off, on = report["train"]
    assert (off["label"], on["label"]) == ("all off", "all on")
    assert report["all_on_over_all_off"] == pytest.approx(on["median_ms"]["step"] / off["median_ms"]["step"])
    assert off["settings"]["teacher_kind"].startswith("reference-like")
    assert not any(off["settings"][k] for k in ("teacher.bf16", "teacher.fold_bn", "teacher.channels_last",
                                                "student.channels_last"))
    assert off["settings"]["train.amp"] == "none" and on["settings"]["train.amp"] == "bf16"
    assert all(on["settings"][k] for k in ("teacher.bf16", "teacher.fold_bn", "teacher.channels_last",
                                           "student.channels_last"))
    # The reference-like teacher runs its auxiliary head too; the frozen one only what the taps need.
    assert off["flops"]["teacher_forward"] > on["flops"]["teacher_forward"]
    assert off["flops"]["student_forward_backward"] == on["flops"]["student_forward_backward"]


def test_an_isolated_variant_runs_in_its_own_process(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    [result] = compare_variants(cfg, [variants(False)[1]], isolate=True, iters=1, warmup=0, synthetic=True)
    assert result.label == "all on" and result.settings["train.amp"] == "bf16"
    assert len(result.steps) == 1 and result.flops["total"] > 0


def test_switches_list_one_switch_per_variant() -> None:
    labels = [v.label for v in variants(True)]
    assert labels[:3] == ["all off", "all on", "frozen teacher, no switches"]
    assert len(labels) == 3 + len(bench.SWITCHES)
    for v in variants(True)[3:]:
        changed = {k for k, value in v.overrides if bench.ALL_OFF[k] != value}
        assert len(changed) == 1 and not v.reference_teacher


@pytest.mark.parametrize("argv, message", [
    (["--iters", "0"], "--iters must be >= 1"),
    (["--mode", "infer", "--compare"], "use --mode train"),
    (["--switches"], "add --compare"),
    (["--crop", "4", "64"], "at least 8 pixels"),
    (["--batch", "1"], "needs a batch of at least 2"),
])
def test_bad_options_are_one_line_user_errors(tmp_path: Path, argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(str(write_config(tmp_path)), "--synthetic", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("segdistill bench: error: ") and message in err and err.count("\n") == 1


def test_compare_needs_a_teacher(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="names a teacher"):
        compare_variants(_config(tmp_path, teacher=False), variants(False), isolate=False, iters=1, warmup=0)


def test_a_user_error_in_an_isolated_variant_reaches_the_caller(tmp_path: Path) -> None:
    cfg = _config(tmp_path, data={"kind": "folder", "root": str(tmp_path / "missing")})
    with pytest.raises(UserError, match="missing"):
        compare_variants(cfg, [variants(False)[1]], isolate=True, iters=1, warmup=0, synthetic=False)
