"""The frozen teacher's fast paths (BatchNorm folding, channels_last, bfloat16) on every zoo family used as a
teacher, with non-trivial BatchNorm statistics.

``FrozenTeacher(model, ["decode_head.conv_seg"], fold_bn=True, channels_last=True)`` must give the float32
eval model's logits up to float32 rounding, and with ``bf16=True`` up to bfloat16 rounding. Folding is
checked for coverage too: a forward trace finds, independently of :func:`fold_batchnorm`, which BatchNorm
layers read a convolution's output directly (the foldable ones), and every one of them must be gone after
folding. PSPNet-R18-D8 stands in for R101 (same ResNetV1c-D8 blocks, fewer of them).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segdistill.distill import FrozenTeacher
from segdistill.models import build_segmentor

TAP = "decode_head.conv_seg"
FAMILIES = ["pspnet_r18-d8", "deeplabv3plus_r18-d8", "deeplabv3plus_m-v2-d8-tiny", "segformer_mit-b0-tiny",
            "bisenetv2", "stdc1"]
#: BatchNorm layers that no convolution feeds, so there is nothing to fold them into (name -> why).
NOT_FOLDABLE = {
    "bisenetv2": {"backbone.semantic.stage4_CEBlock.gap.1": "AdaptiveAvgPool2d"},  # BN of the pooled context
}
#: Float32: the folded conv computes the same sums in another rounding order (measured 4e-7 to 1.7e-6).
F32_BOUND = 1e-5
#: bfloat16 keeps 8 significant bits (relative rounding 2^-9 per value) through every layer (measured 6e-3 to
#: 1.6e-2, the most for SegFormer-B0-tiny).
BF16_BOUND = 0.05


def _with_random_statistics(name: str, seed: int = 0) -> nn.Module:
    """The model in eval mode with random BN running statistics and affine parameters (mmseg's init leaves
    mean 0, var 1, weight 1, bias 0, and zeroes some weights, which would hide a wrong fold)."""
    torch.manual_seed(seed)
    model = build_segmentor(name, 5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


def _foldable(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """Every BatchNorm's producer, by a traced forward: BN name -> type of the module whose output it reads
    (``"Conv2d"`` means foldable), found by tensor identity, not by the module layout fold_batchnorm reads."""
    produced_by: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # keep every traced tensor alive, so no id is reused during the trace
    producer: dict[str, str] = {}
    handles = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue

        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                producer[name] = produced_by.get(id(inputs[0]), "a functional op")
            if isinstance(output, torch.Tensor):
                keep.append(output)
                produced_by[id(output)] = type(mod).__name__

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return producer


@pytest.mark.parametrize("name", FAMILIES)
def test_every_foldable_batchnorm_is_folded(name: str) -> None:
    model = _with_random_statistics(name)
    producers = _foldable(model, torch.randn(2, 3, 64, 64))
    bns = {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert set(producers) == bns, "every BatchNorm runs in the traced forward"
    not_foldable = {n: p for n, p in producers.items() if p != "Conv2d"}
    assert not_foldable == NOT_FOLDABLE.get(name, {})
    teacher = FrozenTeacher(model, [TAP], fold_bn=True)
    left = {n for n, m in teacher.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert left == set(not_foldable), f"{len(bns) - len(left)} of {len(bns)} folded; left: {sorted(left)}"


@pytest.mark.parametrize("name", FAMILIES)
def test_fast_paths_agree_with_the_float32_eval_model(name: str) -> None:
    model = _with_random_statistics(name)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x, with_aux=False)["decode"]  # the eval model's own logits, float32
    scale = want.abs().max()
    plain = FrozenTeacher(copy.deepcopy(model), [TAP])(x)[TAP]
    torch.testing.assert_close(plain, want, rtol=0, atol=0)  # the tap is the decode head's output
    fast = FrozenTeacher(copy.deepcopy(model), [TAP], fold_bn=True, channels_last=True)(x)[TAP]
    err = float((fast - want).abs().max() / scale)
    assert err <= F32_BOUND, f"fold_bn + channels_last: max error {err:.2e} of the output scale"
    bf16 = FrozenTeacher(copy.deepcopy(model), [TAP], fold_bn=True, channels_last=True, bf16=True)(x)[TAP]
    err16 = float((bf16 - want).abs().max() / scale)
    assert bf16.dtype == torch.float32 and err16 <= BF16_BOUND, f"+ bf16: max error {err16:.2e} of the output scale"
