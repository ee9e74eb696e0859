"""Distillation losses: mmrazor parity for CWD, numerical robustness, hand-computed baselines, errors."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segdistill.distill.losses import (
    LOSSES,
    AttentionTransfer,
    ChannelWiseDivergence,
    FeatureMSE,
    LossInputError,
    PairwiseAffinity,
    PixelWiseKD,
    build_loss,
)
from segdistill.errors import UserError

# --------------------------------------------------------------------------------------------
# independent references (explicit loops / float64), never the code under test


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _np_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(softmax(p_logits) || softmax(q_logits)) with explicit loops, 0 log 0 = 0."""
    p, q = _np_softmax(p_logits), _np_softmax(q_logits)
    total = 0.0
    for pi, qi in zip(p, q, strict=False):
        if pi > 0:
            total += pi * (math.log(pi) - math.log(qi))
    return total


def _np_cwd(s: np.ndarray, t: np.ndarray, tau: float, w: float) -> float:
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(c):
            total += _np_kl(t[i, j].ravel() / tau, s[i, j].ravel() / tau)
    return w * tau**2 * total / (n * c)


def _cwd64(s: torch.Tensor, t: torch.Tensor, tau: float, w: float) -> torch.Tensor:
    """CWD in float64 from log-softmax with xlogy semantics: the reference for large logits."""
    n, c = s.shape[:2]
    ls = torch.log_softmax(s.double().flatten(2) / tau, dim=2)
    lt = torch.log_softmax(t.double().flatten(2) / tau, dim=2)
    pt = lt.exp()
    terms = torch.where(pt > 0, pt * (lt - ls), torch.zeros_like(pt))
    return w * tau**2 * terms.sum() / (n * c)


@pytest.fixture(scope="module")
def cwd_cases(reference_dir: Path) -> list[dict[str, Any]]:
    data = torch.load(reference_dir / "mmrazor" / "cwd_loss_cases.pt", weights_only=False)
    assert len(data["cases"]) >= 10
    return data["cases"]


def _loss_and_grad(case: dict[str, Any], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    s = case["preds_S"].to(dtype).clone().requires_grad_(True)
    t = case["preds_T"].to(dtype)
    loss = ChannelWiseDivergence(tau=case["tau"], loss_weight=case["loss_weight"])(s, t)
    loss.backward()
    assert s.grad is not None
    return loss.detach(), s.grad


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# --------------------------------------------------------------------------------------------
# CWD: parity with mmrazor


def test_cwd_matches_mmrazor_float32(cwd_cases: list[dict[str, Any]]) -> None:
    for case in cwd_cases:
        name = case["name"]
        loss, grad = _loss_and_grad(case, torch.float32)
        assert loss.dtype == torch.float32 and loss.dim() == 0
        ref32, ref64 = float(case["loss"]), float(case["loss_fp64"])
        g32, g64 = case["grad_preds_S"].double(), case["grad_preds_S_fp64"].double()
        grad = grad.double()
        if name.startswith("identical"):
            # KL of a distribution with itself: exactly 0, and the gradient softmax(S) - softmax(T)
            # is exactly 0 here; mmrazor's float32 gradient is rounding noise far below its scale.
            assert loss.item() == 0.0 and ref32 == 0.0 and ref64 == 0.0
            assert torch.count_nonzero(grad) == 0
            grad_scale = case["loss_weight"] * case["tau"] / (grad.shape[0] * grad.shape[1])
            assert g32.abs().max() < 1e-6 * grad_scale and g64.abs().max() < 1e-12 * grad_scale
            continue
        assert _rel(loss.item(), ref32) <= 1e-5, name
        assert _rel(loss.item(), ref64) <= 1e-5, name
        for ref in (g32, g64):
            peak = float(ref.abs().max())
            assert float((grad - ref).abs().max()) <= 1e-5 * peak, name
            torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6 * peak, msg=name)


def test_cwd_matches_mmrazor_float64(cwd_cases: list[dict[str, Any]]) -> None:
    # Fed float64 copies, the loss computes in float64 and must agree with mmrazor's float64 run
    # to float64 rounding: the same function, not just a close one.
    for case in cwd_cases:
        loss, grad = _loss_and_grad(case, torch.float64)
        ref, gref = float(case["loss_fp64"]), case["grad_preds_S_fp64"].double()
        assert loss.dtype == torch.float64
        if case["name"].startswith("identical"):
            # mmrazor's float64 gradient here is rounding noise (~1e-17); ours is exactly 0.
            assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0
            continue
        assert _rel(loss.item(), ref) <= 1e-12, case["name"]
        assert float((grad - gref).abs().max()) <= 1e-12 * float(gref.abs().max()), case["name"]


# --------------------------------------------------------------------------------------------
# CWD: formula, robustness, precision


def test_cwd_hand_computed() -> None:
    s = np.array([[[[0.0, 1.0, 2.0]], [[1.0, -1.0, 0.5]]], [[[3.0, 0.0, 0.0]], [[-2.0, 2.0, 1.0]]]])
    t = np.array([[[[2.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]], [[[1.0, 1.0, 4.0]], [[0.5, -0.5, 2.5]]]])
    loss = ChannelWiseDivergence(tau=2.0, loss_weight=3.0)(torch.tensor(s, dtype=torch.float32),
                                                           torch.tensor(t, dtype=torch.float32))
    expected = _np_cwd(s, t, tau=2.0, w=3.0)
    assert expected > 0.1
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("magnitude", "tau"), [(100.0, 1.0), (1e3, 1.0), (1e4, 1.0), (400.0, 4.0), (1e4, 4.0)])
def test_cwd_large_logits_match_float64(magnitude: float, tau: float) -> None:
    g = torch.Generator().manual_seed(int(magnitude) + int(tau))
    s = ((torch.rand(2, 19, 16, 24, generator=g) * 2 - 1) * magnitude).requires_grad_(True)
    t = (torch.rand(2, 19, 16, 24, generator=g) * 2 - 1) * magnitude
    # The case must really stress float32: a softmax-then-log formulation hits log(0) here.
    assert bool((torch.softmax(t.flatten(2) / tau, dim=2) == 0).any())
    loss = ChannelWiseDivergence(tau=tau, loss_weight=5.0)(s, t)
    loss.backward()
    s64 = s.detach().double().requires_grad_(True)
    ref = _cwd64(s64, t, tau, 5.0)
    ref.backward()
    assert s.grad is not None and s64.grad is not None
    assert torch.isfinite(loss) and bool(torch.isfinite(s.grad).all())
    assert _rel(float(loss.detach()), float(ref.detach())) <= 1e-5
    peak = float(s64.grad.abs().max())
    assert float((s.grad.double() - s64.grad).abs().max()) <= 1e-5 * peak


def test_cwd_zero_teacher_probability_contributes_zero() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 4, 5, 6, generator=g, requires_grad=True)
    t = torch.randn(2, 4, 5, 6, generator=g)
    t[0, 1, :2] = -math.inf  # a masked-out teacher region: probability exactly 0
    t[1, 3, 4, 5] = -math.inf
    loss = ChannelWiseDivergence(tau=2.0)(s, t)
    loss.backward()
    assert s.grad is not None
    assert torch.isfinite(loss) and bool(torch.isfinite(s.grad).all())
    expected = _np_cwd(s.detach().double().numpy(), t.double().numpy(), tau=2.0, w=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Where the teacher has no mass the gradient is the student's own probability (pushed down).
    p_s = torch.softmax(s.detach().flatten(2) / 2.0, dim=2).view_as(s)
    scale = 2.0 / (2 * 4)
    torch.testing.assert_close(s.grad[0, 1, :2], scale * p_s[0, 1, :2], rtol=1e-5, atol=1e-9)


def test_cwd_masked_in_both_maps_and_nan_propagation() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(1, 3, 4, 4, generator=g)
    t = torch.randn(1, 3, 4, 4, generator=g)
    s[0, 0, 0] = -math.inf  # the same region masked out in student and teacher: no contribution
    t[0, 0, 0] = -math.inf
    s.requires_grad_(True)
    loss = ChannelWiseDivergence()(s, t)
    loss.backward()
    expected = _np_cwd(s.detach().double().numpy(), t.double().numpy(), tau=1.0, w=1.0)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(expected, rel=1e-5)
    assert s.grad is not None and bool(torch.isfinite(s.grad).all())
    # a NaN logit is a real error upstream: it must show in the loss, not be hidden
    t_nan = torch.randn(1, 3, 4, 4, generator=g)
    t_nan[0, 1, 2, 2] = math.nan
    assert math.isnan(ChannelWiseDivergence()(torch.randn(1, 3, 4, 4), t_nan).item())
    s_nan = torch.randn(1, 3, 4, 4, generator=g)
    s_nan[0, 2, 0, 1] = math.nan
    assert math.isnan(ChannelWiseDivergence()(s_nan, torch.randn(1, 3, 4, 4)).item())


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_cwd_low_precision_inputs_computed_in_float32(low: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    s_low = (torch.randn(2, 19, 8, 16, generator=g) * 30).to(low).requires_grad_(True)
    t_low = (torch.randn(2, 19, 8, 16, generator=g) * 30).to(low)
    loss_fn = ChannelWiseDivergence(tau=4.0, loss_weight=3.0)
    with torch.autocast("cpu", dtype=low):
        loss = loss_fn(s_low, t_low)
    loss.backward()
    s32 = s_low.detach().float().requires_grad_(True)
    ref = loss_fn(s32, t_low.float())
    ref.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == ref.item()  # same float32 values in, same float32 computation
    assert s_low.grad is not None and s32.grad is not None
    assert s_low.grad.dtype == low
    torch.testing.assert_close(s_low.grad, s32.grad.to(low), rtol=0, atol=0)


def test_cwd_under_autocast_trains_a_conv() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 8, 12)
    t = torch.randn(2, 5, 8, 12) * 10
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = conv(x)
        assert s.dtype == torch.bfloat16
        loss = ChannelWiseDivergence(tau=1.0)(s, t)
    loss.backward()
    assert conv.weight.grad is not None
    assert bool(torch.isfinite(conv.weight.grad).all()) and float(conv.weight.grad.abs().sum()) > 0
    ref = _cwd64(s.detach(), t, 1.0, 1.0)
    assert _rel(float(loss.detach()), float(ref)) <= 1e-5


def test_cwd_teacher_gradient_and_gradcheck() -> None:
    g = torch.Generator().manual_seed(7)
    s = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loss_fn = ChannelWiseDivergence(tau=2.0, loss_weight=3.0)
    assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, b), (s, t))
    # and against autograd through the explicit float64 formula, for the teacher side too
    loss_fn(s, t).backward()
    s2 = s.detach().clone().requires_grad_(True)
    t2 = t.detach().clone().requires_grad_(True)
    _cwd64(s2, t2, 2.0, 3.0).backward()
    assert s.grad is not None and t.grad is not None and s2.grad is not None and t2.grad is not None
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(t.grad, t2.grad, rtol=1e-12, atol=1e-14)


def test_cwd_backward_scales_with_upstream_gradient_and_retains_graph() -> None:
    g = torch.Generator().manual_seed(9)
    s = torch.randn(1, 3, 4, 4, generator=g, requires_grad=True)
    t = torch.randn(1, 3, 4, 4, generator=g)
    loss = ChannelWiseDivergence(tau=1.0)(s, t)
    loss.backward(retain_graph=True)
    assert s.grad is not None
    first = s.grad.clone()
    s.grad = None
    (loss * 2.5).backward()  # the saved gradient must not have been modified by the first pass
    torch.testing.assert_close(s.grad, 2.5 * first)


def test_cwd_saves_one_map_for_backward() -> None:
    s = torch.randn(2, 19, 16, 32, requires_grad=True)
    t = torch.randn(2, 19, 16, 32)
    saved: list[torch.Tensor] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = ChannelWiseDivergence(tau=4.0)(s, t)
    big = [x for x in saved if x.numel() == s.numel()]
    assert len(big) == 1 and big[0].dtype == torch.float32
    loss.backward()
    with torch.no_grad():  # nothing is saved (nor precomputed) when no gradient is wanted
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            ChannelWiseDivergence(tau=4.0)(s, t)
        assert saved == []


def test_cwd_non_contiguous_inputs() -> None:
    g = torch.Generator().manual_seed(11)
    s = torch.randn(2, 5, 6, 7, generator=g)
    t = torch.randn(2, 5, 6, 7, generator=g)
    s_cl = s.to(memory_format=torch.channels_last).requires_grad_(True)
    s_c = s.clone().requires_grad_(True)
    loss_fn = ChannelWiseDivergence(tau=2.0)
    a, b = loss_fn(s_cl, t.to(memory_format=torch.channels_last)), loss_fn(s_c, t)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(s_cl.grad, s_c.grad)


# --------------------------------------------------------------------------------------------
# CWD: shapes (the spatial alignment of a term lives in the distiller: tests/test_align.py)


def test_cwd_spatial_mismatch_is_a_one_line_user_error() -> None:
    with pytest.raises(UserError) as err:
        ChannelWiseDivergence()(torch.randn(2, 19, 32, 64), torch.randn(2, 19, 64, 128))
    msg = str(err.value)
    assert "(2, 19, 32, 64)" in msg and "(2, 19, 64, 128)" in msg and "align: student" in msg and "\n" not in msg
    assert isinstance(err.value, ValueError) and isinstance(err.value, LossInputError)


def test_cwd_channel_mismatch_suggests_a_connector() -> None:
    with pytest.raises(UserError, match=r"connector.*build_connector\('convbn', 128, 512\)"):
        ChannelWiseDivergence()(torch.randn(1, 128, 8, 8), torch.randn(1, 512, 8, 8))


@pytest.mark.parametrize(("s_shape", "t_shape", "what"), [
    ((19, 8, 8), (19, 8, 8), "(N, C, H, W)"),
    ((2, 19, 8, 8), (3, 19, 8, 8), "batch"),
    ((0, 19, 8, 8), (0, 19, 8, 8), "empty"),
])
def test_cwd_bad_shapes(s_shape: tuple[int, ...], t_shape: tuple[int, ...], what: str) -> None:
    with pytest.raises(UserError, match=re.escape(what)):
        ChannelWiseDivergence()(torch.randn(*s_shape), torch.randn(*t_shape))


def test_cwd_bad_hyperparameters() -> None:
    with pytest.raises(UserError, match="tau must be > 0"):
        ChannelWiseDivergence(tau=0.0)
    with pytest.raises(UserError, match="loss_weight must be a finite number"):
        ChannelWiseDivergence(loss_weight=float("nan"))


# --------------------------------------------------------------------------------------------
# comparison losses, each against explicit loops


def test_pixelwise_kd_hand_computed() -> None:
    g = np.random.default_rng(0)
    s = g.normal(size=(2, 3, 2, 3)) * 3
    t = g.normal(size=(2, 3, 2, 3)) * 3
    tau, w = 2.0, 3.0
    total = 0.0
    for n in range(2):
        for h in range(2):
            for x in range(3):
                total += _np_kl(t[n, :, h, x] / tau, s[n, :, h, x] / tau)
    expected = w * tau**2 * total / (2 * 2 * 3)
    s_t = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    loss = PixelWiseKD(tau=tau, loss_weight=w)(s_t, torch.tensor(t, dtype=torch.float32))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # d/dS = w * tau / (N*H*W) * (softmax_C(S/tau) - softmax_C(T/tau))
    p_s = torch.softmax(torch.tensor(s) / tau, dim=1)
    p_t = torch.softmax(torch.tensor(t) / tau, dim=1)
    torch.testing.assert_close(s_t.grad.double(), w * tau / 12 * (p_s - p_t), rtol=1e-5, atol=1e-7)


def test_pixelwise_kd_identical_is_zero_and_shape_checked() -> None:
    x = torch.randn(2, 19, 4, 4) * 50
    assert float(PixelWiseKD(tau=4.0)(x, x)) == 0.0
    with pytest.raises(UserError, match="channels"):
        PixelWiseKD()(torch.randn(1, 19, 4, 4), torch.randn(1, 18, 4, 4))
    with pytest.raises(UserError, match="spatial size"):
        PixelWiseKD()(torch.randn(1, 19, 4, 4), torch.randn(1, 19, 4, 5))


def _np_avg_pool(x: np.ndarray, k: int) -> np.ndarray:
    n, c, h, w = x.shape
    ho, wo = -(-h // k), -(-w // k)
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = x[:, :, i * k:min((i + 1) * k, h), j * k:min((j + 1) * k, w)].mean(axis=(2, 3))
    return out


def _np_pairwise(s: np.ndarray, t: np.ndarray, w: float) -> float:
    def sim(f: np.ndarray) -> np.ndarray:
        n, c = f.shape[:2]
        v = f.reshape(n, c, -1)
        m = v.shape[2]
        a = np.zeros((n, m, m))
        for b in range(n):
            for i in range(m):
                for j in range(m):
                    ni, nj = np.linalg.norm(v[b, :, i]), np.linalg.norm(v[b, :, j])
                    if ni > 0 and nj > 0:
                        a[b, i, j] = float(v[b, :, i] @ v[b, :, j]) / (ni * nj)
        return a

    a_s, a_t = sim(s), sim(t)
    n, m = a_s.shape[:2]
    return w * float(((a_s - a_t) ** 2).sum()) / (n * m * m)


def test_pairwise_affinity_hand_computed_with_different_channels() -> None:
    g = np.random.default_rng(1)
    s = g.normal(size=(2, 3, 3, 4))
    t = g.normal(size=(2, 6, 3, 4))
    s[1, :, 2, 3] = 0.0  # a zero feature vector: similarity 0 with everything, no NaN
    s_t = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    loss = PairwiseAffinity(loss_weight=2.0)(s_t, torch.tensor(t, dtype=torch.float32))
    assert loss.item() == pytest.approx(_np_pairwise(s, t, 2.0), rel=1e-5)
    loss.backward()
    assert s_t.grad is not None and bool(torch.isfinite(s_t.grad).all())


def test_pairwise_affinity_pooling_keeps_border_pixels() -> None:
    g = np.random.default_rng(2)
    s = g.normal(size=(1, 4, 5, 7))
    t = g.normal(size=(1, 2, 5, 7))
    expected = _np_pairwise(_np_avg_pool(s, 2), _np_avg_pool(t, 2), 1.5)  # 3x4 grid from partial windows
    loss = PairwiseAffinity(loss_weight=1.5, pool_size=2)(torch.tensor(s, dtype=torch.float32),
                                                          torch.tensor(t, dtype=torch.float32))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    unpooled = PairwiseAffinity(loss_weight=1.5)(torch.tensor(s), torch.tensor(t))
    assert float(unpooled) == pytest.approx(_np_pairwise(s, t, 1.5), rel=1e-10)
    assert float(unpooled) != pytest.approx(loss.item(), rel=1e-3)


def test_pairwise_affinity_errors() -> None:
    with pytest.raises(UserError, match="pool_size"):
        PairwiseAffinity(pool_size=0)
    with pytest.raises(UserError, match="spatial size"):
        PairwiseAffinity()(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_transfer_hand_computed_with_different_channels(p: float) -> None:
    g = np.random.default_rng(3)
    s = g.normal(size=(3, 4, 2, 5))
    t = g.normal(size=(3, 7, 2, 5))

    def att(f: np.ndarray, b: int) -> np.ndarray:
        q = np.zeros(f.shape[2] * f.shape[3])
        for k, (h, w) in enumerate(np.ndindex(f.shape[2], f.shape[3])):
            q[k] = sum(abs(f[b, c, h, w]) ** p for c in range(f.shape[1])) / f.shape[1]
        return q / math.sqrt(float((q**2).sum()))

    expected = 0.7 * sum(float(((att(s, b) - att(t, b)) ** 2).sum()) for b in range(3)) / 3
    loss = AttentionTransfer(p=p, loss_weight=0.7)(torch.tensor(s, dtype=torch.float32),
                                                   torch.tensor(t, dtype=torch.float32))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_attention_transfer_is_scale_invariant_and_bounded() -> None:
    x = torch.randn(2, 8, 6, 6)
    at = AttentionTransfer()
    assert float(at(x, 10 * x)) == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < float(at(torch.randn(2, 8, 6, 6), torch.randn(2, 3, 6, 6))) <= 2.0
    with pytest.raises(UserError, match="p must be > 0"):
        AttentionTransfer(p=0)


def test_feature_mse_hand_computed_and_shape_checked() -> None:
    s = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4) / 7
    t = np.cos(np.arange(24, dtype=np.float64)).reshape(1, 2, 3, 4)
    total = 0.0
    for idx in np.ndindex(s.shape):
        total += (s[idx] - t[idx]) ** 2
    loss = FeatureMSE(loss_weight=2.0)(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    assert loss.item() == pytest.approx(2.0 * total / 24, rel=1e-6)
    with pytest.raises(UserError, match="connector"):
        FeatureMSE()(torch.randn(1, 64, 4, 4), torch.randn(1, 256, 4, 4))


@pytest.mark.parametrize("name", ["kd", "pairwise", "at", "mse"])
def test_comparison_losses_float32_under_autocast(name: str) -> None:
    loss_fn = build_loss(name)
    g = torch.Generator().manual_seed(17)
    s = torch.randn(2, 4, 6, 6, generator=g).bfloat16()
    t = torch.randn(2, 4, 6, 6, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_fn(s, t)
    ref = loss_fn(s.float(), t.float())
    assert low.dtype == torch.float32
    assert float(low) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("name", ["kd", "pairwise", "at", "mse"])
def test_comparison_losses_gradcheck(name: str) -> None:
    g = torch.Generator().manual_seed(19)
    s = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64)
    loss_fn = build_loss(name, loss_weight=2.0)
    assert torch.autograd.gradcheck(lambda a: loss_fn(a, t), (s,))


# --------------------------------------------------------------------------------------------
# registry


def test_registry_and_build_loss() -> None:
    assert set(LOSSES) == {"cwd", "kd", "pairwise", "at", "mse", "dist", "mgd"}
    loss = build_loss("cwd", tau=4.0, loss_weight=3.0)
    assert isinstance(loss, ChannelWiseDivergence) and loss.tau == 4.0 and loss.loss_weight == 3.0
    assert isinstance(build_loss("pairwise", pool_size=2), PairwiseAffinity)
    with pytest.raises(UserError) as err:
        build_loss("cwdd")
    assert "'cwdd'" in str(err.value) and "cwd, kd, pairwise, at, mse" in str(err.value)
    with pytest.raises(UserError, match="no option 'temperature'.*tau, loss_weight, standardize"):
        build_loss("cwd", temperature=4.0)
