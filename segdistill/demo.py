"""``segdistill demo``: the whole system on generated street scenes, in minutes on a CPU.

generate scenes (Cityscapes layout) -> ``prepare cityscapes`` -> train a teacher -> train the student
alone and with CWD -> evaluate -> a table, prediction pictures and training curves in the run folder.
Every arm is an ordinary run folder, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from .config import Config, config_from_dict
from .data import CityscapesDataset, build_eval_pipeline, generate_demo_scenes, prepare_cityscapes
from .engine.trainer import train
from .errors import UserError
from .fileio import atomic_path, atomic_write_text
from .models import build_segmentor, load_checkpoint
from .progress import progress_bar

ARMS = ("teacher", "student", "student_cwd")
LABELS = {"teacher": "teacher (PSPNet-R50-D8-tiny)", "student": "student alone (PSPNet-R18-D8-tiny)",
          "student_cwd": "student + CWD"}


def demo_configs(work_dir: Path, quick: bool = False) -> dict[str, Config]:
    """The three arms, all derived from the packaged ``demo_config.yaml`` (the CWD arm)."""
    tree = yaml.safe_load(resources.files("segdistill").joinpath("demo_config.yaml").read_text())
    common = [f"data.root={work_dir / 'data'}"]
    if quick:  # a smoke test of the whole path, not a result
        common += ["train.iters=20", "train.eval_interval=10", "train.checkpoint_interval=10",
                   "train.log_interval=5", "optim.warmup_iters=0"]
    solo = ["teacher=null", "distill.losses=[]"]
    return {
        "teacher": config_from_dict(tree, common + solo + [
            "name=demo_teacher", "student.model=pspnet_r50-d8-tiny",
            *([] if quick else ["train.iters=1000", "train.eval_interval=500", "train.checkpoint_interval=500"])]),
        "student": config_from_dict(tree, common + solo + ["name=demo_student"]),
        "student_cwd": config_from_dict(tree, common + [f"teacher.checkpoint={work_dir / 'teacher' / 'final.pth'}"]),
    }


def _finished(run: Path) -> dict | None:
    path = run / "results.json"
    return json.loads(path.read_text()) if path.is_file() and (run / "final.pth").is_file() else None


def run_demo(work_dir: Path, quick: bool = False, num_train: int = 48, num_val: int = 12,
             progress: bool = True) -> dict[str, float]:
    """Run (or finish) the demo in ``work_dir``; returns the final mIoU of each arm.

    ``progress`` shows the demo's phases (scenes, preparation, one per arm, figures) as a bar on stderr.
    """
    t0 = time.perf_counter()
    data = work_dir / "data"
    configs = demo_configs(work_dir, quick)
    results: dict[str, dict] = {}
    with progress_bar(2 + len(ARMS), "demo", unit="phase", enabled=progress, interval=0.0) as phases:
        if not (data / "train.txt").is_file():
            phases.set_postfix_str("street scenes")
            print(f"[demo] generating {num_train}+{num_val} street scenes in {data}")
            generate_demo_scenes(data, num_train=num_train, num_val=num_val, size=(128, 256), seed=0)
            print("[demo] preparing them as Cityscapes: polygons -> labelTrainIds")
            print(prepare_cityscapes(data, nproc=2, progress=False).summary())
        phases.update(1)
        for arm in ARMS:
            phases.set_postfix_str(LABELS[arm])
            run = work_dir / arm
            done = _finished(run)
            if done is None:
                print(f"[demo] training {LABELS[arm]} for {configs[arm].train.iters} iterations -> {run}")
                train(configs[arm], run)
                done = _finished(run)
            if done is None:
                raise UserError(f"the demo arm {arm} did not finish; run `segdistill demo` again to resume it")
            results[arm] = done
            phases.update(1)
        phases.set_postfix_str("table and figures")
        miou = {arm: float(results[arm]["final"]["mIoU"]) for arm in ARMS}
        table = _table(miou, {arm: configs[arm].train.iters for arm in ARMS})
        atomic_write_text(work_dir / "results.md", table + "\n")
        pictures = _prediction_grid(work_dir, configs)
        curves = _curves(work_dir)
        phases.update(1)
    print(table)
    print(f"[demo] predictions: {pictures}")
    print(f"[demo] training curves: {curves if curves else 'matplotlib not installed (pip install segdistill[plot])'}")
    print(f"[demo] done in {time.perf_counter() - t0:.0f} s; everything is in {work_dir}")
    return miou


def _table(miou: dict[str, float], iters: dict[str, int]) -> str:
    rows = ["| model | iterations | val mIoU |", "| --- | ---: | ---: |"]
    rows += [f"| {LABELS[arm]} | {iters[arm]} | {miou[arm]:.2f} |" for arm in ARMS]
    delta = miou["student_cwd"] - miou["student"]
    rows.append("")
    rows.append(f"CWD changes the student's mIoU by {delta:+.2f} points (one seed; see docs/camvid.md for "
                "a multi-seed study on real data).")
    return "\n".join(rows)


@torch.no_grad()
def _prediction_grid(work_dir: Path, configs: dict[str, Config], frames: int = 4) -> Path:
    """Image | ground truth | teacher | student | student + CWD for a few val frames, as one PNG."""
    ds = CityscapesDataset(work_dir / "data", "val")
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(ds.palette)] = np.array(ds.palette, np.uint8)
    models = {}
    for arm in ARMS:
        model = build_segmentor(configs[arm].student.model, ds.num_classes)
        load_checkpoint(model, work_dir / arm / "final.pth")
        models[arm] = model.eval()
    pipeline = build_eval_pipeline(None)
    rows = []
    for i in range(min(frames, len(ds))):
        image, label = ds.load(i)
        x, _ = pipeline(image, label, np.random.default_rng(0))
        cells = [image, palette[label]]
        for arm in ARMS:
            pred = models[arm].inference(x[None]).argmax(1)[0].numpy().astype(np.uint8)
            cells.append(palette[pred])
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0)
    header = np.full((22, grid.shape[1], 3), 255, np.uint8)
    w = image.shape[1]
    for k, text in enumerate(["image", "ground truth", "teacher", "student", "student + CWD"]):
        cv2.putText(header, text, (k * w + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    out = work_dir / "predictions.png"
    with atomic_path(out) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(np.concatenate([header, grid]), cv2.COLOR_RGB2BGR))
    return out


def _curves(work_dir: Path) -> Path | None:
    """Training loss and val mIoU against iterations for the three arms (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm in ARMS:
        rows = [json.loads(x) for x in (work_dir / arm / "metrics.jsonl").read_text().splitlines()]
        tr = [r for r in rows if r["kind"] == "train"]
        ev = [r for r in rows if r["kind"] == "eval"]
        ax_loss.plot([r["iter"] for r in tr], [r["loss_decode"] for r in tr], label=LABELS[arm])
        ax_miou.plot([r["iter"] for r in ev], [r["mIoU"] for r in ev], marker="o", label=LABELS[arm])
    ax_loss.set(xlabel="iteration", ylabel="decode CE (train)", title="training loss")
    ax_miou.set(xlabel="iteration", ylabel="mIoU (val)", title="validation mIoU")
    ax_miou.legend(fontsize=8)
    fig.tight_layout()
    out = work_dir / "curves.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out
