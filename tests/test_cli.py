"""Every subcommand through `segdistill.cli.main`, on a tiny run made in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.cli import main
from segdistill.config import EvalConfig, config_from_dict, dump_config
from segdistill.data import EvalSet, build_dataset, build_eval_pipeline
from segdistill.evaluation import evaluate
from segdistill.models import build_segmentor, load_checkpoint, save_checkpoint


@pytest.fixture
def tiny_run(tiny_dataset: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A config with a teacher and a CWD term, trained for 2 iterations: (config file, run folder)."""
    save_checkpoint(tmp_path / "teacher.pth", build_segmentor("pspnet_r50-d8-tiny", 3).state_dict())
    cfg = config_from_dict({
        "name": "tiny",
        "data": {"kind": "folder", "root": str(tiny_dataset), "scale": [96, 64], "crop_size": [48, 48],
                 "eval_scale": None, "workers": 0},
        "student": {"model": "pspnet_r18-d8-tiny"},
        "teacher": {"model": "pspnet_r50-d8-tiny", "checkpoint": str(tmp_path / "teacher.pth")},
        "distill": {"losses": [{"name": "cwd_logits", "type": "cwd", "tau": 2.0, "weight": 5.0}]},
        "train": {"iters": 2, "batch_size": 2, "log_interval": 1, "eval_interval": 2, "checkpoint_interval": 2},
    })
    path = tmp_path / "tiny.yaml"
    path.write_text(dump_config(cfg))
    assert main(["train", str(path), "--work-dir", str(tmp_path / "run")]) == 0
    return path, tmp_path / "run"


def test_eval_predict_export_viz_info(tiny_run: tuple[Path, Path], tiny_dataset: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg, run = tiny_run
    ckpt = run / "checkpoints" / "iter_0000002.pth"  # a full training checkpoint is accepted everywhere

    assert main(["eval", str(cfg), "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["per_class"].keys() == {"floor", "bright", "dark"}
    _slide_and_tta_reach_the_evaluation(cfg, ckpt, tiny_dataset, tmp_path)

    images = tiny_dataset / "images" / "val"
    assert main(["predict", str(cfg), "--checkpoint", str(ckpt), "--input", str(images),
                 "--out", str(tmp_path / "pred")]) == 0
    preds = sorted((tmp_path / "pred").glob("*_pred.png"))
    assert len(preds) == 4 and len(list((tmp_path / "pred").glob("*_overlay.jpg"))) == 4
    assert Image.open(preds[0]).mode == "P" and Image.open(preds[0]).size == (96, 64)
    assert main(["predict", str(cfg), "--checkpoint", str(ckpt), "--split", "val", "--out", str(tmp_path / "p2")]) == 0
    split_preds = sorted((tmp_path / "p2").rglob("*_pred.png"))
    assert [p.name for p in split_preds] == [p.name for p in preds]  # the split's images are the folder's
    for a, b in zip(preds, split_preds, strict=True):
        np.testing.assert_array_equal(np.array(Image.open(a)), np.array(Image.open(b)))
    capsys.readouterr()
    assert main(["predict", str(cfg), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p3")]) == 2
    assert "exactly one of" in capsys.readouterr().err

    assert main(["export", str(cfg), "--checkpoint", str(ckpt), "--out", str(tmp_path / "student.pth")]) == 0
    exported = torch.load(tmp_path / "student.pth", weights_only=True)
    assert not any(k.startswith(("connectors", "teacher")) for k in exported["state_dict"])
    load_checkpoint(build_segmentor("pspnet_r18-d8-tiny", 3), tmp_path / "student.pth")

    assert main(["viz-channels", str(cfg), "--checkpoint", str(ckpt), "--image", str(next(images.iterdir())),
                 "--out", str(tmp_path / "fig.png")]) == 0
    assert np.array(Image.open(tmp_path / "fig.png")).shape[0] > 100

    capsys.readouterr()
    assert main(["info", "pspnet_r18-d8", "--size", "64", "128"]) == 0
    assert "| total | 12.790 |" in capsys.readouterr().out


def _slide_and_tta_reach_the_evaluation(cfg: Path, ckpt: Path, data: Path, tmp_path: Path) -> None:
    """``eval --mode slide [--tta]`` gives the metrics of that inference, not of whole-image inference."""
    # Sharpened logits make the prediction vary over the image, so the inference modes disagree.
    model = build_segmentor("pspnet_r18-d8-tiny", 3)
    load_checkpoint(model, ckpt)
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(300)
    sharp = save_checkpoint(tmp_path / "sharp.pth", model.state_dict())

    def metrics(name: str, *extra: str) -> dict:
        assert main(["eval", str(cfg), "--checkpoint", str(sharp), "--out", str(tmp_path / name), *extra]) == 0
        return json.loads((tmp_path / name).read_text())

    whole = metrics("whole.json")
    # One window covering the 64x96 image is whole-image inference.
    assert metrics("cover.json", "--mode", "slide", "eval.crop_size=[64,96]", "eval.stride=[32,32]") == whole
    tta = metrics("tta.json", "--mode", "slide", "--tta", "eval.crop_size=[32,32]", "eval.stride=[16,16]")
    assert tta != whole
    ds = build_dataset("folder", str(data), "val")
    want = evaluate(model.eval(), EvalSet(ds, build_eval_pipeline(None)),
                    EvalConfig(mode="slide", crop_size=(32, 32), stride=(16, 16), flip=True,
                               scales=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]),  # --tta: mmseg's aug test
                    torch.device("cpu"), list(ds.classes))
    assert tta == want.to_dict()


def test_onnx_export_through_the_cli(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg, run = tiny_run
    assert main(["export", str(cfg), "--checkpoint", str(run / "final.pth"), "--out", str(tmp_path / "s.pth"),
                 "--onnx", str(tmp_path / "s.onnx"), "--size", "64", "96"]) == 0
    assert (tmp_path / "s.onnx").stat().st_size > 100_000


def test_no_resume_refuses_an_existing_run(tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, run = tiny_run
    assert main(["train", str(cfg), "--work-dir", str(run), "--no-resume"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    # Resuming a finished run is refused with advice instead of silently doing nothing.
    assert main(["train", str(cfg), "--work-dir", str(run)]) == 2
    assert "already at iteration 2 of 2" in capsys.readouterr().err
