"""Distilling between networks whose maps differ in size or channels (``DistillTerm.align`` and connectors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segdistill.config import DistillTerm
from segdistill.distill.distiller import DistillStudent, align_maps, check_compatible, tap_channels
from segdistill.distill.losses import ChannelWiseDivergence
from segdistill.distill.teacher import FrozenTeacher
from segdistill.errors import UserError
from segdistill.models import build_segmentor


def _up(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)


def test_align_student_resizes_the_teacher_and_teacher_resizes_the_student() -> None:
    s, t = torch.randn(2, 5, 16, 24), torch.randn(2, 5, 8, 12)
    a, b = align_maps(s, t, "student")
    assert a is s and torch.equal(b, _up(t, (16, 24)))
    a, b = align_maps(s, t, "teacher")
    assert b is t and torch.equal(a, _up(s, (8, 12)))
    a, b = align_maps(s, t, "none")
    assert a is s and b is t
    same = torch.randn(2, 5, 8, 12)
    assert align_maps(same, t, "teacher")[0] is same  # equal sizes: untouched


def _pair(terms: list[DistillTerm]) -> tuple[DistillStudent, FrozenTeacher]:
    torch.manual_seed(0)
    teacher_net = build_segmentor("pspnet_r50-d8-tiny", 4)  # stride-8 logits
    student = build_segmentor("deeplabv3plus_m-v2-d8-tiny", 4)  # stride-4 logits, another backbone
    channels = tap_channels(student, teacher_net, terms)
    check_compatible(student, teacher_net, terms, channels)
    teacher = FrozenTeacher(teacher_net, [t.teacher for t in terms])
    return DistillStudent(student, terms, channels).eval(), teacher


@pytest.mark.parametrize("align", ["student", "teacher"])
def test_cwd_between_a_stride4_student_and_a_stride8_teacher(align: str) -> None:
    term = DistillTerm("cwd_logits", "cwd", "decode_head.conv_seg", "decode_head.conv_seg", weight=5.0, tau=1.0,
                       align=align)
    model, teacher = _pair([term])
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    targets = teacher(x)
    seen: dict[str, torch.Tensor] = {}
    model.student.decode_head.conv_seg.register_forward_hook(lambda _m, _i, out: seen.__setitem__("s", out))
    losses = model(x, y, targets)
    s, t = seen["s"], targets["decode_head.conv_seg"]
    assert s.shape[2:] == (16, 16) and t.shape[2:] == (8, 8)
    want = ChannelWiseDivergence(tau=1.0, loss_weight=5.0)(s, _up(t, (16, 16))) if align == "student" else \
        ChannelWiseDivergence(tau=1.0, loss_weight=5.0)(_up(s, (8, 8)), t)
    torch.testing.assert_close(losses["loss_cwd_logits"], want)


def test_without_align_different_sizes_are_a_one_line_error_naming_the_option() -> None:
    term = DistillTerm("cwd_logits", "cwd", "decode_head.conv_seg", "decode_head.conv_seg")
    model, teacher = _pair([term])
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    with pytest.raises(UserError, match="align: student") as err:
        model(x, y, teacher(x))
    assert "\n" not in str(err.value)


def test_a_feature_term_across_channels_and_strides() -> None:
    """MobileNetV2's stride-8 stage 3 (24 channels in the tiny model) against ResNet-50's stride-4 stage 1
    (64): the connector maps the channels, ``align`` the size."""
    term = DistillTerm("cwd_feat", "cwd", "backbone.layer3", "backbone.layer1", weight=1.0, tau=4.0,
                       connector="convbn", align="teacher")
    model, teacher = _pair([term])
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    targets = teacher(x)
    seen: dict[str, torch.Tensor] = {}
    model.student.backbone.layer3.register_forward_hook(lambda _m, _i, out: seen.__setitem__("s", out))
    losses = model(x, y, targets)
    t = targets["backbone.layer1"]
    s = model.connectors["cwd_feat"](seen["s"])
    assert s.shape[1] == t.shape[1] and s.shape[2:] != t.shape[2:]
    want = ChannelWiseDivergence(tau=4.0, loss_weight=1.0)(_up(s, t.shape[2:]), t)
    torch.testing.assert_close(losses["loss_cwd_feat"], want)
    losses["loss_cwd_feat"].backward()
    assert model.connectors["cwd_feat"].conv.weight.grad is not None
    # An unknown tap keeps its nearest-name error.
    bad = DistillTerm("x", "cwd", "backbone.layer33", "backbone.layer1", connector="convbn")
    with pytest.raises(UserError, match="nearest: backbone.layer3"):
        _pair([bad])
