"""Tests for the CamVid study script's statistics (scripts/camvid_study.py)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "camvid_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("camvid_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_paired_t_matches_closed_form_for_two_degrees_of_freedom(study) -> None:
    deltas = [1.57, 2.97, 0.4]
    t, p = study.paired_t(deltas)
    mean = sum(deltas) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / 2)
    assert t == pytest.approx(mean / (sd / math.sqrt(3)))
    # For 2 degrees of freedom the Student-t tail has a closed form.
    assert p == pytest.approx(0.5 * (1 - t / math.sqrt(t * t + 2)), abs=1e-9)


def test_paired_t_matches_table_values(study) -> None:
    # t(0.975, df=2) = 4.303 and t(0.95, df=4) = 2.132 from any t table: one-sided p 0.025 and 0.05.
    _, p2 = study.paired_t([4.303 / math.sqrt(3) + x for x in (-1.0, 0.0, 1.0)])
    assert p2 == pytest.approx(0.025, abs=2e-4)
    deltas = [-1.0, -0.5, 0.0, 0.5, 1.0]
    sd = math.sqrt(sum(d * d for d in deltas) / 4)
    _, p4 = study.paired_t([d + 2.132 * sd / math.sqrt(5) for d in deltas])
    assert p4 == pytest.approx(0.05, abs=2e-4)


def test_paired_t_sign_and_degenerate_cases(study) -> None:
    t, p = study.paired_t([-1.0, -2.0, -1.5])
    assert t < 0 and p > 0.5
    assert study.paired_t([1.0, 1.0]) == (math.inf, 0.0)
    with pytest.raises(ValueError):
        study.paired_t([1.0])


# ---- the report's logic, on synthetic rows (no training) -------------------------------------------------


def _row(arm: str, seed: int, miou: float) -> dict:
    return {"run": f"{arm}_s{seed}", "arm": arm, "seed": seed, "final_mIoU": miou, "wall_time_s": 600.0,
            "per_class_IoU": {"sky": miou + 40, "road": miou + 30}}


def test_gains_are_paired_by_seed_not_by_position(study) -> None:
    # The distilled arm lacks seed 1 and lists its seeds out of order: pairs must follow the seeds.
    rows = [_row("baseline", s, m) for s, m in ((0, 40.0), (1, 41.0), (2, 42.0))]
    rows += [_row("cwd_logits", 2, 45.0), _row("cwd_logits", 0, 41.5)]
    (gain,) = study.gains(study.group_rows(rows))
    assert (gain.a, gain.b, gain.seeds, gain.deltas) == ("cwd_logits", "baseline", (0, 2), (1.5, 3.0))
    assert gain.test == study.paired_t([1.5, 3.0])  # one-sided: H1 gain > 0
    assert gain.cells().startswith("s0, s2 | +1.50, +3.00 | +2.25 ± 1.06 |")


def test_a_consistent_loss_is_reported_as_a_loss_not_as_no_evidence(study) -> None:
    # SegFormer-B0's paired CWD gains on CamVid: -4.70, -5.22, -5.57 (docs/camvid.md).
    base = [_row("segformer_baseline", s, m) for s, m in ((0, 44.95), (1, 45.23), (2, 46.67))]
    cwd = [_row("segformer_cwd_logits", s, m) for s, m in ((0, 40.25), (1, 40.01), (2, 41.10))]
    (gain,) = study.gains(study.group_rows(base + cwd))
    t, p = gain.test
    assert t < -20 and p > 0.99
    assert gain.verdict() == "loss shown (one-sided p < 0.05 for H1: gain < 0)"
    # Mixed signs: neither direction is shown.
    mixed = [_row("segformer_cwd_logits", s, m) for s, m in ((0, 45.5), (1, 44.0), (2, 47.0))]
    (gain,) = study.gains(study.group_rows(base + mixed))
    assert gain.verdict() == "not shown with 3 seeds"


def test_method_differences_are_two_sided_and_never_rank_without_support(study) -> None:
    base = [_row("baseline", s, 40.0 + s) for s in (0, 1, 2)]
    cwd = [_row("cwd_logits", s, 43.0 + s + d) for s, d in ((0, 0.1), (1, -0.4), (2, 0.3))]
    dist = [_row("dist_logits", s, 43.0 + s + d) for s, d in ((0, -0.2), (1, 0.5), (2, 0.0))]
    std = [_row("cwd_logits_std", s, 41.0 + s + d) for s, d in ((0, 0.0), (1, 0.1), (2, -0.1))]
    other_student = [_row("mv2_cwd_logits", s, 30.0 + s) for s in (0, 1, 2)]  # never compared with PSPNet arms
    groups = study.group_rows(base + cwd + dist + std + other_student)
    diffs = {(d.a, d.b): d for d in study.method_differences(groups)}
    assert set(diffs) == {("cwd_logits", "dist_logits"), ("cwd_logits", "cwd_logits_std"),
                          ("dist_logits", "cwd_logits_std")}
    close = diffs[("cwd_logits", "dist_logits")]
    assert close.deltas == pytest.approx((0.3, -0.9, 0.3))
    t1, p1 = study.paired_t(list(close.deltas))
    assert close.test == pytest.approx((t1, 2 * min(p1, 1 - p1)))
    assert close.verdict() == "not shown with 3 seeds"  # a mean of -0.10 that the seeds do not support
    clear = diffs[("cwd_logits", "cwd_logits_std")]  # +2 on every seed, up to +-0.2
    assert clear.test[1] < 0.05 and clear.verdict().startswith(study.ARMS["cwd_logits"].label + " higher")
    reverse = diffs[("dist_logits", "cwd_logits_std")]
    assert reverse.mean > 0 and "higher" in reverse.verdict()
    # Two-sided: the sign of the difference does not change the p-value.
    assert study.two_sided_p([-d for d in close.deltas])[1] == pytest.approx(close.test[1])


def test_holm_adjusts_each_p_value_over_its_family(study) -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1; each at least the one before it in that order.
    assert study.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert study.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert study.holm([0.02]) == pytest.approx([0.02])


def test_a_method_difference_is_ranked_only_when_it_survives_the_family_adjustment(study) -> None:
    # Three arms on one student with two seeds each: KD - DIST is -1.52, -1.31 (two-sided p 0.046 alone),
    # but it is one of three tests, so its adjusted p is above 0.05 and no winner is declared.
    base = [_row("baseline", s, 42.0) for s in (0, 1)]
    cwd = [_row("cwd_logits", 0, 44.37), _row("cwd_logits", 1, 44.43)]
    kd = [_row("kd_logits", 0, 44.25), _row("kd_logits", 1, 44.23)]
    dist = [_row("dist_logits", 0, 45.77), _row("dist_logits", 1, 45.54)]
    seg = [_row("segformer_baseline", s, 45.0) for s in (0, 1)]
    seg += [_row("segformer_cwd_logits", s, 40.0 + s) for s in (0, 1)]
    seg += [_row("segformer_cwd_logits_align_teacher", s, 41.0 + s + 0.1 * s) for s in (0, 1)]
    diffs = {(d.a, d.b): d for d in study.method_differences(study.group_rows(base + cwd + kd + dist + seg))}
    kd_dist = diffs[("kd_logits", "dist_logits")]
    raw = kd_dist.test[1]
    assert raw < 0.05 and kd_dist.p_holm > 0.05
    assert kd_dist.verdict() == "not shown with 2 seeds"
    # The family is the student's: the SegFormer pair (its own family of one) is not adjusted by these three.
    family = [diffs[k].test[1] for k in (("cwd_logits", "kd_logits"), ("cwd_logits", "dist_logits"),
                                         ("kd_logits", "dist_logits"))]
    assert [diffs[k].p_holm for k in (("cwd_logits", "kd_logits"), ("cwd_logits", "dist_logits"),
                                      ("kd_logits", "dist_logits"))] == pytest.approx(study.holm(family))
    seg_pair = diffs[("segformer_cwd_logits", "segformer_cwd_logits_align_teacher")]
    assert seg_pair.p_holm == pytest.approx(seg_pair.test[1])
    assert kd_dist.cells(holm=True).endswith(f"| {raw:.3f} | {kd_dist.p_holm:.3f} | not shown with 2 seeds |")


def test_one_seed_in_common_is_listed_only_for_a_variant_of_the_same_config(study) -> None:
    rows = [_row("segformer_baseline", 0, 30.0), _row("segformer_cwd_logits", 0, 33.0),
            _row("segformer_cwd_logits_align_teacher", 0, 34.0), _row("baseline", 0, 40.0),
            _row("kd_logits", 0, 42.0), _row("cwd_logits", 0, 42.5), _row("mv2_cwd_logits", 0, 39.0)]
    diffs = study.method_differences(study.group_rows(rows))
    # kd vs cwd share one seed and are different methods: not listed; the align variant is, unranked;
    # arms of different students are never compared.
    assert [(d.a, d.b) for d in diffs] == [("segformer_cwd_logits", "segformer_cwd_logits_align_teacher")]
    assert diffs[0].test is None and diffs[0].verdict() == "1 seed pair: no test, not ranked"
    assert diffs[0].cells().startswith("s0 | -1.00 | -1.00 | - | - |")


def test_method_differences_pair_only_runs_distilled_from_the_same_teacher(study) -> None:
    # The tau-4 sweep point was distilled from the first teacher, CWD seed 0 was rerun on the second:
    # their difference would mix a teacher change into a method change, so that seed is not paired.
    rows = [_row("baseline", 0, 40.0), _row("cwd_logits", 0, 44.37), _row("cwd_logits_tau4", 0, 44.73),
            _row("kd_logits", 0, 44.0), _row("kd_logits", 1, 44.5), _row("cwd_logits", 1, 44.43)]
    for row, teacher in zip(rows[1:], (45.91, 45.51, 45.51, 45.91, 45.91), strict=True):
        row["teacher_mIoU"] = teacher
    groups = study.group_rows(rows)
    assert study.method_differences(groups) == []  # cwd vs kd: only s1 shares a teacher; cwd vs tau4: none
    rows[3]["teacher_mIoU"] = 45.91  # KD seed 0 rerun on the second teacher
    (diff,) = study.method_differences(study.group_rows(rows))
    assert (diff.a, diff.b, diff.seeds) == ("cwd_logits", "kd_logits", (0, 1))
    assert diff.deltas == pytest.approx((0.37, -0.07))
    # A gain over the student alone pairs every seed: the student alone has no teacher.
    gain = {g.a: g for g in study.gains(study.group_rows(rows + [_row("baseline", 1, 41.0)]))}["cwd_logits"]
    assert gain.seeds == (0, 1) and gain.deltas == pytest.approx((4.37, 3.43))


def test_report_tables_give_the_first_studys_statistics_and_each_runs_teacher(study) -> None:
    # The first study's six PSPNet-R18-D8 runs (docs/camvid.md), distilled from the first teacher (45.51).
    first = {"baseline": (42.69507141052708, 42.252393017581205, 41.503861246535806),
             "cwd_logits": (44.26130903907868, 45.21842160593309, 44.77534185752345)}
    rows = [_row(arm, seed, m) for arm, values in first.items() for seed, m in enumerate(values)]
    for row in rows:
        row.update(wall_time_s=60.0, per_class_IoU={"sky": 90.0})
        if row["arm"] == "cwd_logits":
            row["teacher_mIoU"] = 45.50676537304948
    rows[-1]["teacher_mIoU"] = 45.91232388975834  # one seed rerun on the second teacher
    rows.append({**_row("teacher", 0, 45.91232388975834), "wall_time_s": 60.0, "per_class_IoU": {"sky": 91.0},
                 "earlier_result": {"final_mIoU": 45.50676537304948}})
    table = study.report_tables(rows)
    assert ("| PSPNet-R18-D8 | PSPNet-R18-D8 alone | 3 | 42.15 ± 0.60 | s0: 42.70, s1: 42.25, s2: 41.50 | 1 | - |"
            in table)
    assert "| s0, s1, s2 | +1.57, +2.97, +3.27 | +2.60 ± 0.91 | 4.96 | 0.019 | gain shown" in table
    assert "| 44.75 ± 0.48 | s0: 44.26, s1: 45.22, s2: 44.78 | 1 | 45.51, 45.91 |" in table  # both teachers named
    assert "| (teacher) | PSPNet-R50-D8 teacher | 1 | 45.91 | s0: 45.91 (first run: 45.51) | 1 | - |" in table
    assert "| SegFormer-B0 | SegFormer-B0 alone | 0 | - | queued | - | - |" in table


def test_deploy_table_fills_what_is_finished_and_leaves_the_rest_empty(study) -> None:
    rows = [_row("teacher", 0, 45.0), _row("mv2_baseline", 0, 38.0), _row("mv2_baseline", 1, 39.0),
            _row("mv2_cwd_logits", 1, 41.5), _row("mv2_cwd_logits", 2, 50.0)]  # s2 has no partner
    stats = {"deeplabv3plus_m-v2-d8": {"params_m": 15.1234, "gflops": 7.891}}
    latency = {"date": "2026-12-01", "machine": "test", "models": {"deeplabv3plus_m-v2-d8": {"eager fp32": 12.34}}}
    lines = study.deploy_table(rows, stats, latency).splitlines()
    teacher, r18, mv2, segformer = lines[2:6]
    assert teacher == "| PSPNet-R50-D8 | teacher |  |  |  |  | 45.00 |  |  |"
    assert r18 == "| PSPNet-R18-D8 | student |  |  |  |  |  |  |  |"
    # Gain paired by seed (s1 only: 41.5 - 39.0), not the difference of the arms' means.
    assert mv2 == "| DeepLabV3+-MobileNetV2-D8 | student | 15.12 | 7.89 | 12.3 |  | 38.50 ± 0.71 | 45.75 ± 6.01 | " \
                  "+2.50 (1 pair) |"
    assert segformer == "| SegFormer-B0 | student |  |  |  |  |  |  |  |"


def test_deploy_stats_count_the_deployed_network_only(study) -> None:
    stats = study.deploy_stats("pspnet_r18-d8-tiny")
    from segdistill.models import build_segmentor

    net = build_segmentor("pspnet_r18-d8-tiny", 11).eval()
    aux = sum(p.numel() for p in net.auxiliary_head.parameters())
    assert stats["params_m"] * 1e6 == sum(p.numel() for p in net.parameters()) - aux
    # FLOPs of the inference forward: without the auxiliary head, at the study's evaluation size.
    from torch.utils.flop_counter import FlopCounterMode

    counted = {}
    for with_aux in (False, True):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            net(torch.zeros(1, 3, 180, 240), with_aux=with_aux)
        counted[with_aux] = counter.get_total_flops() / 1e9
    assert stats["gflops"] == pytest.approx(counted[False]) and counted[False] < counted[True]


def test_the_study_runs_in_the_order_of_the_issues(study) -> None:
    ids = [r.run_id for r in study.study()]
    assert ids[:10] == ["teacher", "baseline_s0", "cwd_logits_s0", "baseline_s1", "cwd_logits_s1", "baseline_s2",
                        "cwd_logits_s2", "cwd_logits_feats_s0", "kd_logits_s0", "cwd_logits_tau4_s0"]  # as run
    assert ids[10:] == [
        "mv2_baseline_s0", "mv2_cwd_logits_s0", "mv2_baseline_s1", "mv2_cwd_logits_s1", "mv2_baseline_s2",
        "mv2_cwd_logits_s2", "segformer_baseline_s0", "segformer_cwd_logits_s0", "segformer_baseline_s1",
        "segformer_cwd_logits_s1", "segformer_baseline_s2", "segformer_cwd_logits_s2",
        "segformer_cwd_logits_align_teacher_s0", "segformer_cwd_logits_w1_s0", "kd_logits_s1", "kd_logits_s2",
        "dist_logits_s0", "dist_logits_s1",
        "dist_logits_s2", "cwd_logits_std_s0", "cwd_logits_std_s1", "cwd_logits_std_s2", "mgd_bottleneck_s0",
        "mgd_bottleneck_s1", "mgd_bottleneck_s2"]
    runs = {r.run_id: r for r in study.study()}
    assert runs["mv2_baseline_s1"].overrides() == ["seed=1", "teacher=null"]
    teacher_ckpt = f"teacher.checkpoint={study.RUNS / 'teacher' / 'final.pth'}"
    assert runs["segformer_cwd_logits_align_teacher_s0"].overrides() == [
        "seed=0", teacher_ckpt, "name=camvid_cwd_logits_segformer_mit-b0_align_teacher",
        "distill.losses.0.align=teacher"]


def test_every_arm_config_loads_with_its_overrides(study) -> None:
    from segdistill.config import load_config

    for run in study.study():
        cfg = load_config(SCRIPT.parents[1] / run.config, run.overrides())
        arm = study.ARMS[run.arm]
        assert cfg.student.model == arm.student and (cfg.teacher is not None) == (arm.alone is not None)
        assert (cfg.train.iters, cfg.train.batch_size, cfg.train.amp, cfg.optim.schedule) == (
            1600, 8, "bf16", "scaled_warmup")
        assert (cfg.data.crop_size, cfg.data.eval_scale, cfg.optim.warmup_iters) == ((128, 160), (240, 180), 100)
        assert cfg.student.pretrained_backbone is None and cfg.student.checkpoint is None  # from scratch
        if cfg.teacher is not None:
            assert cfg.teacher.model == study.TEACHER_MODEL
    segformer = load_config(SCRIPT.parents[1] / study.ARMS["segformer_baseline"].config)
    assert segformer.optim.type == "adamw"
    assert [r.key for r in segformer.optim.paramwise] == ["pos_block", "norm", "head"]


def test_write_results_keeps_recorded_rows_and_the_earlier_result_of_a_rerun(study, tmp_path, monkeypatch) -> None:
    """The first study's run folders are gone: rewriting the JSON from the folders must not drop their rows,
    and a rerun (the teacher's reproduction) keeps the earlier result beside its own."""
    from segdistill.config import dump_config, load_config

    results = tmp_path / "camvid_study.json"
    old = [{"run": "teacher", "arm": "teacher", "seed": 0, "final_mIoU": 45.5}, {"run": "baseline_s0",
           "arm": "baseline", "seed": 0, "final_mIoU": 42.7}]
    results.write_text(json.dumps({"runs": old}))
    runs = tmp_path / "runs"
    teacher = runs / "teacher"
    teacher.mkdir(parents=True)
    teacher_cfg = load_config(study.REPO / "configs/camvid/pspnet_r50-d8_teacher.yaml")
    (teacher / "config.yaml").write_text(dump_config(teacher_cfg))
    per_class = {"sky": {"IoU": 90.0}}
    (teacher / "results.json").write_text(json.dumps({"iterations": 1600, "wall_time_s": 10.0, "final": {
        "mIoU": 45.1, "mAcc": 50.0, "aAcc": 80.0, "per_class": per_class}}))
    monkeypatch.setattr(study, "RESULTS", results)
    monkeypatch.setattr(study, "RUNS", runs)
    doc = study.write_results()
    rows = {r["run"]: r for r in doc["runs"]}
    assert rows["baseline_s0"] == old[1]  # no folder: the recorded row stays
    assert rows["teacher"]["final_mIoU"] == 45.1 and rows["teacher"]["earlier_result"]["final_mIoU"] == 45.5
    assert json.loads(results.read_text()) == doc
    # Written again (after every run, and by `report`): the earlier result must survive (it once did not).
    again = {r["run"]: r for r in study.write_results()["runs"]}
    assert again["teacher"]["earlier_result"]["final_mIoU"] == 45.5
    # A distilled run records the result of the teacher it distilled from (the one beside its checkpoint).
    cwd = runs / "cwd_logits_s0"
    cwd.mkdir()
    cwd_cfg = load_config(study.REPO / "configs/camvid/cwd_logits.yaml", [f"teacher.checkpoint={teacher}/final.pth"])
    (cwd / "config.yaml").write_text(dump_config(cwd_cfg))
    (cwd / "results.json").write_text(json.dumps({"iterations": 1600, "wall_time_s": 10.0, "final": {
        "mIoU": 44.0, "mAcc": 50.0, "aAcc": 80.0, "per_class": per_class}}))
    rows = {r["run"]: r for r in study.write_results()["runs"]}
    assert rows["cwd_logits_s0"]["teacher_mIoU"] == 45.1 and "teacher_mIoU" not in rows["teacher"]


def test_figures_are_not_redrawn_without_the_runs_whose_folders_are_gone(study, tmp_path, monkeypatch) -> None:
    """The first study's run folders are gone: redrawing its curves from the teacher alone, or its prediction
    grid from one model, replaced the committed figures once. A figure is drawn only from all of its runs."""
    pytest.importorskip("matplotlib")
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    for run_id in ("teacher", "segformer_baseline_s0"):
        (runs / run_id).mkdir(parents=True)
        rows = [{"kind": "train", "iter": i, "loss_decode": 1.0 / i} for i in (20, 40)]
        rows += [{"kind": "eval", "iter": 40, "mIoU": 40.0}]
        (runs / run_id / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(study, "RUNS", runs)
    monkeypatch.setattr(study, "FIGURES", figures)
    study._figures({"teacher", "baseline_s0", "cwd_logits_s0", "segformer_baseline_s0"})
    assert not (figures / "camvid_curves.png").exists()  # baseline_s0 and cwd_logits_s0 have no metrics here
    assert not (figures / "camvid_predictions.png").exists()
    assert (figures / "camvid_curves_segformer_mit-b0.png").is_file()  # all of its runs are here


def test_logit_spread_measures_each_softmax_axis_and_standardization_removes_scale(study) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 5)
    # A positive scale and a shift per (image, channel): CWD's softmax axis is the positions.
    scale = torch.tensor([0.5, 2.0, 8.0]).view(1, 3, 1, 1)
    scaled = study.logit_spread(logits * scale + torch.randn(2, 3, 1, 1))
    plain = study.logit_spread(logits)
    assert scaled["half_mass_standardized"] == pytest.approx(plain["half_mass_standardized"], abs=1e-6)
    assert scaled["half_mass_raw"] != pytest.approx(plain["half_mass_raw"], abs=1e-3)  # raw: scale matters
    assert scaled["channel_std"][2] > plain["channel_std"][2] * 3  # the x8 channels
    # One position far above the rest holds all of its channel's mass: 1 of 30 positions.
    peaked = torch.zeros(1, 2, 6, 5)
    peaked[0, 0, 2, 3] = peaked[0, 1, 5, 0] = 100.0
    assert study.logit_spread(peaked)["half_mass_raw"] == pytest.approx([1 / 30] * 3)
    # Flat logits spread their mass evenly: half of it needs half of the positions.
    assert study.logit_spread(torch.zeros(1, 2, 6, 5))["half_mass_raw"] == pytest.approx([15 / 30] * 3)
    # Per pixel over the classes (KD's and DIST's axis): classes 0, 1, 2 at 0, 1, 2 -> std 1 everywhere.
    ramp = torch.arange(3.0).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert study.logit_spread(ramp)["pixel_std"] == pytest.approx([1.0] * 3)


def test_without_classes_takes_miou_over_the_other_classes_and_pairs_as_before(study, tmp_path, monkeypatch,
                                                                               capsys) -> None:
    # Two arms whose whole difference is one class: leaving it out removes the difference, not the rest.
    def row(arm: str, seed: int, fence: float, car: float | None) -> dict:
        per_class = {"sky": 90.0 + seed, "fence": fence, "car": car}
        kept = [v for v in per_class.values() if v is not None]
        return {**_row(arm, seed, sum(kept) / len(kept)), "per_class_IoU": per_class, "teacher_mIoU": 45.9}

    rows = [row("kd_logits", s, 30.0, 40.0 + s) for s in (0, 1, 2)]
    rows += [row("dist_logits", s, 45.0 + s, 40.0 + s) for s in (0, 1, 2)]
    rows.append(row("baseline", 0, 20.0, None))  # car absent: out of the mean, as in the metric
    out = {r["run"]: r["final_mIoU"] for r in study.without_classes(rows, ["fence"])}
    assert out["kd_logits_s1"] == pytest.approx((91.0 + 41.0) / 2)
    assert out["baseline_s0"] == pytest.approx(90.0)
    assert {r["run"]: r["final_mIoU"] for r in rows}["dist_logits_s1"] == pytest.approx((91 + 46 + 41) / 3)  # unchanged
    (full,) = study.method_differences(study.group_rows(rows))
    assert full.deltas == pytest.approx((-5.0, -5.33333, -5.66667), abs=1e-4)
    (rest,) = study.method_differences(study.group_rows(study.without_classes(rows, ["fence"])))
    assert rest.deltas == pytest.approx((0.0, 0.0, 0.0))
    # The command reads the results JSON and says what a wrong class name is, with exit 2.
    results = tmp_path / "camvid_study.json"
    results.write_text(json.dumps({"runs": rows}))
    monkeypatch.setattr(study, "RESULTS", results)
    monkeypatch.setattr(study, "REPO", tmp_path)
    assert study.cmd_without(argparse.Namespace(classes=["fence"])) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("mIoU over 2 of 3 classes, without fence (from camvid_study.json):")
    assert "| s0, s1, s2 | +0.00, +0.00, +0.00 |" in printed
    assert study.cmd_without(argparse.Namespace(classes=["fenc"])) == 2
    assert "unknown class(es) fenc" in capsys.readouterr().err
