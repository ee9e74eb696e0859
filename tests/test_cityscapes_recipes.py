"""The Cityscapes distillation recipes of the zoo's students: each is the student's own mmseg recipe (its
student-alone config, which test_zoo_configs.py pins to mmseg's training facts) plus a released teacher and
the reference's CWD term on the logits, with ``align`` set exactly where the two logit maps differ in size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from segdistill.config import Config, load_config, to_dict
from segdistill.models import build_segmentor

CITYSCAPES = Path(__file__).resolve().parents[1] / "configs" / "cityscapes"
#: recipe -> (the student-alone config, the student's entry in training_facts.json, the teacher's entry or None)
RECIPES = {
    "cwd_logits_pspnet_r101-d8_deeplabv3plus_m-v2-d8_80k.yaml": (
        "deeplabv3plus_m-v2-d8_80k.yaml", "mobilenet_v2_deeplabv3plus", None),
    "cwd_logits_pspnet_r101-d8_segformer_mit-b0_160k.yaml": ("segformer_mit-b0_160k.yaml", "segformer_mit-b0", None),
    "cwd_logits_pspnet_r101-d8_bisenetv2_160k.yaml": ("bisenetv2_160k.yaml", "bisenetv2", None),
    "cwd_logits_pspnet_r101-d8_stdc1_80k.yaml": ("stdc1_80k.yaml", "stdc1", None),
    "cwd_logits_deeplabv3plus_r101-d8_deeplabv3plus_m-v2-d8_80k.yaml": (
        "deeplabv3plus_m-v2-d8_80k.yaml", "mobilenet_v2_deeplabv3plus", "deeplabv3plus_r101"),
}
#: The reference recipe: its teacher (PSPNet-R101-D8, released checkpoint) and its CWD term.
REFERENCE = CITYSCAPES / "cwd_logits_pspnet_r101-d8_pspnet_r18-d8_80k.yaml"


def _without_distillation(cfg: Config) -> dict:
    tree = to_dict(cfg)
    for key in ("name", "teacher", "distill"):
        tree.pop(key)
    return tree


def _logit_size(model: str, crop: tuple[int, int]) -> tuple[int, ...]:
    with torch.device("meta"):  # shapes only
        net = build_segmentor(model, 19).eval()
        return tuple(net(torch.zeros(1, 3, *crop), with_aux=False)["decode"].shape[2:])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_is_the_students_recipe_plus_the_teacher_and_cwd(name: str) -> None:
    alone_name, _, _ = RECIPES[name]
    cfg, alone, reference = load_config(CITYSCAPES / name), load_config(CITYSCAPES / alone_name), load_config(REFERENCE)
    assert _without_distillation(cfg) == _without_distillation(alone)
    assert cfg.name == name.removesuffix(".yaml") + "_cityscapes"
    assert cfg.teacher is not None and reference.teacher is not None
    if cfg.teacher.model == "pspnet_r101-d8":
        assert cfg.teacher == reference.teacher  # the released checkpoint and the same fast paths
    else:
        assert {k: v for k, v in to_dict(cfg)["teacher"].items() if k not in ("model", "checkpoint")} == \
               {k: v for k, v in to_dict(reference)["teacher"].items() if k not in ("model", "checkpoint")}
    (term,) = cfg.distill.losses
    (ref_term,) = reference.distill.losses
    assert {**to_dict(cfg)["distill"]["losses"][0], "align": "none"} == to_dict(reference)["distill"]["losses"][0]
    assert (term.type, term.tau, term.weight, ref_term.align) == ("cwd", 1.0, 5.0, "none")
    # align: "student" exactly where the logits differ in size on the training crop, else "none".
    student, teacher = _logit_size(cfg.student.model, cfg.data.crop_size), _logit_size(cfg.teacher.model,
                                                                                        cfg.data.crop_size)
    assert term.align == ("none" if student == teacher else "student"), (student, teacher)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_trains_as_the_students_mmseg_config(name: str, reference_dir: Path) -> None:
    facts = json.loads((reference_dir / "mmseg" / "zoo" / "training_facts.json").read_text())
    _, student_key, teacher_key = RECIPES[name]
    cfg, f = load_config(CITYSCAPES / name), facts[student_key]
    match = re.search(r"_(\d+)xb(\d+)-", f["config"])  # mmseg's "4xb2": 4 GPUs x 2 images
    assert match is not None
    gpus, per_gpu = int(match[1]), int(match[2])
    assert (cfg.optim.lr, cfg.train.iters, cfg.train.batch_size, cfg.train.global_batch) == (
        f["optim_wrapper"]["optimizer"]["lr"], f["max_iters"], f["batch_per_gpu"], gpus * per_gpu)
    assert list(cfg.data.crop_size) == f["crop_size"] and cfg.train.eval_interval == f["val_interval"]
    if teacher_key is not None:
        assert cfg.teacher is not None and cfg.teacher.checkpoint == facts[teacher_key]["released"]["weights"]
