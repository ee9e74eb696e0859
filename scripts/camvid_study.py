"""The CamVid CWD study (docs/camvid.md): every run, resumable, results written as each run ends.

    python scripts/camvid_study.py run              # all runs in order; rerun to continue
    python scripts/camvid_study.py run --only cwd_logits_s1
    python scripts/camvid_study.py status
    python scripts/camvid_study.py latency          # CPU latency of each network (segdistill bench --mode infer)
    python scripts/camvid_study.py report           # tables, JSON, curves, prediction grid -> docs/
    python scripts/camvid_study.py report --from-json   # tables only, from docs/results/camvid_study.json

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    import torch

    from segdistill.data.datasets import SegDataset
    from segdistill.models import EncoderDecoder

REPO = Path(__file__).resolve().parents[1]
# Run folders hold GBs of checkpoints; SEGDISTILL_STUDY_RUNS can put them outside the work tree.
RUNS = Path(os.environ.get("SEGDISTILL_STUDY_RUNS", REPO / "runs" / "camvid"))
RESULTS = REPO / "docs" / "results" / "camvid_study.json"
LATENCY = REPO / "docs" / "results" / "camvid_latency.json"
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
            distills = ARMS[self.arm].alone is not None
            out.append(f"teacher.checkpoint={RUNS / 'teacher' / 'final.pth'}" if distills else "teacher=null")
        return out + list(self.extra)


@dataclass(frozen=True)
class Arm:
    """One arm of the study: a config (plus overrides) that every seed of the arm trains."""

    label: str
    config: str
    student: str  # the network this arm trains (the teacher arm: the teacher)
    alone: str | None = None  # a distillation arm: the student-alone arm it is paired with, seed by seed
    extra: tuple[str, ...] = ()  # overrides on top of the config, for every run of the arm


TEACHER_MODEL = "pspnet_r50-d8"

ARMS: dict[str, Arm] = {
    "teacher": Arm("PSPNet-R50-D8 teacher", "configs/camvid/pspnet_r50-d8_teacher.yaml", TEACHER_MODEL),
    "baseline": Arm("PSPNet-R18-D8 alone", "configs/camvid/pspnet_r18-d8_baseline.yaml", "pspnet_r18-d8"),
    "cwd_logits": Arm("+ CWD logits (tau 1, w 5)", "configs/camvid/cwd_logits.yaml", "pspnet_r18-d8", "baseline"),
    "cwd_logits_feats": Arm("+ CWD logits + features", "configs/camvid/cwd_logits_feats.yaml", "pspnet_r18-d8",
                            "baseline"),
    "kd_logits": Arm("+ pixel-wise KD (tau 1, w 1)", "configs/camvid/kd_logits.yaml", "pspnet_r18-d8", "baseline"),
    # One sweep point: a softer temperature on the same logits (the setting of the feature term).
    "cwd_logits_tau4": Arm("+ CWD logits (tau 4, w 3)", "configs/camvid/cwd_logits.yaml", "pspnet_r18-d8", "baseline",
                           ("name=camvid_cwd_logits_tau4", "distill.losses.0.tau=4", "distill.losses.0.weight=3")),
    # Issue 16: CWD into students of other families (stride-4 logits: the teacher's map is resized to them).
    "mv2_baseline": Arm("DeepLabV3+-MobileNetV2-D8 alone", "configs/camvid/deeplabv3plus_m-v2-d8_baseline.yaml",
                        "deeplabv3plus_m-v2-d8"),
    "mv2_cwd_logits": Arm("+ CWD logits (tau 1, w 5, align student)",
                          "configs/camvid/cwd_logits_deeplabv3plus_m-v2-d8.yaml", "deeplabv3plus_m-v2-d8",
                          "mv2_baseline"),
    "segformer_baseline": Arm("SegFormer-B0 alone", "configs/camvid/segformer_mit-b0_baseline.yaml",
                              "segformer_mit-b0"),
    "segformer_cwd_logits": Arm("+ CWD logits (tau 1, w 5, align student)",
                                "configs/camvid/cwd_logits_segformer_mit-b0.yaml", "segformer_mit-b0",
                                "segformer_baseline"),
    "segformer_cwd_logits_align_teacher": Arm(
        "+ CWD logits (tau 1, w 5, align teacher)", "configs/camvid/cwd_logits_segformer_mit-b0.yaml",
        "segformer_mit-b0", "segformer_baseline",
        ("name=camvid_cwd_logits_segformer_mit-b0_align_teacher", "distill.losses.0.align=teacher")),
    # Added after seed 0 of CWD cost SegFormer-B0 4.7 mIoU: is the reference's weight too strong for it?
    "segformer_cwd_logits_w1": Arm(
        "+ CWD logits (tau 1, w 1, align student)", "configs/camvid/cwd_logits_segformer_mit-b0.yaml",
        "segformer_mit-b0", "segformer_baseline",
        ("name=camvid_cwd_logits_segformer_mit-b0_w1", "distill.losses.0.weight=1")),
    # Issue 17: other distillation methods on the PSPNet-R18-D8 student.
    "dist_logits": Arm("+ DIST logits (tau 1, w 1)", "configs/camvid/dist_logits.yaml", "pspnet_r18-d8", "baseline"),
    "cwd_logits_std": Arm("+ CWD logits, standardized (tau 1, w 5)", "configs/camvid/cwd_logits_standardize.yaml",
                          "pspnet_r18-d8", "baseline"),
    "mgd_bottleneck": Arm("+ MGD on the PSP bottleneck (alpha 2e-5, lambda 0.65)",
                          "configs/camvid/mgd_bottleneck.yaml", "pspnet_r18-d8", "baseline"),
}

#: Display names of the study's networks (the deployment table and the per-student tables).
NETWORKS = {"pspnet_r50-d8": "PSPNet-R50-D8", "pspnet_r18-d8": "PSPNet-R18-D8",
            "deeplabv3plus_m-v2-d8": "DeepLabV3+-MobileNetV2-D8", "segformer_mit-b0": "SegFormer-B0"}


def _run(arm: str, seed: int) -> Run:
    """Run ``<arm>_s<seed>``; the one teacher run is ``teacher`` (every distillation run reads its final.pth)."""
    return Run("teacher" if arm == "teacher" else f"{arm}_s{seed}", arm, ARMS[arm].config, seed, ARMS[arm].extra)


def study() -> list[Run]:
    """The runs in the order they are trained.

    The first study (PSPNet-R18-D8): the teacher, three seed pairs of the student alone and with CWD,
    then single-seed arms. Issue 16: DeepLabV3+-MobileNetV2 alone vs CWD and SegFormer-B0 alone vs CWD,
    three paired seeds each, then one seed of SegFormer with ``align: teacher`` and one with CWD's weight 1
    (a diagnosis: CWD at weight 5 cost SegFormer-B0 4.7 mIoU on seed 0). Issue 17 on PSPNet-R18-D8:
    KD seeds 1 and 2 (seed 0 is above), DIST and standardized CWD with three seeds, MGD with one (the
    issue's), then MGD's seeds 1 and 2, so that its gain has a paired test like the others.
    """
    runs = [_run("teacher", 0)]
    for seed in (0, 1, 2):
        runs += [_run("baseline", seed), _run("cwd_logits", seed)]
    runs += [_run("cwd_logits_feats", 0), _run("kd_logits", 0), _run("cwd_logits_tau4", 0)]
    for alone, distilled in (("mv2_baseline", "mv2_cwd_logits"), ("segformer_baseline", "segformer_cwd_logits")):
        for seed in (0, 1, 2):
            runs += [_run(alone, seed), _run(distilled, seed)]
    runs += [_run("segformer_cwd_logits_align_teacher", 0), _run("segformer_cwd_logits_w1", 0)]
    runs += [_run("kd_logits", 1), _run("kd_logits", 2)]
    for arm in ("dist_logits", "cwd_logits_std"):
        runs += [_run(arm, seed) for seed in (0, 1, 2)]
    runs += [_run("mgd_bottleneck", seed) for seed in (0, 1, 2)]
    return runs


def _result(run: Run) -> dict | None:
    path = run.folder / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_results() -> dict:
    """Collect every finished run into docs/results/camvid_study.json (rewritten atomically)."""
    from segdistill.config import load_config, to_dict
    from segdistill.fileio import atomic_write_text

    # Rows already in the JSON stay when their run folder is gone (the first study's folders did not
    # survive): the JSON is the record, a run folder only refreshes its own row. A rerun that replaces a
    # recorded row keeps the earlier result beside it (the teacher's reproduction check).
    earlier = {row["run"]: row for row in json.loads(RESULTS.read_text())["runs"]} if RESULTS.is_file() else {}
    rows = []
    for run in study():
        res = _result(run)
        if res is None:
            if run.run_id in earlier:
                rows.append(earlier[run.run_id])
            continue
        cfg = load_config(run.folder / "config.yaml")
        rows.append({"run": run.run_id, "arm": run.arm, "seed": run.seed, "config_file": run.config,
                     "overrides": run.overrides(), "iterations": res["iterations"],
                     "final_mIoU": res["final"]["mIoU"], "final_mAcc": res["final"]["mAcc"],
                     "final_aAcc": res["final"]["aAcc"],
                     "per_class_IoU": {k: v["IoU"] for k, v in res["final"]["per_class"].items()},
                     "wall_time_s": round(res["wall_time_s"], 1), "config": to_dict(cfg)})
        before = earlier.get(run.run_id) or {}
        same = before.get("final_mIoU") == rows[-1]["final_mIoU"]  # this very run, recorded before
        if cfg.teacher is not None and run.arm != "teacher":
            # Which teacher this run distilled from, by its result: the study's teacher was trained twice.
            rows[-1]["teacher_mIoU"] = before.get("teacher_mIoU") if same else None
            teacher_result = Path(cfg.teacher.checkpoint or "").parent / "results.json"
            if rows[-1]["teacher_mIoU"] is None and teacher_result.is_file():
                rows[-1]["teacher_mIoU"] = json.loads(teacher_result.read_text())["final"]["mIoU"]
        if before and not same:
            rows[-1]["earlier_result"] = before.get("earlier_result") or {
                "final_mIoU": before["final_mIoU"], "wall_time_s": before.get("wall_time_s")}
        elif "earlier_result" in before:  # rewritten again: the earlier result stays
            rows[-1]["earlier_result"] = before["earlier_result"]
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
        print(f"{run.run_id:38s} {state}")
    return 0


def _mean_std(values: list[float], signed: bool = False, empty: str = "-") -> str:
    if not values:
        return empty
    fmt = "+.2f" if signed else ".2f"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):.2f}"


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


def two_sided_p(deltas: list[float]) -> tuple[float, float]:
    """Paired t statistic and its two-sided p-value (H1: the mean difference is not 0)."""
    t, p = paired_t(deltas)
    return t, min(1.0, 2 * min(p, 1.0 - p))


def group_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """The results rows of each arm, ordered by seed."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["arm"], []).append(row)
    return {arm: sorted(rs, key=lambda r: r["seed"]) for arm, rs in out.items()}


def paired_deltas(a: list[dict], b: list[dict], same_teacher: bool = False) -> list[tuple[int, float]]:
    """``(seed, mIoU(a) - mIoU(b))`` for every seed both arms have: same seed, same init and data order.

    ``same_teacher``: pair only runs distilled from the same teacher (two distillation arms); a student-alone
    arm has no teacher, so a gain over it pairs every seed.
    """
    b_by_seed = {r["seed"]: r for r in b}
    return [(r["seed"], r["final_mIoU"] - b_by_seed[r["seed"]]["final_mIoU"]) for r in a
            if r["seed"] in b_by_seed
            and (not same_teacher or r.get("teacher_mIoU") == b_by_seed[r["seed"]].get("teacher_mIoU"))]


@dataclass(frozen=True)
class Paired:
    """A paired comparison of two arms over the seeds they share, with its t-test when there are 2+ pairs."""

    a: str
    b: str
    seeds: tuple[int, ...]
    deltas: tuple[float, ...]
    two_sided: bool  # False: H1 "a > b" (a gain over the student alone); True: H1 "a != b" (two methods)
    p_holm: float | None = None  # the p-value adjusted over its family of tests (Holm), when there is one

    @property
    def n(self) -> int:
        return len(self.deltas)

    @property
    def mean(self) -> float:
        return statistics.mean(self.deltas)

    @property
    def test(self) -> tuple[float, float] | None:
        """``(t, p)``; None with fewer than 2 pairs (no test is possible)."""
        if self.n < 2:
            return None
        return two_sided_p(list(self.deltas)) if self.two_sided else paired_t(list(self.deltas))

    def verdict(self, alpha: float = 0.05) -> str:
        """What the seeds support, in words; never a winner that the test does not support."""
        test = self.test
        if test is None:
            return "1 seed pair: no test, not ranked"
        p = test[1] if self.p_holm is None else self.p_holm
        if not self.two_sided and 1.0 - p < alpha:  # the one-sided test of the other direction, H1: gain < 0
            return f"loss shown (one-sided p < {alpha:g} for H1: gain < 0)"
        if p >= alpha:
            return f"not shown with {self.n} seeds"
        if not self.two_sided:
            return f"gain shown (one-sided p < {alpha:g})"
        higher = self.a if self.mean > 0 else self.b
        which = "two-sided p" if self.p_holm is None else "Holm-adjusted p"
        return f"{ARMS[higher].label} higher ({which} < {alpha:g})"

    def cells(self, holm: bool = False) -> str:
        """``| seeds | per-seed differences | mean ± std | t | p | [Holm p |] verdict |`` of a markdown row."""
        seeds = ", ".join(f"s{s}" for s in self.seeds)
        per_seed = ", ".join(f"{d:+.2f}" for d in self.deltas)
        spread = f"{self.mean:+.2f} ± {statistics.stdev(self.deltas):.2f}" if self.n >= 2 else f"{self.mean:+.2f}"
        test = self.test
        t, p = (f"{test[0]:.2f}", f"{test[1]:.3f}") if test else ("-", "-")
        adjusted = (f" {self.p_holm:.3f} |" if self.p_holm is not None else " - |") if holm else ""
        return f"{seeds} | {per_seed} | {spread} | {t} | {p} |{adjusted} {self.verdict()} |"


def gains(groups: dict[str, list[dict]]) -> list[Paired]:
    """Each distillation arm against its student-alone arm, paired by seed (one-sided: H1 gain > 0)."""
    out = []
    for name, arm in ARMS.items():
        if arm.alone is None:
            continue
        pairs = paired_deltas(groups.get(name, []), groups.get(arm.alone, []))
        if pairs:
            out.append(Paired(name, arm.alone, tuple(s for s, _ in pairs), tuple(d for _, d in pairs), False))
    return out


def method_differences(groups: dict[str, list[dict]]) -> list[Paired]:
    """Two distillation arms on the same student, paired by seed (two-sided: H1 they differ).

    Listed when the arms share at least 2 seeds, or when one is a variant of the other (same config file,
    e.g. the align or tau sweep points), which then shows as a single pair that is not ranked. A seed counts
    only when both runs distilled from the same teacher: the study's teacher was retrained once.
    """
    names = [n for n, a in ARMS.items() if a.alone is not None]
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if ARMS[a].alone != ARMS[b].alone:
                continue
            pairs = paired_deltas(groups.get(a, []), groups.get(b, []), same_teacher=True)
            if len(pairs) >= 2 or (pairs and ARMS[a].config == ARMS[b].config):
                out.append(Paired(a, b, tuple(s for s, _ in pairs), tuple(d for _, d in pairs), True))
    # The tested differences of one student are one family: with m tests at 0.05 each, some "difference"
    # turns up by chance, so each p-value is adjusted over its family (Holm) and the verdict reads that.
    for alone in {ARMS[d.a].alone for d in out}:
        tested = {i: test[1] for i, d in enumerate(out) if ARMS[d.a].alone == alone and (test := d.test)}
        for i, p_adj in zip(tested, holm(list(tested.values())), strict=True):
            out[i] = replace(out[i], p_holm=p_adj)
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (family-wise error rate control).

    The i-th smallest of m p-values is multiplied by (m - i + 1); each adjusted value is at least the one
    before it in that order, and at most 1.
    """
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p_values[k])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_tables(groups: dict[str, list[dict]]) -> list[str]:
    """The markdown lines of the paired gains over each student alone and of the method differences."""
    lines: list[str] = []
    paired = gains(groups)
    if paired:
        lines += ["", "Paired gain over the same student alone (a seed fixes the initial weights and the data order, "
                  "so each distilled run is paired with the student-alone run of its seed); one-sided paired t-test, "
                  "H1: gain > 0 (p in the table), and the other side, H1: gain < 0 (p' = 1 - p), for a loss:", "",
                  "| student | arm | vs | seeds | paired gains | mean ± std | t | one-sided p | verdict |",
                  "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
        for g in paired:
            lines.append(f"| {NETWORKS.get(ARMS[g.a].student, ARMS[g.a].student)} | {ARMS[g.a].label} | "
                         f"{ARMS[g.b].label} | {g.cells()}")
        noise = [f"{arm.label} {statistics.stdev(r['final_mIoU'] for r in groups[name]):.2f} "
                 f"({len(groups[name])} seeds)" for name, arm in ARMS.items()
                 if arm.alone is None and name != "teacher" and len(groups.get(name, [])) >= 2]
        if noise:
            lines += ["", "Seed-to-seed std of each student alone: " + "; ".join(noise) + "."]
    diffs = method_differences(groups)
    if diffs:
        lines += ["", "Differences between methods on the same student, paired by seed (only runs distilled from the "
                  "same teacher); two-sided paired t-test, "
                  "H1: the two differ. The tested differences of one student are one family of tests, so each "
                  "p-value is also given adjusted over its family (Holm), and the verdict reads the adjusted one. "
                  "The gains over the student alone above are each arm's own question and are not adjusted:", "",
                  "| student | arm A | arm B | seeds | A − B per seed | mean ± std | t | two-sided p | "
                  "Holm-adjusted p | verdict |",
                  "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for d in diffs:
            lines.append(f"| {NETWORKS.get(ARMS[d.a].student, ARMS[d.a].student)} | {ARMS[d.a].label} | "
                         f"{ARMS[d.b].label} | {d.cells(holm=True)}")
    return lines


def without_classes(rows: list[dict], classes: list[str]) -> list[dict]:
    """``rows`` with each run's ``final_mIoU`` recomputed as the mean IoU over the classes not in ``classes``.

    A class with no IoU (``None``: absent from both the labels and the predictions) stays out of the mean, as
    in the metric. Asks how much of a difference the left-out classes carry (fence, for issue 17's methods).
    """
    out = []
    for row in rows:
        kept = [v for c, v in row["per_class_IoU"].items() if c not in classes and v is not None]
        out.append({**row, "final_mIoU": statistics.mean(kept)})
    return out


def report_tables(rows: list[dict]) -> str:
    """The study's markdown tables from its results rows (the ``runs`` of camvid_study.json)."""
    groups = group_rows(rows)
    lines = ["| student | arm | seeds | val mIoU (final iteration), mean ± std | per seed | minutes per run | "
             "teacher's mIoU |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for name, arm in ARMS.items():
        rs = groups.get(name, [])
        per_seed = ", ".join(f"s{r['seed']}: {r['final_mIoU']:.2f}" for r in rs) or "queued"
        if name == "teacher" and rs and "earlier_result" in rs[0]:
            per_seed += f" (first run: {rs[0]['earlier_result']['final_mIoU']:.2f})"
        minutes = f"{statistics.mean(r['wall_time_s'] for r in rs) / 60:.0f}" if rs else "-"
        student = "(teacher)" if name == "teacher" else NETWORKS.get(arm.student, arm.student)
        teachers = sorted({f"{r['teacher_mIoU']:.2f}" for r in rs if r.get("teacher_mIoU") is not None})
        lines.append(f"| {student} | {arm.label} | {len(rs)} | {_mean_std([r['final_mIoU'] for r in rs])} | "
                     f"{per_seed} | {minutes} | {', '.join(teachers) or '-'} |")
    lines += paired_tables(groups)
    classes = list(rows[0]["per_class_IoU"]) if rows else []
    if classes:
        lines += ["", "Per-class IoU at the final iteration, mean over seeds:", "",
                  "| student | arm | " + " | ".join(classes) + " |", "| --- | --- |" + " ---: |" * len(classes)]
        for name, arm in ARMS.items():
            rs = groups.get(name, [])
            if rs:
                means = [statistics.mean(r["per_class_IoU"][c] or 0.0 for r in rs) for c in classes]
                student = "(teacher)" if name == "teacher" else NETWORKS.get(arm.student, arm.student)
                lines.append(f"| {student} | {arm.label} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    return "\n".join(lines)


# ---- deployment table ------------------------------------------------------------------------------

#: (network, student-alone arm, CWD arm): the teacher, the first study's student and issue 16's students.
DEPLOYED = (("pspnet_r50-d8", "teacher", None), ("pspnet_r18-d8", "baseline", "cwd_logits"),
            ("deeplabv3plus_m-v2-d8", "mv2_baseline", "mv2_cwd_logits"),
            ("segformer_mit-b0", "segformer_baseline", "segformer_cwd_logits"))
#: The study's evaluation input: CamVid's 480x360 frames resized to (long 240, short 180) = H 180 x W 240.
EVAL_SIZE = (180, 240)
FAST_PATH = "eager fast path (fold_bn+channels_last+bf16)"


def deploy_stats(model: str, num_classes: int = 11) -> dict[str, float]:
    """Parameters (M) and forward GFLOPs at :data:`EVAL_SIZE` of what is deployed: backbone + decode head."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segdistill.models import build_segmentor

    net = build_segmentor(model, num_classes).eval()
    params = sum(p.numel() for p in net.backbone.parameters()) + sum(p.numel() for p in net.decode_head.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.zeros(1, 3, *EVAL_SIZE), with_aux=False)
    return {"params_m": params / 1e6, "gflops": counter.get_total_flops() / 1e9}


def deploy_table(rows: list[dict], stats: dict[str, dict[str, float]], latency: dict | None) -> str:
    """Markdown: each network's size, cost and CPU latency beside its mIoU alone, with CWD, and the paired gain.

    Cells of runs that have not finished (or of latencies not measured) stay empty.
    """
    groups = group_rows(rows)
    measured = (latency or {}).get("models", {})
    lines = [f"| network | role | params (M) | GFLOPs at {EVAL_SIZE[0]}×{EVAL_SIZE[1]} | CPU latency, batch 1, "
             "eager fp32 (ms) | CPU latency, fast path bf16 (ms) | mIoU alone | mIoU with CWD | paired gain ± std |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model, alone, cwd in DEPLOYED:
        s = stats.get(model, {})
        lat = measured.get(model, {})
        alone_rows, cwd_rows = groups.get(alone, []), groups.get(cwd, []) if cwd else []
        gain = ""
        if cwd is not None:
            deltas = [d for _, d in paired_deltas(cwd_rows, alone_rows)]
            gain = _mean_std(deltas, signed=True) if deltas else ""
            if len(deltas) == 1:
                gain += " (1 pair)"
        lines.append("| " + " | ".join([
            NETWORKS.get(model, model), "teacher" if cwd is None else "student",
            f"{s['params_m']:.2f}" if "params_m" in s else "", f"{s['gflops']:.2f}" if "gflops" in s else "",
            f"{lat['eager fp32']:.1f}" if "eager fp32" in lat else "",
            f"{lat[FAST_PATH]:.1f}" if FAST_PATH in lat else "",
            _mean_std([r["final_mIoU"] for r in alone_rows], empty=""),
            "" if cwd is None else _mean_std([r["final_mIoU"] for r in cwd_rows], empty=""), gain]) + " |")
    if latency:
        lines += ["", f"Latency: `segdistill bench --mode infer`, {latency.get('date', '?')}, "
                  f"{latency.get('machine', '?')}; see docs/results/camvid_latency.json."]
    return "\n".join(lines)


def cmd_latency(args: argparse.Namespace) -> int:
    """Measure each deployed network's CPU latency at batch 1 with ``segdistill bench --mode infer``."""
    import subprocess
    import tempfile
    import time

    from segdistill.fileio import atomic_write_text

    out: dict = json.loads(LATENCY.read_text()) if LATENCY.is_file() else {}
    models = out.setdefault("models", {})
    machine = ""
    for model, alone, _ in DEPLOYED:
        if args.only and model not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "segdistill.cli", "bench", str(REPO / ARMS[alone].config), "--mode", "infer",
                   "--crop", str(EVAL_SIZE[0]), str(EVAL_SIZE[1]), "--batch", "1", "--iters", str(args.iters),
                   "--warmup", str(args.warmup), "--no-compile", "--no-onnx", "--json", f"{tmp}/bench.json"]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            print(f"[study] latency of {model}: {' '.join(cmd[2:])}", flush=True)
            subprocess.run(cmd, check=True, cwd=REPO)
            bench = json.loads(Path(f"{tmp}/bench.json").read_text())
        m = bench["machine"]
        machine = (f"{m['processor']}, {m['cpu_count']} cores, {m['threads']} threads, torch {m['torch']}, "
                   f"{args.iters} calls after {args.warmup} warm-up (median)")
        models[model] = {r["backend"]: r["latency_ms"] for r in bench["infer"] if r["batch"] == 1
                         and r["latency_ms"] is not None}
        models[model]["load_average"] = [m["load_average_start"], m["load_average_end"]]
    out.update({"date": time.strftime("%Y-%m-%d"), "machine": machine,
                "input": f"1x3x{EVAL_SIZE[0]}x{EVAL_SIZE[1]}"})
    atomic_write_text(LATENCY, json.dumps(out, indent=1) + "\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    doc = json.loads(RESULTS.read_text()) if args.from_json else write_results()
    table = report_tables(doc["runs"])
    print(table)
    _write_block(TABLE_START, TABLE_END, table)
    latency = json.loads(LATENCY.read_text()) if LATENCY.is_file() else None
    deploy = deploy_table(doc["runs"], {model: deploy_stats(model) for model, _, _ in DEPLOYED}, latency)
    print("\n" + deploy)
    _write_block(DEPLOY_START, DEPLOY_END, deploy)
    if not args.from_json:
        _figures({row["run"] for row in doc["runs"]})
    return 0


def cmd_without(args: argparse.Namespace) -> int:
    """The paired gains and method differences again, with each run's mIoU taken over the other classes."""
    rows = json.loads(RESULTS.read_text())["runs"]
    known = list(rows[0]["per_class_IoU"]) if rows else []
    unknown = [c for c in args.classes if c not in known]
    if unknown:
        print(f"without: unknown class(es) {', '.join(unknown)}; the study's are {', '.join(known)}",
              file=sys.stderr)
        return 2
    kept = len([c for c in known if c not in args.classes])
    print(f"mIoU over {kept} of {len(known)} classes, without {', '.join(args.classes)} "
          f"(from {RESULTS.relative_to(REPO)}):")
    print("\n".join(paired_tables(group_rows(without_classes(rows, args.classes)))))
    return 0


TABLE_START, TABLE_END = "<!-- study-table:start -->", "<!-- study-table:end -->"
DEPLOY_START, DEPLOY_END = "<!-- deploy-table:start -->", "<!-- deploy-table:end -->"


def _write_block(start: str, end: str, table: str) -> None:
    """Replace a generated table in docs/camvid.md (between its markers), so it never goes stale."""
    from segdistill.fileio import atomic_write_text

    doc = REPO / "docs" / "camvid.md"
    text = doc.read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        atomic_write_text(doc, f"{head}{start}\n{table}\n{end}{tail}")


def _figures(finished: set[str]) -> None:
    """Curves of the ``finished`` runs (those in the table) and a prediction grid of the seed-0 models."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from segdistill.data import build_dataset, build_eval_pipeline
    from segdistill.fileio import atomic_path

    FIGURES.mkdir(parents=True, exist_ok=True)
    palette = ["black", "tab:blue", "tab:red", "tab:purple", "tab:green", "tab:orange", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan", "tab:gray"]
    styles = {0: "-", 1: "--", 2: ":"}
    # One figure per student (the PSPNet-R18-D8 one, with the teacher, keeps its old name).
    for student in dict.fromkeys(a.student for name, a in ARMS.items() if name != "teacher"):
        arms = (["teacher"] if student == "pspnet_r18-d8" else []) + [
            n for n, a in ARMS.items() if a.student == student and n != "teacher"]
        colors = {arm: palette[(i + (student != "pspnet_r18-d8")) % len(palette)] for i, arm in enumerate(arms)}
        in_table = [r for r in study() if r.arm in arms and r.run_id in finished]
        runs = [r for r in in_table if (r.folder / "metrics.jsonl").is_file()]
        if not runs:
            continue
        name = "camvid_curves.png" if student == "pspnet_r18-d8" else f"camvid_curves_{student}.png"
        if len(runs) < len(in_table):
            # Runs whose folders are gone (the first study's) have no curves left: redrawing would drop them
            # from the figure, so the committed figure stays until every run of the table has its metrics.
            print(f"[study] {name} kept: {len(in_table) - len(runs)} of its runs have no metrics.jsonl here")
            continue
        fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(11, 4))
        for run in runs:
            rows = [json.loads(x) for x in (run.folder / "metrics.jsonl").read_text().splitlines()]
            tr = [r for r in rows if r["kind"] == "train"]
            ev = [r for r in rows if r["kind"] == "eval"]
            label = f"{ARMS[run.arm].label} s{run.seed}" if run.arm != "teacher" else ARMS[run.arm].label
            ax_loss.plot([r["iter"] for r in tr], [r["loss_decode"] for r in tr], color=colors[run.arm], alpha=0.7,
                         lw=1, ls=styles.get(run.seed, "-."), label=label)
            ax_miou.plot([r["iter"] for r in ev], [r["mIoU"] for r in ev], color=colors[run.arm], marker="o", ms=3,
                         alpha=0.8, ls=styles.get(run.seed, "-."), label=label)
        ax_loss.set(xlabel="iteration", ylabel="decode CE (train)", title=f"{NETWORKS[student]}: training loss")
        ax_miou.set(xlabel="iteration", ylabel="val mIoU", title="validation mIoU (CamVid val, 101 frames)")
        ax_miou.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(FIGURES / name) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)

    shown = [r for r in (Run("teacher", "teacher", "", 0), Run("baseline_s0", "baseline", "", 0),
                         Run("cwd_logits_s0", "cwd_logits", "", 0)) if (r.folder / "final.pth").is_file()]
    if len(shown) < 3:  # the grid compares the three; a partial one would replace the committed grid
        print("[study] camvid_predictions.png kept: teacher, baseline_s0 and cwd_logits_s0 are not all here")
        return
    ds = build_dataset("camvid", "../shared/data/camvid", "val")
    pipeline = build_eval_pipeline((240, 180))
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(ds.palette)] = np.array(ds.palette, np.uint8)
    models = {}
    for run in shown:
        models[run.run_id] = _final_model(run, ds.num_classes)
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
    names = ["image", "ground truth"] + [ARMS[r.arm].label for r in shown]
    for k, text in enumerate(names):
        cv2.putText(header, text, (k * 240 + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    with atomic_path(FIGURES / "camvid_predictions.png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(np.concatenate([header, grid]), cv2.COLOR_RGB2BGR))


def _final_model(run: Run, num_classes: int) -> EncoderDecoder:
    """A finished run's ``final.pth`` in its arm's network, in eval mode."""
    from segdistill.models import build_segmentor, load_checkpoint

    model = build_segmentor(ARMS[run.arm].student, num_classes)
    load_checkpoint(model, run.folder / "final.pth")
    return model.eval()


def _val_inputs(ds: SegDataset) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Each val frame as a network input at the evaluation size (240x180), with its full-size label."""
    import numpy as np

    from segdistill.data import build_eval_pipeline

    pipeline = build_eval_pipeline((240, 180))
    for i in range(len(ds)):
        image, label = ds.load(i)
        x, _ = pipeline(image, label, np.random.default_rng(0))
        yield x, label


def cmd_confusion(args: argparse.Namespace) -> int:
    """For each run's final model: what it predicts on the val pixels of each chosen ground-truth class."""
    import numpy as np
    import torch

    from segdistill.data import build_dataset
    from segdistill.evaluation.metrics import ConfusionMatrix

    ds = build_dataset("camvid", "../shared/data/camvid", "val")
    unknown = [c for c in args.classes if c not in ds.classes]
    if unknown:
        print(f"unknown class(es) {', '.join(unknown)}; CamVid's are {', '.join(ds.classes)}", file=sys.stderr)
        return 2
    by_id = {r.run_id: r for r in study()}
    runs = [by_id[name] for name in args.runs if name in by_id and (by_id[name].folder / "final.pth").is_file()]
    if len(runs) != len(args.runs):
        print(f"no final.pth for {sorted(set(args.runs) - {r.run_id for r in runs})} under {RUNS}", file=sys.stderr)
        return 2
    n = ds.num_classes
    for run in runs:
        model = _final_model(run, n)
        cm = ConfusionMatrix(n)  # ground truth (rows) x prediction, ignored pixels left out
        for x, label in _val_inputs(ds):
            with torch.no_grad():
                cm.update(model.inference(x[None], out_size=label.shape).argmax(1)[0], torch.from_numpy(label))
        counts = cm.matrix.numpy()
        for name in args.classes:
            c = ds.classes.index(name)
            total = counts[c].sum()
            top = np.argsort(-counts[c])[:4]
            parts = ", ".join(f"{ds.classes[k]} {100 * counts[c, k] / total:.1f} %" for k in top if counts[c, k])
            predicted = counts[:, c].sum()
            print(f"{run.run_id}: {name} ({total} px) -> {parts}; predicted as {name} anywhere: {predicted} px")
    return 0


def logit_spread(logits: torch.Tensor) -> dict[str, list[float]]:
    """How spread a map's logits are, along the axes the logit losses' softmaxes run (10th, 50th, 90th %).

    ``channel_std``: unbiased std of each (image, channel) over its H*W positions (CWD's axis);
    ``pixel_std``: of each pixel over the C classes (KD's and DIST's axis); ``half_mass_raw`` and
    ``half_mass_standardized``: the fewest positions that hold half of a channel's spatial softmax at
    tau 1, as a fraction of H*W, on the raw logits and after logit standardization along that axis.
    """
    import torch

    from segdistill.distill.losses import standardize_logits

    logits = logits.detach().float()
    flat = logits.flatten(2)  # N, C, HW

    def half_mass(x: torch.Tensor) -> torch.Tensor:
        cum = x.softmax(-1).sort(-1, descending=True).values.cumsum(-1)
        return ((cum < 0.5).sum(-1) + 1).float() / x.shape[-1]

    q = torch.tensor([0.1, 0.5, 0.9])
    values = {"channel_std": flat.std(-1), "pixel_std": logits.std(1),
              "half_mass_raw": half_mass(flat), "half_mass_standardized": half_mass(standardize_logits(flat, -1))}
    return {k: [float(x) for x in torch.quantile(v.flatten(), q)] for k, v in values.items()}


def cmd_spread(args: argparse.Namespace) -> int:
    """logit_spread of one run's final model on the val frames at the evaluation size."""
    import torch

    from segdistill.data import build_dataset

    by_id = {r.run_id: r for r in study()}
    run = by_id.get(args.run)
    if run is None or not (run.folder / "final.pth").is_file():
        print(f"no final.pth for {args.run!r} under {RUNS}; see `status` for the run ids", file=sys.stderr)
        return 2
    ds = build_dataset("camvid", "../shared/data/camvid", "val")
    model = _final_model(run, ds.num_classes)
    with torch.no_grad():
        logits = torch.cat([model(x[None], with_aux=False)["decode"] for x, _ in _val_inputs(ds)])
    print(f"{run.run_id}: decode logits of {len(ds)} val frames at 240x180, map {tuple(logits.shape[1:])}")
    for name, (p10, p50, p90) in logit_spread(logits).items():
        print(f"  {name}: median {p50:.3f} (10th-90th percentile {p10:.3f}-{p90:.3f})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train every unfinished run, in order")
    p.add_argument("--only", nargs="*", help="run ids to train (see `status`)")
    p.set_defaults(func=cmd_run)
    sub.add_parser("status", help="where each run stands").set_defaults(func=cmd_status)
    p = sub.add_parser("report", help="JSON, tables, curves and prediction grid")
    p.add_argument("--from-json", action="store_true",
                   help="only the tables, from docs/results/camvid_study.json (no run folder is read)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("latency", help="CPU latency of each deployed network (segdistill bench --mode infer)")
    p.add_argument("--only", nargs="*", help="model names (default: all of the deployment table)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.set_defaults(func=cmd_latency)
    p = sub.add_parser("confusion", help="where each run's final model puts the val pixels of some classes")
    p.add_argument("--runs", nargs="+", required=True, help="run ids (see `status`)")
    p.add_argument("--classes", nargs="+", default=["pedestrian", "bicyclist"])
    p.set_defaults(func=cmd_confusion)
    p = sub.add_parser("without", help="paired gains and method differences with some classes left out of mIoU")
    p.add_argument("--classes", nargs="+", required=True, help="class names to leave out, e.g. fence")
    p.set_defaults(func=cmd_without)
    p = sub.add_parser("spread", help="how spread one run's logits are, raw and standardized (logit_spread)")
    p.add_argument("--run", default="teacher", help="run id (see `status`)")
    p.set_defaults(func=cmd_spread)
    args = parser.parse_args()
    from segdistill.engine.trainer import TrainingStopped

    try:
        return args.func(args)
    except TrainingStopped as stopped:  # SIGTERM/SIGINT: the run saved a checkpoint; rerun to continue
        print(f"[study] {stopped}", file=sys.stderr)
        return 128 + stopped.signum


if __name__ == "__main__":
    sys.exit(main())
