"""A FLOP counter for training steps: torch's ``FlopCounterMode`` with grouped convolutions' backward fixed.

torch 2.13's formula for ``aten.convolution_backward`` counts the weight gradient of a grouped
convolution as if it were dense (``groups`` times too many FLOPs): a depthwise 3x3 convolution over
C channels is counted C times over. MobileNetV2 is mostly depthwise convolutions, so its training
step was counted several times too high. :func:`flop_counter` keeps torch's formula for the input
gradient and divides the weight gradient by the groups. A multiply-add is 2 FLOPs, as in torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, get_shape

__all__ = ["conv_backward_flops", "flop_counter"]

aten = torch.ops.aten


def _swap01(shape: Any) -> list[int]:
    return [shape[1], shape[0], *shape[2:]]


def conv_backward_flops(grad_out_shape: Any, x_shape: Any, w_shape: Any, _bias: Any, _stride: Any, _padding: Any,
                        _dilation: Any, transposed: bool, _output_padding: Any, groups: int, output_mask: Any,
                        out_shape: Any, **kwargs: Any) -> int:
    """FLOPs of ``aten.convolution_backward``: input gradient as torch counts it, weight gradient / ``groups``."""
    flops = 0
    if output_mask[0]:  # grad_input: a transposed convolution of grad_out with the (grouped) weight
        flops += conv_flop_count(grad_out_shape, w_shape, get_shape(out_shape[0]), not transposed)
    if output_mask[1]:  # grad_weight: a convolution of the input with grad_out, one per group
        grad_w = get_shape(out_shape[1])
        if transposed:
            dense = conv_flop_count(_swap01(grad_out_shape), _swap01(x_shape), _swap01(grad_w), transposed=False)
        else:
            dense = conv_flop_count(_swap01(x_shape), _swap01(grad_out_shape), _swap01(grad_w), transposed=False)
        flops += dense // max(int(groups), 1)
    return flops


def flop_counter() -> FlopCounterMode:
    """A quiet ``FlopCounterMode`` that counts grouped convolutions' backward correctly."""
    return FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: conv_backward_flops})
