"""The CamVid CWD study (docs/camvid.md): every run, resumable, results written as each run ends.

    python scripts/camvid_study.py run              # all runs in order; rerun to continue
    python scripts/camvid_study.py run --only cwd_logits_s1
    python scripts/camvid_study.py status
    python scripts/camvid_study.py report           # table, JSON, curves, prediction grid -> docs/

Run from the repository root with ../shared/data/camvid present. Every run is an ordinary
``segdistill train`` run folder under runs/camvid/, so an interrupted study (Ctrl-C, SIGTERM, a
crash, the end of a session) continues from its last checkpoint when started again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run folders hold GBs of checkpoints; SEGDISTILL_STUDY_RUNS can put them outside the work tree.
RUNS = Path(os.environ.get("SEGDISTILL_STUDY_RUNS", REPO / "runs" / "camvid"))
RESULTS = REPO / "docs" / "results" / "camvid_study.json"
FIGURES = REPO / "docs" / "images"


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    run_id: str
    arm: str
    config: str
    seed: int
    extra: tuple[str, ...] = ()  # overrides on top of the arm's config (the sweep point)

    @property
    def folder(self) -> Path:
        return RUNS / self.run_id

    def overrides(self) -> list[str]:
        out = [f"seed={self.seed}"]
        if self.arm != "teacher":
            out.append(f"teacher.checkpoint={RUNS / 'teacher' / 'final.pth'}" if self.arm != "baseline" else "teacher=null")
        return out + list(self.extra)


ARMS = {
    "teacher": ("PSPNet-R50-D8 teacher", "configs/camvid/pspnet_r50-d8_teacher.yaml"),
    "baseline": ("PSPNet-R18-D8 alone", "configs/camvid/pspnet_r18-d8_baseline.yaml"),
    "cwd_logits": ("+ CWD logits (tau 1, w 5)", "configs/camvid/cwd_logits.yaml"),
    "cwd_logits_feats": ("+ CWD logits + features", "configs/camvid/cwd_logits_feats.yaml"),
    "kd_logits": ("+ pixel-wise KD (tau 1, w 1)", "configs/camvid/kd_logits.yaml"),
    "cwd_logits_tau4": ("+ CWD logits (tau 4, w 3)", "configs/camvid/cwd_logits.yaml"),
}


def study() -> list[Run]:
    """The runs in the order they are trained: the teacher, then seed pairs, then single-seed arms."""
    runs = [Run("teacher", "teacher", ARMS["teacher"][1], 0)]
    for seed in (0, 1, 2):
        for arm in ("baseline", "cwd_logits"):
            runs.append(Run(f"{arm}_s{seed}", arm, ARMS[arm][1], seed))
    for arm in ("cwd_logits_feats", "kd_logits"):
        runs.append(Run(f"{arm}_s0", arm, ARMS[arm][1], 0))
    # One sweep point: a softer temperature on the same logits (the setting of the feature term).
    runs.append(Run("cwd_logits_tau4_s0", "cwd_logits_tau4", ARMS["cwd_logits_tau4"][1], 0,
                    ("name=camvid_cwd_logits_tau4", "distill.losses.0.tau=4", "distill.losses.0.weight=3")))
    return runs


def _result(run: Run) -> dict | None:
    path = run.folder / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_results() -> dict:
    """Collect every finished run into docs/results/camvid_study.json (rewritten atomically)."""
    from segdistill.config import load_config, to_dict
    from segdistill.fileio import atomic_write_text

    rows = []
    for run in study():
        res = _result(run)
        if res is None:
            continue
        cfg = load_config(run.folder / "config.yaml")
        rows.append({"run": run.run_id, "arm": run.arm, "seed": run.seed, "config_file": run.config,
                     "overrides": run.overrides(), "iterations": res["iterations"],
                     "final_mIoU": res["final"]["mIoU"], "final_mAcc": res["final"]["mAcc"],
                     "final_aAcc": res["final"]["aAcc"],
                     "per_class_IoU": {k: v["IoU"] for k, v in res["final"]["per_class"].items()},
                     "wall_time_s": round(res["wall_time_s"], 1), "config": to_dict(cfg)})
    doc = {"study": "CWD on CamVid, see docs/camvid.md", "split_for_training": "train (367)",
           "split_for_metrics": "val (101)", "checkpoint_reported": "final iteration (never the best)",
           "runs": rows}
    atomic_write_text(RESULTS, json.dumps(doc, indent=1) + "\n")
    return doc


def cmd_run(args: argparse.Namespace) -> int:
    from segdistill.config import load_config
    from segdistill.engine.trainer import train

    for run in study():
        if args.only and run.run_id not in args.only:
            continue
        if _result(run) is not None:
            print(f"[study] {run.run_id}: finished", flush=True)
            continue
        if run.arm != "teacher" and not (RUNS / "teacher" / "final.pth").is_file():
            print(f"[study] {run.run_id}: waiting for the teacher", flush=True)
            continue
        print(f"[study] {run.run_id}: training ({run.config} {' '.join(run.overrides())})", flush=True)
        train(load_config(REPO / run.config, run.overrides()), run.folder)
        write_results()
    write_results()
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    for run in study():
        res = _result(run)
        ckpts = sorted((run.folder / "checkpoints").glob("iter_*.pth")) if run.folder.is_dir() else []
        state = f"done, mIoU {res['final']['mIoU']:.2f}, {res['wall_time_s'] / 60:.0f} min" if res else (
            f"at {ckpts[-1].stem}" if ckpts else "not started")
        print(f"{run.run_id:22s} {state}")
    return 0


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def paired_t(deltas: list[float]) -> tuple[float, float]:
    """Paired t statistic of the per-seed gains and its one-sided p-value (H1: mean gain > 0).

    The Student-t tail is integrated numerically (Simpson's rule on the density), so the report needs
    no scipy.
    """
    n = len(deltas)
    if n < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    sd = statistics.stdev(deltas)
    mean = statistics.mean(deltas)
    if sd == 0.0:  # identical gains: the test is decided by the sign alone
        if mean == 0.0:
            return 0.0, 0.5
        return math.copysign(math.inf, mean), 0.0 if mean > 0 else 1.0
    t = mean / (sd / math.sqrt(n))
    df = n - 1
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))

    steps = 4000  # even, as Simpson's rule needs
    h = abs(t) / steps
    area = density(0.0) + density(abs(t)) + sum((4 if k % 2 else 2) * density(k * h) for k in range(1, steps))
    central = area * h / 3  # P(0 < T < |t|)
    return t, 0.5 - central if t >= 0 else 0.5 + central


def cmd_report(_: argparse.Namespace) -> int:
    doc = write_results()
    by_arm: dict[str, list[dict]] = {}
    for row in doc["runs"]:
        by_arm.setdefault(row["arm"], []).append(row)
    lines = ["| arm | seeds | val mIoU (final iteration), mean ± std | per seed | minutes per run |",
             "| --- | ---: | ---: | --- | ---: |"]
    for arm, (label, _) in ARMS.items():
        rows = by_arm.get(arm, [])
        per_seed = ", ".join(f"s{r['seed']}: {r['final_mIoU']:.2f}" for r in rows)
        minutes = f"{statistics.mean(r['wall_time_s'] for r in rows) / 60:.0f}" if rows else "-"
        lines.append(f"| {label} | {len(rows)} | {_mean_std([r['final_mIoU'] for r in rows])} | {per_seed} | "
                     f"{minutes} |")
    pairs = [(b["seed"], c["final_mIoU"] - b["final_mIoU"]) for b in by_arm.get("baseline", [])
             for c in by_arm.get("cwd_logits", []) if b["seed"] == c["seed"]]
    if pairs:
        seeds = ", ".join(f"s{seed}" for seed, _ in pairs)
        deltas = [d for _, d in pairs]
        lines += ["", f"Paired CWD − baseline (same seed: same init and data order; {seeds}): "
                  f"{', '.join(f'{d:+.2f}' for d in deltas)}; **mean {statistics.mean(deltas):+.2f}**"]
        if len(deltas) >= 2:
            t, p = paired_t(deltas)
            noise = statistics.stdev(r["final_mIoU"] for r in by_arm["baseline"])
            lines += ["", f"Paired t-test over {len(deltas)} seeds: t = {t:.2f} with {len(deltas) - 1} degrees of "
                      f"freedom, one-sided p = {p:.3f}. Seed-to-seed std of the student alone: {noise:.2f}; "
                      f"smallest paired gain: {min(deltas):+.2f}."]
    classes = list(doc["runs"][0]["per_class_IoU"]) if doc["runs"] else []
    if classes:
        lines += ["", "Per-class IoU at the final iteration, mean over seeds:", "",
                  "| arm | " + " | ".join(classes) + " |", "| --- |" + " ---: |" * len(classes)]
        for arm, (label, _) in ARMS.items():
            rows = by_arm.get(arm, [])
            if rows:
                means = [statistics.mean(r["per_class_IoU"][c] or 0.0 for r in rows) for c in classes]
                lines.append(f"| {label} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    table = "\n".join(lines)
    print(table)
    _write_table(table)
    _figures({row["run"] for row in doc["runs"]})
    return 0


TABLE_START, TABLE_END = "<!-- study-table:start -->", "<!-- study-table:end -->"


def _write_table(table: str) -> None:
    """Replace the generated tables in docs/camvid.md (between the markers), so they never go stale."""
    from segdistill.fileio import atomic_write_text

    doc = REPO / "docs" / "camvid.md"
    text = doc.read_text()
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        tail = rest.split(TABLE_END, 1)[1]
        atomic_write_text(doc, f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}")


def _figures(finished: set[str]) -> None:
    """Curves of the ``finished`` runs (those in the table) and a prediction grid of the seed-0 models."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from segdistill.data import build_dataset, build_eval_pipeline
    from segdistill.fileio import atomic_path
    from segdistill.models import build_segmentor, load_checkpoint

    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(ARMS, ["black", "tab:blue", "tab:red", "tab:purple", "tab:green", "tab:orange"]))
    styles = {0: "-", 1: "--", 2: ":"}
    for run in study():
        metrics = run.folder / "metrics.jsonl"
        if run.run_id not in finished or not metrics.is_file():
            continue
        rows = [json.loads(x) for x in metrics.read_text().splitlines()]
        tr = [r for r in rows if r["kind"] == "train"]
        ev = [r for r in rows if r["kind"] == "eval"]
        label = f"{ARMS[run.arm][0]} s{run.seed}" if run.arm != "teacher" else ARMS[run.arm][0]
        ax_loss.plot([r["iter"] for r in tr], [r["loss_decode"] for r in tr], color=colors[run.arm], alpha=0.7,
                     lw=1, ls=styles[run.seed], label=label)
        ax_miou.plot([r["iter"] for r in ev], [r["mIoU"] for r in ev], color=colors[run.arm], marker="o", ms=3,
                     alpha=0.8, ls=styles[run.seed], label=label)
    ax_loss.set(xlabel="iteration", ylabel="decode CE (train)", title="training loss")
    ax_miou.set(xlabel="iteration", ylabel="val mIoU", title="validation mIoU (CamVid val, 101 frames)")
    ax_miou.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(FIGURES / "camvid_curves.png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)

    shown = [r for r in (Run("teacher", "teacher", "", 0), Run("baseline_s0", "baseline", "", 0),
                         Run("cwd_logits_s0", "cwd_logits", "", 0)) if (r.folder / "final.pth").is_file()]
    if not shown:
        return
    ds = build_dataset("camvid", "../shared/data/camvid", "val")
    pipeline = build_eval_pipeline((240, 180))
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(ds.palette)] = np.array(ds.palette, np.uint8)
    models = {}
    for run in shown:
        model = build_segmentor("pspnet_r50-d8" if run.arm == "teacher" else "pspnet_r18-d8", ds.num_classes)
        load_checkpoint(model, run.folder / "final.pth")
        models[run.run_id] = model.eval()
    rows = []
    for i in (5, 30, 60, 90):
        image, label = ds.load(i)
        x, _ = pipeline(image, label, np.random.default_rng(0))
        cells = [image, palette[label]]
        with torch.no_grad():
            for model in models.values():
                cells.append(palette[model.inference(x[None], out_size=label.shape).argmax(1)[0].numpy()])
        rows.append(np.concatenate([c[::2, ::2] for c in cells], axis=1))
    import cv2
    grid = np.concatenate(rows, axis=0)
    header = np.full((24, grid.shape[1], 3), 255, np.uint8)
    names = ["image", "ground truth"] + [ARMS[r.arm][0] for r in shown]
    for k, text in enumerate(names):
        cv2.putText(header, text, (k * 240 + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    with atomic_path(FIGURES / "camvid_predictions.png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(np.concatenate([header, grid]), cv2.COLOR_RGB2BGR))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train every unfinished run, in order")
    p.add_argument("--only", nargs="*", help="run ids to train (see `status`)")
    p.set_defaults(func=cmd_run)
    sub.add_parser("status", help="where each run stands").set_defaults(func=cmd_status)
    sub.add_parser("report", help="JSON, table, curves and prediction grid").set_defaults(func=cmd_report)
    args = parser.parse_args()
    from segdistill.engine.trainer import TrainingStopped

    try:
        return args.func(args)
    except TrainingStopped as stopped:  # SIGTERM/SIGINT: the run saved a checkpoint; rerun to continue
        print(f"[study] {stopped}", file=sys.stderr)
        return 128 + stopped.signum


if __name__ == "__main__":
    sys.exit(main())
