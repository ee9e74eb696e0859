"""The training benchmark's FLOP counter: grouped convolutions' backward is counted per group."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segdistill.bench.flops import flop_counter


def _forward_backward_flops(conv: nn.Module, x: torch.Tensor, counter: FlopCounterMode) -> int:
    with counter:
        conv(x).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_grouped_conv_backward_is_twice_the_forward(groups: int) -> None:
    # A k x k convolution with g groups: forward 2 N Ho Wo Cout (Cin/g) k^2 FLOPs; its input gradient and its
    # weight gradient cost the same again each, so forward + backward is 3x the forward.
    n, c_in, c_out, k, h, w = 2, 16, 32, 3, 12, 10
    conv = nn.Conv2d(c_in, c_out, k, padding=1, groups=groups, bias=False)
    x = torch.randn(n, c_in, h, w, requires_grad=True)
    forward = 2 * n * h * w * c_out * (c_in // groups) * k * k
    assert _forward_backward_flops(conv, x, flop_counter()) == 3 * forward
    if groups == 1:  # dense: the same as torch's own counter
        assert _forward_backward_flops(conv, x, FlopCounterMode(display=False)) == 3 * forward


def test_weight_gradient_alone_and_transposed_convolution() -> None:
    n, c, k, h, w = 2, 8, 3, 9, 7
    x = torch.randn(n, c, h, w)  # no input gradient: only the weight gradient is counted
    depthwise = nn.Conv2d(c, c, k, padding=1, groups=c, bias=False)
    forward = 2 * n * h * w * c * 1 * k * k
    assert _forward_backward_flops(depthwise, x, flop_counter()) == 2 * forward
    up = nn.ConvTranspose2d(c, c, 2, stride=2, groups=c, bias=False)
    dense_up = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
    xg = torch.randn(n, c, h, w, requires_grad=True)
    # The grouped transposed convolution costs 1/c of the dense one, forward and backward alike.
    assert _forward_backward_flops(up, xg, flop_counter()) * c == _forward_backward_flops(dense_up, xg, flop_counter())
