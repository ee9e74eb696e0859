"""Each distillation term's value inside the distiller, and the shipped Cityscapes configs pinned to the recipe.

``DistillStudent`` returns one ``loss_<name>`` per term. These tests recompute every term on their own:
forward hooks of their own on the student's modules (the same forward the distiller taps), the
connector applied by hand (1x1 conv + train-mode BatchNorm written out), the loss class called
directly with the configured ``tau`` and ``weight``, and for one case CWD's closed form in float64.
Swapping student and teacher, dropping ``tau`` or ``weight``, tapping another module or skipping the
connector each change a value these tests compare.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdistill.config import Config, DistillTerm, load_config
from segdistill.distill.distiller import DistillStudent, tap_channels
from segdistill.distill.losses import ChannelWiseDivergence, PixelWiseKD
from segdistill.engine.run import check_global_batch, effective_global_batch, lr_at
from segdistill.errors import UserError
from segdistill.models import build_segmentor

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5

# Non-default tau and weight everywhere, so a term built with the defaults (tau 1, weight 1) or with
# another term's options gives another value. The KD term taps *different* student and teacher
# modules, so reading the teacher's tap name on the student side (or the reverse) is visible too.
CWD_LOGITS = DistillTerm("cwd_logits", "cwd", "decode_head.conv_seg", "decode_head.conv_seg", weight=3.0, tau=2.0)
KD_AUX = DistillTerm("kd_aux", "kd", "auxiliary_head.conv_seg", "decode_head.conv_seg", weight=0.7, tau=3.0)
CWD_FEAT = DistillTerm("cwd_feat", "cwd", "decode_head.bottleneck", "decode_head.bottleneck", weight=2.0, tau=4.0,
                       connector="convbn")
TERMS = [CWD_LOGITS, KD_AUX, CWD_FEAT]


def _record(model: nn.Module, names: list[str]) -> tuple[dict[str, torch.Tensor], list]:
    """Forward hooks of the test's own (not the distiller's ``Tap``): module name -> its output."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out)) for n in names]
    return seen, handles


@pytest.fixture(scope="module")
def case() -> dict:
    """One distiller forward in train mode, with the student's tapped maps recorded by the test's hooks."""
    torch.manual_seed(0)
    student = build_segmentor("pspnet_r18-d8-tiny", NUM_CLASSES)
    teacher = build_segmentor("pspnet_r50-d8-tiny", NUM_CLASSES).eval()
    model = DistillStudent(student, TERMS, tap_channels(student, teacher, TERMS)).train()
    with torch.no_grad():  # non-trivial connector BN affine, so a skipped or half-applied connector shows
        bn = model.connectors["cwd_feat"].bn
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    t_seen, handles = _record(teacher, ["decode_head.conv_seg", "decode_head.bottleneck"])
    with torch.no_grad():
        teacher(x)
    for h in handles:
        h.remove()
    # The teacher's maps are inputs of the distiller. A random-init network's logits are tiny (std 0.03):
    # scale them to std ~3, so the softmaxes are far from uniform, tau matters, and the KL is large
    # against float32 rounding (the closed-form comparison below is then meaningful at rtol 1e-5).
    t_out = {"decode_head.conv_seg": t_seen["decode_head.conv_seg"] * 100.0,
             "decode_head.bottleneck": t_seen["decode_head.bottleneck"]}
    s_seen, handles = _record(student, ["decode_head.conv_seg", "auxiliary_head.conv_seg", "decode_head.bottleneck"])
    losses = model(x, y, t_out)
    for h in handles:
        h.remove()
    return {"model": model, "losses": losses, "s": s_seen, "t": t_out}


def test_every_term_is_returned_by_name(case: dict) -> None:
    assert set(case["losses"]) == {"loss_decode", "loss_aux", "loss_cwd_logits", "loss_kd_aux", "loss_cwd_feat"}
    # The student maps differ from each other and from the teacher's, so a mix-up cannot agree by chance.
    s, t = case["s"], case["t"]
    assert not torch.allclose(s["decode_head.conv_seg"], s["auxiliary_head.conv_seg"])
    assert not torch.allclose(s["decode_head.conv_seg"], t["decode_head.conv_seg"])


def test_logit_cwd_term_is_the_loss_on_student_then_teacher_logits(case: dict) -> None:
    s, t = case["s"]["decode_head.conv_seg"], case["t"]["decode_head.conv_seg"]
    want = ChannelWiseDivergence(tau=2.0, loss_weight=3.0)(s, t)
    got = case["losses"]["loss_cwd_logits"].detach()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    # The wrong orders and options give other values (the test can see each mistake).
    for wrong in (ChannelWiseDivergence(tau=2.0, loss_weight=3.0)(t, s),
                  ChannelWiseDivergence(tau=1.0, loss_weight=3.0)(s, t)):
        assert abs(float(wrong.detach()) - float(got)) > 1e-3 * float(got)


def test_logit_cwd_term_equals_the_closed_form(case: dict) -> None:
    """CWD written out in float64: w * tau^2 / (N*C) * sum_{n,c} KL(softmax_HW(T/tau) || softmax_HW(S/tau))."""
    s = case["s"]["decode_head.conv_seg"].detach().double()
    t = case["t"]["decode_head.conv_seg"].double()
    tau, weight = 2.0, 3.0
    n, c = t.shape[:2]
    log_ps = torch.log_softmax(s.flatten(2) / tau, dim=2)
    log_pt = torch.log_softmax(t.flatten(2) / tau, dim=2)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum()
    want = weight * tau**2 / (n * c) * kl
    got = case["losses"]["loss_cwd_logits"].double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


def test_kd_term_reads_its_own_student_tap_and_options(case: dict) -> None:
    s, t = case["s"]["auxiliary_head.conv_seg"], case["t"]["decode_head.conv_seg"]
    want = PixelWiseKD(tau=3.0, loss_weight=0.7)(s, t)
    torch.testing.assert_close(case["losses"]["loss_kd_aux"], want, rtol=1e-6, atol=0)
    # Closed form: KL over the classes at every pixel, averaged over the N*H*W pixels.
    sd, td = s.detach().double(), t.double()
    n, _, h, w = td.shape
    log_ps, log_pt = torch.log_softmax(sd / 3.0, dim=1), torch.log_softmax(td / 3.0, dim=1)
    closed = 0.7 * 9.0 / (n * h * w) * (log_pt.exp() * (log_pt - log_ps)).sum()
    torch.testing.assert_close(case["losses"]["loss_kd_aux"].double(), closed, rtol=1e-5, atol=0)


def test_feature_term_goes_through_its_connector(case: dict) -> None:
    feat = case["s"]["decode_head.bottleneck"]
    t = case["t"]["decode_head.bottleneck"]
    connector = case["model"].connectors["cwd_feat"]
    # The connector by hand: 1x1 conv without bias, then BatchNorm with the batch's statistics (train mode).
    y = F.conv2d(feat, connector.conv.weight)
    mean = y.mean(dim=(0, 2, 3), keepdim=True)
    var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    bn = connector.bn
    projected = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert projected.shape[1] == t.shape[1] == 128 and feat.shape[1] == 32
    want = ChannelWiseDivergence(tau=4.0, loss_weight=2.0)(projected, t)
    torch.testing.assert_close(case["losses"]["loss_cwd_feat"], want, rtol=1e-5, atol=0)
    # The gradient reaches the connector's parameters through this term alone.
    connector.zero_grad()
    case["losses"]["loss_cwd_feat"].backward(retain_graph=True)
    assert connector.conv.weight.grad is not None and connector.conv.weight.grad.abs().sum() > 0


# ---- the shipped reference configs ---------------------------------------------------------------

# The reference recipe and its R18-D8 variants; the zoo's configs are pinned by test_zoo_configs.py (students
# alone) and test_cityscapes_recipes.py (their distillation recipes).
CITYSCAPES = [REPO / "configs" / "cityscapes" / name for name in (
    "cwd_logits_deeplabv3_r101-d8_deeplabv3_r18-d8_80k.yaml", "cwd_logits_feats_pspnet_r101-d8_pspnet_r18-d8_80k.yaml",
    "cwd_logits_pspnet_r101-d8_pspnet_r18-d8_80k.yaml", "pspnet_r18-d8_80k_baseline.yaml")]
RECIPE_TERM = {"type": "cwd", "student": "decode_head.conv_seg", "teacher": "decode_head.conv_seg",
               "tau": 1.0, "weight": 5.0, "connector": None, "standardize": False}


def test_the_four_documented_r18_configs_exist() -> None:
    assert all(p.is_file() for p in CITYSCAPES)


@pytest.mark.parametrize("path", CITYSCAPES, ids=lambda p: p.stem)
def test_cityscapes_config_is_the_recipe(path: Path) -> None:
    """mmrazor's cwd_logits_pspnet_r101-d8_pspnet_r18-d8_4xb2-80k_cityscapes-512x1024 and mmseg's schedule_80k."""
    cfg: Config = load_config(path)
    # SGD lr 0.01, momentum 0.9, weight decay 5e-4 on every parameter; poly power 0.9 down to 1e-4, no warm-up.
    o = cfg.optim
    assert (o.type, o.lr, o.momentum, o.weight_decay, o.norm_weight_decay, o.paramwise) == (
        "sgd", 0.01, 0.9, 5e-4, None, [])
    assert (o.power, o.min_lr, o.warmup_iters, o.grad_clip, o.schedule) == (0.9, 1e-4, 0, None, "mmengine")
    assert lr_at(cfg, 0) == 0.01 and lr_at(cfg, 79999) == pytest.approx(1e-4, rel=1e-9)
    assert lr_at(cfg, 40000) == pytest.approx((0.01 - 1e-4) * (1 - 40000 / 79999) ** 0.9 + 1e-4, rel=1e-12)
    # 80k iterations of global batch 8 = 4 GPUs x 2 ("4xb2"), float32.
    t = cfg.train
    assert (t.iters, t.batch_size, t.accumulate, t.global_batch, t.amp) == (80000, 2, 1, 8, "none")
    assert effective_global_batch(cfg, 4) == 8 and check_global_batch(cfg, 4) == 8
    with pytest.raises(UserError, match="set train.accumulate=4"):
        check_global_batch(cfg, 1)
    # Data: 512x1024 crops from RandomResize((2048, 1024), (0.5, 2.0)); whole-image evaluation at 2048x1024.
    d = cfg.data
    assert (d.kind, d.crop_size, d.scale, d.ratio_range, d.cat_max_ratio) == (
        "cityscapes", (512, 1024), (2048, 1024), (0.5, 2.0), 0.75)
    assert (d.flip_prob, d.photometric, d.eval_scale, cfg.eval.mode) == (0.5, True, (2048, 1024), "whole")
    # Student: ImageNet ResNet-18-V1c, auxiliary FCN head weighted 0.4, mmseg's CE averaging.
    s = cfg.student
    assert s.model.endswith("_r18-d8") and s.aux_weight == 0.4 and s.avg_non_ignore is False
    assert s.pretrained_backbone is not None and s.pretrained_backbone.endswith("resnet18_v1c-b5776b93.pth")
    if path.name.startswith("pspnet_r18"):
        assert cfg.teacher is None and cfg.distill.losses == []
        return
    # Distillation: the released R101-D8 teacher; the first term is the recipe's CWD on the logits.
    assert cfg.teacher is not None and cfg.teacher.model == s.model.replace("r18", "r101")
    assert cfg.teacher.checkpoint.startswith("https://download.openmmlab.com/mmsegmentation/v0.5/")
    assert f"/{cfg.teacher.model}_512x1024_80k_cityscapes/" in cfg.teacher.checkpoint
    first = cfg.distill.losses[0]
    assert {k: getattr(first, k) for k in RECIPE_TERM} == RECIPE_TERM
    extra = cfg.distill.losses[1:]
    assert [e.name for e in extra] == (["cwd_feats"] if "feats" in path.name else [])


@pytest.mark.parametrize("name", ["pspnet_r18-d8", "deeplabv3_r18-d8", "pspnet_r101-d8", "deeplabv3_r101-d8"])
def test_the_models_own_auxiliary_weight_is_the_recipes(name: str) -> None:
    """``student.aux_weight: null`` keeps the model's own 0.4, so a config without the key is the recipe too."""
    model = build_segmentor(name, 19)
    assert model.decode_head.loss_weight == 1.0
    assert [h.loss_weight for h in model.aux_heads().values()] == [0.4]
