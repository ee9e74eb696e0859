"""The README's first command, shortened: generate -> prepare -> teacher -> student -> CWD -> report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segdistill.cli import main
from segdistill.config import load_config
from segdistill.demo import ARMS, demo_configs

REPO = Path(__file__).resolve().parents[1]


def test_quick_demo_runs_every_stage_and_resumes_as_finished(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("cityscapesscripts")
    work = tmp_path / "demo"
    assert main(["demo", "--work-dir", str(work), "--quick"]) == 0
    out = capsys.readouterr().out
    assert "| student + CWD | 20 |" in out
    # The real preparation path ran on the generated polygons.
    assert (work / "data" / "train.txt").is_file()
    assert list((work / "data" / "gtFine" / "train").rglob("*_gtFine_labelTrainIds.png"))
    for arm in ARMS:
        results = json.loads((work / arm / "results.json").read_text())
        assert results["iterations"] == 20 and results["final"]["mIoU"] is not None
    assert (work / "predictions.png").stat().st_size > 10_000
    assert (work / "curves.png").is_file()
    assert "CWD changes the student's mIoU" in (work / "results.md").read_text()
    # Running it again finds every arm finished and only rebuilds the report.
    assert main(["demo", "--work-dir", str(work), "--quick"]) == 0
    assert "iterations ->" not in capsys.readouterr().out


def test_shipped_demo_config_is_the_cwd_arm(tmp_path: Path) -> None:
    shipped = load_config(REPO / "segdistill" / "demo_config.yaml")
    arms = demo_configs(tmp_path)
    assert arms["student_cwd"].distill == shipped.distill
    assert arms["student"].teacher is None and not arms["student"].distill.losses
    assert arms["teacher"].student.model == shipped.teacher.model
    assert {a.train.iters for a in arms.values()} == {800, 1000}
