"""Test-time inference by value: flip TTA, sliding windows and multi-scale against what they must equal.

Flip TTA is checked with a network that is mirror-equivariant by construction (every conv kernel
symmetric left-right): for it, ``f(x.flip) == f(x).flip`` for any input, so correct flip TTA equals
the plain prediction exactly, while a TTA that forgets to flip the flipped view's scores back does not
(on a mirror-symmetric *input* both would agree, so the input here is random). Equivariance also needs
every stride-2 layer to sample mirror-symmetric positions: widths of 8k + 1 pixels do (three stride-2
layers: 65 -> 33 -> 17 -> 9), even widths do not.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segdistill.models import build_segmentor
from segdistill.models.ops import resize
from segdistill.models.segmentor import EncoderDecoder


def _model(symmetric: bool) -> EncoderDecoder:
    torch.manual_seed(0)
    model = build_segmentor("pspnet_r18-d8-tiny", 5).eval()
    with torch.no_grad():
        if symmetric:
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
        model.decode_head.conv_seg.weight.mul_(50)  # sharp logits, so the views' softmaxes differ visibly
    return model


@torch.no_grad()
def test_flip_tta_of_a_mirror_equivariant_model_equals_plain_inference() -> None:
    model = _model(symmetric=True)
    x = torch.randn(1, 3, 40, 65)
    plain = model.inference(x)
    # The premise: this network is mirror-equivariant on this input size.
    torch.testing.assert_close(model.inference(x.flip(-1)).flip(-1), plain, rtol=0, atol=1e-4)
    tta = model.inference(x, flip=True)
    torch.testing.assert_close(tta, plain.softmax(1), rtol=0, atol=1e-5)


@torch.no_grad()
def test_flip_tta_of_an_asymmetric_model_differs_from_plain_inference() -> None:
    model = _model(symmetric=False)
    x = torch.randn(1, 3, 40, 65)
    plain = model.inference(x).softmax(1)
    mirrored = model.inference(x.flip(-1)).flip(-1).softmax(1)
    tta = model.inference(x, flip=True)
    assert float((tta - plain).abs().max()) > 0.05  # the flipped view really counts
    # ... and it is the mean of the two views, each in the image's own orientation.
    torch.testing.assert_close(tta, (plain + mirrored) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("window", [(40, 65), (48, 80), (64, 128)], ids=["equal", "larger", "much larger"])
@torch.no_grad()
def test_slide_with_a_window_covering_the_image_equals_whole(window: tuple[int, int]) -> None:
    model = _model(symmetric=False)
    x = torch.randn(2, 3, 40, 65)
    whole = model.inference(x)
    torch.testing.assert_close(model.inference(x, mode="slide", crop_size=window, stride=(16, 16)), whole,
                               rtol=0, atol=0)
    # Not vacuous: windows smaller than the image do change the scores (less context per window).
    small = model.inference(x, mode="slide", crop_size=(32, 32), stride=(16, 16))
    assert float((small - whole).abs().max()) > 1e-3


@torch.no_grad()
def test_multiscale_at_scale_one_only_equals_whole() -> None:
    model = _model(symmetric=False)
    x = torch.randn(1, 3, 40, 64)
    whole = model.inference(x)
    torch.testing.assert_close(model.inference(x, scales=[1.0]), whole, rtol=0, atol=0)  # logits, no TTA
    # Two views (still both at scale 1.0) average probabilities: the softmax of the whole.
    torch.testing.assert_close(model.inference(x, scales=[1.0, 1.0]), whole.softmax(1), rtol=0, atol=1e-6)


@torch.no_grad()
def test_multiscale_averages_the_probabilities_of_each_scale_at_out_size() -> None:
    model = _model(symmetric=False)
    x = torch.randn(1, 3, 40, 64)
    out = (80, 128)
    views = []
    for scale, size in ((0.5, (20, 32)), (1.5, (60, 96))):
        single = model.inference(x, scales=[scale], out_size=out)  # one view: logits at out_size
        torch.testing.assert_close(single, model.inference(resize(x, size), out_size=out), rtol=0, atol=1e-5)
        views.append(single.softmax(1))
    assert float((views[0] - views[1]).abs().max()) > 0.05  # the scales really differ
    torch.testing.assert_close(model.inference(x, scales=[0.5, 1.5], out_size=out), (views[0] + views[1]) / 2,
                               rtol=0, atol=1e-6)
