"""The frozen teacher and the distiller: truly frozen, only as much teacher as needed, losses that teach."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segdistill.config import DistillTerm
from segdistill.distill.distiller import DistillStudent, check_compatible, tap_channels
from segdistill.distill.teacher import FrozenTeacher, fold_batchnorm
from segdistill.errors import UserError
from segdistill.models import build_segmentor

LOGITS = DistillTerm("cwd_logits", "cwd", "decode_head.conv_seg", "decode_head.conv_seg", weight=5.0, tau=1.0)


def _trained_bn(model: nn.Module) -> nn.Module:
    # Non-trivial BN statistics and affine terms, so folding and eval mode have something to get wrong.
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_teacher_is_frozen_in_eval_mode_without_grad() -> None:
    model = _trained_bn(build_segmentor("pspnet_r18-d8-tiny", 5))
    teacher = FrozenTeacher(model, ["decode_head.conv_seg"])
    teacher.train()  # what a trainer calling .train() on everything would do
    assert all(not p.requires_grad for p in model.parameters())
    assert all(not m.training for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    a, b = teacher(x), teacher(x)
    assert a["decode_head.conv_seg"].grad_fn is None
    torch.testing.assert_close(a["decode_head.conv_seg"], b["decode_head.conv_seg"], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(a["decode_head.conv_seg"], model(x)["decode"])


def test_teacher_runs_only_what_its_taps_need() -> None:
    model = build_segmentor("pspnet_r18-d8-tiny", 5)
    calls = {"aux": 0, "decode": 0}
    model.auxiliary_head.register_forward_hook(lambda *_: calls.__setitem__("aux", calls["aux"] + 1))
    model.decode_head.register_forward_hook(lambda *_: calls.__setitem__("decode", calls["decode"] + 1))
    FrozenTeacher(model, ["decode_head.conv_seg"])(torch.randn(1, 3, 64, 64))
    assert calls == {"aux": 0, "decode": 1}
    out = FrozenTeacher(model, ["backbone.layer3"])(torch.randn(1, 3, 64, 64))
    assert calls == {"aux": 0, "decode": 1} and out["backbone.layer3"].shape[1] == 64
    FrozenTeacher(model, ["auxiliary_head.conv_seg"])(torch.randn(1, 3, 64, 64))
    assert calls["aux"] == 1


def test_reference_mode_keeps_dropout_on_and_bn_frozen() -> None:
    model = _trained_bn(build_segmentor("pspnet_r18-d8-tiny", 5))
    teacher = FrozenTeacher(model, ["decode_head.conv_seg"], mode="reference")
    teacher.train(False)
    assert model.decode_head.dropout.training
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    stats = model.decode_head.bottleneck.bn.running_mean.clone()
    x = torch.randn(2, 3, 64, 64)
    a, b = teacher(x)["decode_head.conv_seg"], teacher(x)["decode_head.conv_seg"]
    assert not torch.equal(a, b)  # the reference's noisy targets
    torch.testing.assert_close(model.decode_head.bottleneck.bn.running_mean, stats, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["pspnet_r18-d8-tiny", "deeplabv3_r18-d8"])
def test_batchnorm_folding_keeps_the_function(name: str) -> None:
    model = _trained_bn(build_segmentor(name, 5)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fold_batchnorm(model) == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        got = model(x)
    for k in want:  # an exact float32 rewrite: float32 bounds (measured <= 1.3e-6 of the output scale)
        assert (got[k] - want[k]).abs().max() <= 1e-5 * want[k].abs().max(), k


def test_fast_paths_match_the_float32_teacher() -> None:
    x = torch.randn(2, 3, 64, 96)
    net = _trained_bn(build_segmentor("pspnet_r18-d8-tiny", 5))
    plain = FrozenTeacher(copy.deepcopy(net), ["decode_head.conv_seg"])
    fast = FrozenTeacher(copy.deepcopy(net), ["decode_head.conv_seg"], channels_last=True, fold_bn=True)
    ref = plain(x)["decode_head.conv_seg"]
    # The bounds of tests/test_teacher_fastpath.py: float32 for the exact paths (measured 1.6e-6 of the
    # output scale), bf16's for bf16 (measured 1.1 %).
    assert (fast(x)["decode_head.conv_seg"] - ref).abs().max() <= 1e-5 * ref.abs().max()
    bf16 = FrozenTeacher(copy.deepcopy(net), ["decode_head.conv_seg"], bf16=True)
    out = bf16(x)["decode_head.conv_seg"]
    assert out.dtype == torch.float32  # targets always reach the loss in float32
    assert (out - ref).abs().max() <= 0.03 * ref.abs().max()


def test_fold_bn_refuses_a_tapped_batchnorm() -> None:
    with pytest.raises(UserError, match="fold_bn"):
        FrozenTeacher(build_segmentor("pspnet_r18-d8-tiny", 5), ["decode_head.bottleneck.bn"], fold_bn=True)


def test_unknown_tap_suggests_the_nearest_modules() -> None:
    with pytest.raises(UserError, match=r"no module named 'decode_head.conv_sg'.*decode_head.conv_seg"):
        FrozenTeacher(build_segmentor("pspnet_r18-d8-tiny", 5), ["decode_head.conv_sg"])


def test_checks_classes_and_channels_before_training() -> None:
    student, teacher = build_segmentor("pspnet_r18-d8-tiny", 5), build_segmentor("pspnet_r50-d8-tiny", 5)
    feat = DistillTerm("cwd_feat", "cwd", "decode_head.bottleneck", "decode_head.bottleneck", 1.0)
    channels = tap_channels(student, teacher, [LOGITS, feat])
    assert channels == {"cwd_logits": (5, 5), "cwd_feat": (32, 128)}
    with pytest.raises(UserError, match="set connector: convbn"):
        check_compatible(student, teacher, [feat], channels)
    with pytest.raises(UserError, match="teacher predicts 7 classes but the student 5"):
        check_compatible(student, build_segmentor("pspnet_r50-d8-tiny", 7), [LOGITS], channels)


def test_distill_student_returns_named_losses_and_trains_only_itself() -> None:
    torch.manual_seed(0)
    student, teacher_net = build_segmentor("pspnet_r18-d8-tiny", 5), build_segmentor("pspnet_r50-d8-tiny", 5)
    feat = DistillTerm("cwd_feat", "cwd", "decode_head.bottleneck", "decode_head.bottleneck", 1.0, 1.0, "convbn")
    terms = [LOGITS, feat]
    model = DistillStudent(student, terms, tap_channels(student, teacher_net, terms))
    teacher = FrozenTeacher(teacher_net, [t.teacher for t in terms])
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    losses = model(x, y, teacher(x))
    assert set(losses) == {"loss_decode", "loss_aux", "loss_cwd_logits", "loss_cwd_feat"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.connectors.parameters())
    assert all(p.grad is None for p in teacher_net.parameters())
    assert set(model.student_state_dict()) == set(student.state_dict())  # no connector keys


def test_cwd_teaches_a_tiny_student() -> None:
    """Only the CWD term, on a fixed batch: the student's logits move towards the teacher's."""
    torch.manual_seed(0)
    teacher = FrozenTeacher(_trained_bn(build_segmentor("pspnet_r18-d8-tiny", 5)), ["decode_head.conv_seg"])
    student = build_segmentor("pspnet_r18-d8-tiny", 5)
    student.set_loss_options(aux_weight=0.0)
    model = DistillStudent(student, [LOGITS])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(2, 3, 64, 64), torch.full((2, 64, 64), 255)  # all ignored: CE contributes nothing
    targets = teacher(x)
    history = []
    for _ in range(30):
        losses = model(x, y, targets)
        history.append(losses["loss_cwd_logits"].item())
        opt.zero_grad()
        losses["loss_cwd_logits"].backward()
        opt.step()
    assert history[-1] < 0.5 * history[0], history
