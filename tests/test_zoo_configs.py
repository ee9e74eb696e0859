"""The Cityscapes configs: every one loads and builds, each student config trains the way mmseg's config
does (pinned to ../shared's training_facts.json), every zoo model shares one input normalisation, and the
zoo's students train end to end through the CLI on the tiny folder dataset with their configs' optimizers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_config_tree
from torch.utils.flop_counter import FlopCounterMode

from segdistill.cli import main
from segdistill.config import load_config
from segdistill.distill.distiller import check_compatible, tap_channels
from segdistill.models import build_segmentor, model_info, segmentor

REPO = Path(__file__).resolve().parents[1]
CITYSCAPES = REPO / "configs" / "cityscapes"
CONFIGS = sorted(CITYSCAPES.glob("*.yaml"))

# Student-alone config -> its mmseg config in training_facts.json.
FACTS = {
    "deeplabv3plus_m-v2-d8_80k.yaml": "mobilenet_v2_deeplabv3plus",
    "deeplabv3_m-v2-d8_80k.yaml": "mobilenet_v2_deeplabv3",
    "pspnet_m-v2-d8_80k.yaml": "mobilenet_v2_pspnet",
    "fcn_m-v2-d8_80k.yaml": "mobilenet_v2_fcn",
    "segformer_mit-b0_160k.yaml": "segformer_mit-b0",
    "segformer_mit-b1_160k.yaml": "segformer_mit-b1",
    "segformer_mit-b2_160k.yaml": "segformer_mit-b2",
    "bisenetv2_160k.yaml": "bisenetv2",
    "stdc1_80k.yaml": "stdc1",
    "stdc2_80k.yaml": "stdc2",
    "stdc1_in1k-pre_80k.yaml": "stdc1_in1k-pre",
    "deeplabv3plus_r18-d8_80k.yaml": "deeplabv3plus_r18",
    "deeplabv3plus_r50-d8_80k.yaml": "deeplabv3plus_r50",
    "deeplabv3plus_r101-d8_80k.yaml": "deeplabv3plus_r101",
}
# Student configs that predate training_facts.json (their values are pinned by test_config.py and the README).
UNPINNED = {"pspnet_r18-d8_80k_baseline.yaml"}
# mmcv's model-zoo names (mmcv/model_zoo/open_mmlab.json and mmcls.json) of the ImageNet backbones.
MMCV_ZOO = {
    "open-mmlab://resnet18_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet18_v1c-b5776b93.pth",
    "open-mmlab://resnet50_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
    "open-mmlab://resnet101_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
    "mmcls://mobilenet_v2": "https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/"
                            "mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth",
}
# stdc1_in1k-pre sets its ImageNet weights one level down (backbone.backbone_cfg.init_cfg), which
# training_facts.json's "pretrained"/"backbone_init_cfg" fields do not reach.
NESTED_PRETRAINED = {
    "stdc1_in1k-pre": "https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/stdc/stdc1_20220308-5368626c.pth",
}
RELEASED = re.compile(r"^# released: (\S+) \(mIoU ([0-9.]+)\)$", re.M)


def _facts(reference_dir: Path) -> dict[str, Any]:
    return json.loads((reference_dir / "mmseg" / "zoo" / "training_facts.json").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_cityscapes_config_loads_and_builds(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.kind == "cityscapes"
    nets = [cfg.student.model] + ([cfg.teacher.model] if cfg.teacher else [])
    with torch.device("meta"):  # names and shapes only: no memory, no init
        models = [build_segmentor(name, 19) for name in nets]
    for model in models:
        assert sum(p.numel() for p in model.parameters()) > 0
    if cfg.teacher is None:
        assert path.name in FACTS or path.name in UNPINNED, f"{path.name}: pin it to training_facts.json"
    else:  # every term taps modules both networks have, with channels that match or a connector between them
        student, teacher = models
        with torch.device("meta"):
            channels = tap_channels(student, teacher, cfg.distill.losses)
        check_compatible(student, teacher, cfg.distill.losses, channels)
        if path.name.startswith("mgd_"):  # the MGD authors' recipe: last backbone stage, 512 -> 2048 channels
            assert channels["mgd_backbone"] == (512, 2048)


@pytest.mark.parametrize("name", sorted(FACTS))
def test_student_config_trains_as_mmseg_does(name: str, reference_dir: Path) -> None:
    facts = _facts(reference_dir)[FACTS[name]]
    text = (CITYSCAPES / name).read_text()
    cfg = load_config(CITYSCAPES / name)
    o, t = cfg.optim, cfg.train
    # The optimizer and its parameter-wise multipliers.
    opt = facts["optim_wrapper"]["optimizer"]
    assert o.type == opt["type"].lower()
    assert (o.lr, o.weight_decay) == (opt["lr"], opt["weight_decay"])
    if o.type == "sgd":
        assert o.momentum == opt["momentum"]
    else:
        assert list(o.betas) == opt["betas"]
    assert facts["optim_wrapper"].get("clip_grad") is None and o.grad_clip is None
    keys = facts["optim_wrapper"].get("paramwise_cfg", {}).get("custom_keys", {})
    assert {r.key: (r.lr_mult, r.decay_mult) for r in o.paramwise} == {
        k: (v.get("lr_mult", 1.0), v.get("decay_mult", 1.0)) for k, v in keys.items()}
    # The schedule: an optional LinearLR warm-up, then PolyLR to the last iteration (mmengine's composition).
    sched = {s["type"]: s for s in facts["param_scheduler"]}
    assert set(sched) <= {"LinearLR", "PolyLR"} and o.schedule == "mmengine"
    warm = sched.get("LinearLR")
    assert o.warmup_iters == (warm["end"] if warm else 0)
    if warm:
        assert warm["begin"] == 0 and o.warmup_ratio == warm["start_factor"]
    poly = sched["PolyLR"]
    assert (poly["begin"], poly["end"]) == (o.warmup_iters, facts["max_iters"])
    assert (o.power, o.min_lr) == (poly["power"], poly["eta_min"])
    # Length, batch (per GPU and over the GPUs of the config's name), crop, evaluation interval.
    gpus, per_gpu = map(int, re.search(r"_(\d+)xb(\d+)-", facts["config"]).groups())
    assert per_gpu == facts["batch_per_gpu"]
    assert (t.iters, t.batch_size, t.global_batch, t.accumulate) == (facts["max_iters"], per_gpu, gpus * per_gpu, 1)
    assert t.eval_interval == facts["val_interval"]
    assert list(cfg.data.crop_size) == facts["crop_size"]
    # mmseg's Cityscapes pipelines: RandomResize((2048, 1024), 0.5-2.0), RandomCrop(cat_max_ratio 0.75),
    # flip 0.5, photometric distortion; test: Resize((2048, 1024), keep_ratio).
    d = cfg.data
    assert (d.scale, d.ratio_range, d.cat_max_ratio, d.flip_prob, d.photometric, d.eval_scale) == (
        (2048, 1024), (0.5, 2.0), 0.75, 0.5, True, (2048, 1024))
    # The ImageNet backbone mmseg starts from (none: trained from scratch).
    init = facts["backbone_init_cfg"]
    want = (MMCV_ZOO[facts["pretrained"]] if facts["pretrained"] else init["checkpoint"] if init
            else NESTED_PRETRAINED.get(FACTS[name]))
    assert cfg.student.pretrained_backbone == want
    # The released checkpoint and its single-scale mIoU, in the config's "# released:" comment.
    found = RELEASED.findall(text)
    assert found == [(facts["released"]["weights"], f"{facts['released']['cityscapes'][0]['mIoU']:.2f}")]
    # Evaluation as mmseg's test_cfg, where the zoo has the model's summary.
    summary = reference_dir / "mmseg" / "zoo" / f"{FACTS[name]}_summary.json"
    if summary.is_file():
        test_cfg = json.loads(summary.read_text())["model_cfg"]["test_cfg"]
        assert cfg.eval.mode == test_cfg["mode"]
        if test_cfg["mode"] == "slide":
            assert (list(cfg.eval.crop_size), list(cfg.eval.stride)) == (test_cfg["crop_size"], test_cfg["stride"])
        assert cfg.student.aux_weight is None  # the model's own auxiliary loss weights, as mmseg's config


def test_every_zoo_model_shares_one_normalisation(reference_dir: Path) -> None:
    # One normalisation for every model: any teacher/student pair sees the same input tensor.
    summaries = sorted((reference_dir / "mmseg" / "zoo").glob("*_summary.json"))
    assert len(summaries) >= 14
    for path in summaries:
        pre = json.loads(path.read_text())["model_cfg"]["data_preprocessor"]
        assert tuple(pre["mean"]) == segmentor.MEAN_RGB, path.name
        assert tuple(pre["std"]) == segmentor.STD_RGB, path.name
        assert pre["bgr_to_rgb"] is True and pre["pad_val"] == 0 and pre["seg_pad_val"] == 255, path.name


def test_info_counts_every_head_and_the_attention() -> None:
    """docs/models.md's FLOPs: auxiliary heads in a ModuleList are counted (and left out of inference), and
    SegFormer's attention is counted although CPU attention runs a fused kernel torch's counter does not see."""
    info = model_info(build_segmentor("stdc1", 19), "stdc1", (64, 128))
    assert info.flops["auxiliary_head"] > 0 and info.params["auxiliary_head"] > 0
    assert info.flops["total"] == info.flops["backbone"] + info.flops["decode_head"] + info.flops["auxiliary_head"]
    assert info.inference_flops == info.flops["backbone"] + info.flops["decode_head"]
    assert info.inference_params == info.params["backbone"] + info.params["decode_head"]
    model = build_segmentor("segformer_mit-b0", 19).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 128))  # on the CPU: the fused attention kernel is not counted
    # MiT-B0 (mmseg): widths 32, 64, 160, 256, 2 blocks per stage, strides 4, 8, 16, 32, key/value maps
    # reduced 8, 4, 2, 1 times per side; at 64x128 every stage attends to 2x4 = 8 keys. QK^T and AV cost
    # 2 x N x M x C FLOPs each per block.
    tokens = [16 * 32, 8 * 16, 4 * 8, 2 * 4]
    attention = sum(2 * 2 * n * 8 * c * 2 for n, c in zip(tokens, (32, 64, 160, 256), strict=True))
    assert model_info(model, "segformer_mit-b0", (64, 128)).flops["total"] == counter.get_total_flops() + attention


# model to train, its Cityscapes config (whose optimizer and schedule it keeps), its loss names
TRAINED = [
    ("deeplabv3plus_m-v2-d8-tiny", "deeplabv3plus_m-v2-d8_80k.yaml", {"loss_decode", "loss_aux"}),
    ("segformer_mit-b0-tiny", "segformer_mit-b0_160k.yaml", {"loss_decode"}),
    ("bisenetv2", "bisenetv2_160k.yaml", {"loss_decode", *(f"loss_aux_{i}" for i in range(4))}),
    ("stdc1", "stdc1_80k.yaml", {"loss_decode", "loss_aux_0", "loss_aux_1", "loss_aux_2_ce", "loss_aux_2_dice"}),
]


@pytest.mark.parametrize(("model", "config", "losses"), TRAINED, ids=[m for m, _, _ in TRAINED])
def test_student_trains_through_the_cli_with_its_config(model: str, config: str, losses: set[str],
                                                        tiny_dataset: Path, tmp_path: Path) -> None:
    """The Cityscapes config, with the tiny dataset, the model, and 3 iterations (warm-up cut to 2) instead."""
    tree = yaml.safe_load((CITYSCAPES / config).read_text())
    tiny = tiny_config_tree(tiny_dataset)
    tree["data"] = {**tiny["data"], "crop_size": [64, 64]}
    tree["student"].update(model=model, pretrained_backbone=None)
    warm = tree["optim"].get("warmup_iters", 0)
    tree["optim"]["warmup_iters"] = min(warm, 2)
    tree["train"] = {**tiny["train"], "iters": 3, "eval_interval": 3, "checkpoint_interval": 3}
    if tree["eval"]["mode"] == "slide":
        tree["eval"].update(crop_size=[32, 32], stride=[24, 24])  # the config's windows, scaled to the tiny images
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["train", str(path), "--work-dir", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["iter"] for r in train] == [1, 2, 3]
    for r in train:
        assert {k for k in r if k.startswith("loss_")} == losses
        assert all(math.isfinite(r[k]) for k in (*losses, "loss"))
        assert r["loss"] == pytest.approx(sum(r[k] for k in losses), rel=1e-5)
    o = tree["optim"]
    first_lr = o["lr"] * (o["warmup_ratio"] if warm else 1.0)
    assert train[0]["lr"] == pytest.approx(first_lr, rel=1e-6)
    assert [r for r in rows if r["kind"] == "eval"], "no evaluation ran"
    # The optimizer is the config's: its type, and mmseg's custom_keys multipliers group by group.
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "iter_0000003.pth", weights_only=False)
    groups = ckpt["optimizer"]["param_groups"]
    assert ("betas" in groups[0]) == (o["type"] == "adamw") and ("momentum" in groups[0]) == (o["type"] == "sgd")
    if o.get("paramwise"):
        for g in groups:
            assert g["lr_mult"] == (10.0 if "head" in g["name"] else 1.0), g["name"]
            assert g["weight_decay"] == (0.0 if "norm" in g["name"] else o["weight_decay"]), g["name"]
        assert any("head" in g["name"] for g in groups) and any("norm" in g["name"] for g in groups)
