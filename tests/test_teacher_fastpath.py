"""The frozen teacher's fast paths on real CamVid frames, with a trained network (tests/assets).

The asset is PSPNet-R18-D8-tiny trained on CamVid train for 600 iterations
(`segdistill train configs/camvid/pspnet_r18-d8_baseline.yaml student.model=pspnet_r18-d8-tiny
train.iters=600`), stored in float16. A trained network matters here: random weights give
near-uniform logits whose argmax any rounding flips.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from segdistill.data import CamVidDataset, build_eval_pipeline
from segdistill.distill import ChannelWiseDivergence, FrozenTeacher
from segdistill.models import build_segmentor, load_checkpoint

ASSET = Path(__file__).resolve().parent / "assets" / "camvid_pspnet_r18-d8-tiny.pth"
TAP = "decode_head.conv_seg"


@pytest.fixture(scope="module")
def frames(camvid_root: Path) -> torch.Tensor:
    val = CamVidDataset(camvid_root, "val")
    pipeline = build_eval_pipeline((240, 180))
    return torch.stack([pipeline(*val.load(i), np.random.default_rng(0))[0] for i in range(0, len(val), 5)])


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    model = build_segmentor("pspnet_r18-d8-tiny", 11)
    load_checkpoint(model, ASSET)
    return model.eval()


def _agreement_and_cwd(trained: torch.nn.Module, frames: torch.Tensor, **switches: bool) -> tuple[float, float]:
    plain = FrozenTeacher(copy.deepcopy(trained), [TAP])(frames)[TAP]
    fast = FrozenTeacher(copy.deepcopy(trained), [TAP], **switches)(frames)[TAP]
    torch.manual_seed(0)
    with torch.no_grad():
        student = build_segmentor("pspnet_r18-d8-tiny", 11).eval()(frames)["decode"]
    cwd = ChannelWiseDivergence(tau=1.0, loss_weight=5.0)
    ref, got = float(cwd(student, plain)), float(cwd(student, fast))
    agreement = float((plain.argmax(1) == fast.argmax(1)).float().mean())
    return agreement, abs(got - ref) / ref


@pytest.mark.parametrize("switches", [
    {"channels_last": True},
    {"fold_bn": True},
    {"bf16": True},
    {"channels_last": True, "fold_bn": True, "bf16": True},
], ids=lambda s: "+".join(s))
def test_fast_teacher_agrees_with_the_float32_teacher(trained: torch.nn.Module, frames: torch.Tensor,
                                                      switches: dict[str, bool]) -> None:
    agreement, cwd_rel = _agreement_and_cwd(trained, frames, **switches)
    assert agreement >= 0.995, f"argmax agreement {agreement:.4f}"
    assert cwd_rel <= 0.01, f"CWD loss differs by {cwd_rel:.2%}"


@pytest.mark.slow
def test_compiled_teacher_agrees_with_the_float32_teacher(trained: torch.nn.Module, frames: torch.Tensor) -> None:
    agreement, cwd_rel = _agreement_and_cwd(trained, frames[:4], channels_last=True, fold_bn=True, compile=True)
    assert agreement >= 0.995 and cwd_rel <= 0.01
