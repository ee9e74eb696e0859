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


#: Exact float32 paths (channels_last, fold_bn, torch.compile) only reorder float32 arithmetic: judged
#: by float32 bounds. bf16 rounds every op to 8 mantissa bits (eps 2^-8 = 0.4 %): judged by bf16 bounds.
#: The same numbers are in docs/performance.md and docs/losses.md.
BOUNDS = {
    # max |logit difference| / max |logit|, argmax agreement, relative difference of the CWD loss
    "float32": {"logits": 1e-5, "agreement": 0.9999, "cwd": 1e-5},
    "bf16": {"logits": 0.03, "agreement": 0.995, "cwd": 0.005},
}


def _compare(trained: torch.nn.Module, frames: torch.Tensor, **switches: bool) -> dict[str, float]:
    plain = FrozenTeacher(copy.deepcopy(trained), [TAP])(frames)[TAP]
    fast = FrozenTeacher(copy.deepcopy(trained), [TAP], **switches)(frames)[TAP]
    assert fast.dtype == torch.float32  # the targets always reach the loss in float32
    torch.manual_seed(0)
    with torch.no_grad():
        student = build_segmentor("pspnet_r18-d8-tiny", 11).eval()(frames)["decode"]
    cwd = ChannelWiseDivergence(tau=1.0, loss_weight=5.0)
    ref, got = float(cwd(student, plain)), float(cwd(student, fast))
    return {"logits": float((fast - plain).abs().max() / plain.abs().max()),
            "agreement": float((plain.argmax(1) == fast.argmax(1)).float().mean()),
            "cwd": abs(got - ref) / ref}


def _check(measured: dict[str, float], kind: str) -> None:
    bound = BOUNDS[kind]
    assert measured["logits"] <= bound["logits"], f"max logit difference {measured['logits']:.2e} of the scale"
    assert measured["agreement"] >= bound["agreement"], f"argmax agreement {measured['agreement']:.5f}"
    assert measured["cwd"] <= bound["cwd"], f"CWD loss differs by {measured['cwd']:.2e}"


@pytest.mark.parametrize("switches, kind", [
    ({"channels_last": True}, "float32"),
    ({"fold_bn": True}, "float32"),
    ({"channels_last": True, "fold_bn": True}, "float32"),
    ({"bf16": True}, "bf16"),
    ({"channels_last": True, "fold_bn": True, "bf16": True}, "bf16"),
], ids=lambda s: "+".join(s) if isinstance(s, dict) else s)
def test_fast_teacher_agrees_with_the_float32_teacher(trained: torch.nn.Module, frames: torch.Tensor,
                                                      switches: dict[str, bool], kind: str) -> None:
    _check(_compare(trained, frames, **switches), kind)


@pytest.mark.slow
def test_compiled_teacher_agrees_with_the_float32_teacher(trained: torch.nn.Module, frames: torch.Tensor) -> None:
    _check(_compare(trained, frames[:4], channels_last=True, fold_bn=True, compile=True), "float32")
