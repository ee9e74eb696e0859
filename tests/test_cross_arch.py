"""A transformer student distilled from a CNN teacher through the CLI: SegFormer-B0-tiny (stride-4 logits)
from PSPNet-R50-D8-tiny (stride-8 logits), CWD on the logits, on the tiny folder dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import tiny_config_tree

from segdistill.cli import main
from segdistill.config import config_from_dict, dump_config
from segdistill.models import build_segmentor, save_checkpoint


def _config(tiny_dataset: Path, tmp_path: Path, align: str) -> Path:
    save_checkpoint(tmp_path / "teacher.pth", build_segmentor("pspnet_r50-d8-tiny", 3).state_dict())
    tree = tiny_config_tree(tiny_dataset)
    tree["student"] = {"model": "segformer_mit-b0-tiny"}
    tree["teacher"] = {"model": "pspnet_r50-d8-tiny", "checkpoint": str(tmp_path / "teacher.pth")}
    tree["distill"] = {"losses": [{"name": "cwd_logits", "type": "cwd", "student": "decode_head.conv_seg",
                                   "teacher": "decode_head.conv_seg", "tau": 1.0, "weight": 5.0, "align": align}]}
    tree["optim"] = {"type": "adamw", "lr": 2e-4, "weight_decay": 0.01, "min_lr": 0.0,
                     "paramwise": [{"key": "norm", "decay_mult": 0.0}, {"key": "head", "lr_mult": 10.0}]}
    tree["train"].update({"iters": 3, "eval_interval": 3, "checkpoint_interval": 3, "eval_teacher": False})
    path = tmp_path / f"cross_{align}.yaml"
    path.write_text(dump_config(config_from_dict(tree)))
    return path


def test_segformer_student_from_a_pspnet_teacher(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_dataset, tmp_path, "student")
    assert main(["train", str(cfg), "--work-dir", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["iter"] for r in train] == [1, 2, 3]
    assert all(math.isfinite(r["loss_cwd_logits"]) and r["loss_cwd_logits"] > 0 for r in train)
    assert (tmp_path / "run" / "final.pth").is_file()


def test_without_align_the_stride_mismatch_is_one_line_naming_align(tiny_dataset: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tiny_dataset, tmp_path, "none")
    assert main(["train", str(cfg), "--work-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "align: student" in err and "differ in spatial size" in err
