"""Distillation losses: channel-wise divergence (CWD), the baselines it is compared with, DIST and MGD.

Every loss is an ``nn.Module`` called as ``loss(preds_S, preds_T)`` on student and teacher maps
of shape ``(N, C, H, W)`` and returns a 0-dim tensor that already includes its ``loss_weight``.
All of them compute in float32 whatever the input dtype (float64 inputs stay float64) and with
autocast switched off inside, so bf16/fp16 logits under ``torch.autocast`` give the same loss
as their float32 copies. Formulas and normalisations are in ``docs/losses.md``.

:class:`ChannelWiseDivergence` is the mmrazor ``ChannelWiseDivergence`` (Shu et al., ICCV 2021)
to float32 rounding, value and gradient, and is parity-tested against mmrazor 1.0.0 outputs.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from ..errors import UserError

__all__ = [
    "AttentionTransfer",
    "ChannelWiseDivergence",
    "DISTLoss",
    "DistillLoss",
    "FeatureMSE",
    "LOSSES",
    "LossInputError",
    "MGDLoss",
    "PairwiseAffinity",
    "PixelWiseKD",
    "build_loss",
    "standardize_logits",
]


class LossInputError(UserError, ValueError):
    """Student and teacher maps that a loss cannot compare (wrong rank, channels or size).

    A ``ValueError`` for library callers and a :class:`UserError` for the CLI: the usual cause is
    a distillation config pairing layers of different widths or strides.
    """


# --------------------------------------------------------------------------------------------
# helpers


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    # float64 is kept so that gradcheck and float64 reference comparisons are meaningful;
    # anything narrower (bf16/fp16 under autocast) is promoted to float32.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@contextlib.contextmanager
def _no_autocast(device_type: str) -> Iterator[None]:
    # Autocast would run bmm/matmul in bf16/fp16 again even after we cast the inputs up.
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _check_number(owner: str, key: str, value: float, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{owner}: {key} must be a finite number, got {value!r}; fix '{key}' in the loss config")
    if positive and value <= 0:
        raise UserError(f"{owner}: {key} must be > 0, got {value!r}; fix '{key}' in the loss config")
    return float(value)


def _check_maps(owner: str, preds_S: Tensor, preds_T: Tensor, *, same_channels: bool, same_size: bool) -> None:
    """Raise :class:`LossInputError` unless the two maps can be compared by ``owner``."""
    s, t = tuple(preds_S.shape), tuple(preds_T.shape)
    if preds_S.dim() != 4 or preds_T.dim() != 4:
        raise LossInputError(f"{owner}: expects (N, C, H, W) maps, got student {s} and teacher {t}; "
                             "distill 4-D feature or logit maps")
    if s[0] != t[0]:
        raise LossInputError(f"{owner}: student batch {s[0]} != teacher batch {t[0]} (student {s}, teacher {t}); "
                             "feed the same images to both networks")
    if preds_S.numel() == 0 or preds_T.numel() == 0:
        raise LossInputError(f"{owner}: empty map (student {s}, teacher {t}); check the recorded layers")
    if same_channels and s[1] != t[1]:
        raise LossInputError(f"{owner}: student has {s[1]} channels but teacher {t[1]} (student {s}, teacher {t}); "
                             f"add a connector on the student, e.g. build_connector('convbn', {s[1]}, {t[1]})")
    if same_size and s[2:] != t[2:]:
        how = ("set the term's align: student (resize the teacher's map to the student's) or align: teacher "
               "(resize the student's map to the teacher's), or distill layers of the same stride")
        raise LossInputError(f"{owner}: student map {s} and teacher map {t} differ in spatial size; {how}")


#: Added to the standard deviation in :func:`standardize_logits` (the authors' value): a constant
#: row (standard deviation 0) becomes all zeros instead of NaN.
STANDARDIZE_EPS = 1e-7


def standardize_logits(x: Tensor, dim: int) -> Tensor:
    """Z-score ``x`` along ``dim``: ``(x - mean) / (std + 1e-7)`` (logit standardization, Sun et al. CVPR 2024).

    ``std`` is the unbiased (``n - 1``) estimate, as in the authors' ``normalize``; along an axis of
    length 1 it is taken as 0, so the result is 0 there instead of NaN. Differentiable (plain autograd).
    The result no longer depends on a shift ``a + b * x`` (``b > 0``) of each row along ``dim``, so a
    student need not match the teacher's logit range, only the order and relative gaps of its logits.
    """
    correction = 1 if x.shape[dim] > 1 else 0
    std, mean = torch.std_mean(x, dim=dim, keepdim=True, correction=correction)
    return (x - mean) / (std + STANDARDIZE_EPS)


def _maybe_standardize(x: Tensor, dim: int, dtype: torch.dtype, on: bool) -> Tensor:
    # Standardize in the loss's compute dtype with autocast off, before the temperature.
    if not on:
        return x
    with _no_autocast(x.device.type):
        return standardize_logits(x.to(dtype), dim)


class DistillLoss(nn.Module):
    """Base of the distillation losses: ``forward(preds_S, preds_T) -> 0-dim tensor``.

    Holds ``loss_weight`` (already applied to the returned value) so that a distiller can log
    it and rebuild the loss from its config.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = _check_number(type(self).__name__, "loss_weight", loss_weight, positive=False)

    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Return the weighted loss between the student map ``preds_S`` and the teacher map ``preds_T``."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# softmax KL shared by CWD (softmax over H*W) and pixel-wise KD (softmax over C)


def _scaled_log_softmax(x: Tensor, tau: float, dim: int, dtype: torch.dtype) -> Tensor:
    y = x.to(dtype)
    if tau != 1.0:
        # Divide in place when .to() already made a private copy: one map-sized buffer fewer.
        y = y.div_(tau) if y is not x else y / tau
    return torch.log_softmax(y, dim=dim)


class _SoftmaxKLSum(torch.autograd.Function):
    """``scale * sum(KL(softmax(T/tau) || softmax(S/tau)))`` with the softmax along ``dim``.

    A hand-written Function rather than autograd over the formula because the gradient has a
    closed form, ``d/dS = scale/tau * (softmax(S/tau) - softmax(T/tau))``, which is computed in
    the forward pass into the buffer of the student's log-softmax: backward then keeps a single
    map-sized tensor alive instead of the two (or more) that autograd saves for the formula, and
    the forward pass creates no more than three map-sized float32 buffers
    (``docs/losses.md`` has the measurements). The teacher gets a gradient too when it requires
    one (mmrazor does not detach it): ``scale/tau * p_T * (log p_T - log p_S - KL_row)``.
    Not twice differentiable.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, preds_S: Tensor, preds_T: Tensor, tau: float, dim: int,  # type: ignore[override]
                scale: float) -> Tensor:
        dtype = _compute_dtype(preds_S, preds_T)
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        with _no_autocast(preds_S.device.type):
            log_p_s = _scaled_log_softmax(preds_S, tau, dim, dtype)
            log_p_t = _scaled_log_softmax(preds_T, tau, dim, dtype)
            p_t = log_p_t.exp()
            # xlogy semantics: a teacher probability of exactly 0 must contribute 0, but a -inf
            # logit (a masked region) makes its log -inf and 0 * inf = NaN. Clamping both logs to
            # the most negative finite number keeps every difference finite where p_T == 0 (and
            # NaN inputs still give NaN); cheaper than building a mask of p_T == 0.
            lowest = torch.finfo(dtype).min
            log_p_s.clamp_(min=lowest)
            diff = log_p_t.clamp_(min=lowest).sub_(log_p_s)  # log p_T - log p_S in the teacher's buffer
            grad_t: Tensor | None = None
            if need_t:
                kl_row = (p_t * diff).sum(dim=dim, keepdim=True)
                grad_t = (diff - kl_row).mul_(p_t).mul_(scale / tau)
            loss = diff.mul_(p_t).sum() * scale
            grad_s: Tensor | None = None
            if need_s:
                # softmax(S/tau) - p_T uses sum(p_T) == 1 per row; autograd through the formula
                # multiplies softmax(S/tau) by the rounded row sum instead (~1e-7 relative apart).
                grad_s = log_p_s.exp_().sub_(p_t).mul_(scale / tau)
        ctx.save_for_backward(grad_s, grad_t)  # type: ignore[arg-type]  # None is a valid saved value
        ctx.dtypes = (preds_S.dtype, preds_T.dtype)  # type: ignore[attr-defined]
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grad_s, grad_t = ctx.saved_tensors  # type: ignore[attr-defined]
        dtype_s, dtype_t = ctx.dtypes  # type: ignore[attr-defined]
        out_s = (grad_s * grad_out).to(dtype_s) if grad_s is not None else None
        out_t = (grad_t * grad_out).to(dtype_t) if grad_t is not None else None
        return out_s, out_t, None, None, None


# --------------------------------------------------------------------------------------------
# the losses


class ChannelWiseDivergence(DistillLoss):
    """Channel-wise distillation (CWD, Shu et al. ICCV 2021), as mmrazor's ``ChannelWiseDivergence``.

    Each channel of each map is turned into a distribution over its ``H*W`` positions::

        loss = loss_weight * tau**2 / (N*C)
               * sum_{n,c} KL( softmax_HW(T[n,c] / tau) || softmax_HW(S[n,c] / tau) )

    Computed in float32 from one log-softmax per map (never softmax then log), so logits of any
    magnitude stay finite; a teacher probability of exactly 0 contributes 0.

    Args:
        tau: softmax temperature (mmrazor's ``tau``); the ``tau**2`` factor keeps gradient
            magnitudes comparable across temperatures.
        loss_weight: factor applied to the loss.
        standardize: z-score every channel of both maps over its ``H*W`` positions (the softmax
            axis) before dividing by ``tau`` (:func:`standardize_logits`).
    """

    def __init__(self, tau: float = 1.0, loss_weight: float = 1.0, standardize: bool = False) -> None:
        super().__init__(loss_weight)
        self.tau = _check_number("ChannelWiseDivergence", "tau", tau, positive=True)
        self.standardize = bool(standardize)

    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Return the weighted CWD loss between student ``(N,C,h,w)`` and teacher ``(N,C,H,W)`` maps."""
        _check_maps("ChannelWiseDivergence", preds_S, preds_T, same_channels=True, same_size=True)
        n, c, h, w = preds_T.shape
        scale = self.loss_weight * self.tau**2 / (n * c)
        dtype = _compute_dtype(preds_S, preds_T)
        s = _maybe_standardize(preds_S.reshape(n, c, h * w), 2, dtype, self.standardize)
        t = _maybe_standardize(preds_T.reshape(n, c, h * w), 2, dtype, self.standardize)
        return _SoftmaxKLSum.apply(s, t, self.tau, 2, scale)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, loss_weight={self.loss_weight}, standardize={self.standardize}"


class PixelWiseKD(DistillLoss):
    """Pixel-wise logit distillation (Hinton KD applied at every pixel).

    Each pixel's logits become a distribution over the ``C`` classes::

        loss = loss_weight * tau**2 / (N*H*W)
               * sum_{n,h,w} KL( softmax_C(T[n,:,h,w] / tau) || softmax_C(S[n,:,h,w] / tau) )

    i.e. the KL is summed over classes and averaged over all ``N*H*W`` pixels. Student and
    teacher must have the same shape.

    Args:
        tau: softmax temperature.
        loss_weight: factor applied to the loss.
        standardize: z-score every pixel's logits of both maps over the ``C`` classes (the softmax
            axis) before dividing by ``tau`` (:func:`standardize_logits`).
    """

    def __init__(self, tau: float = 1.0, loss_weight: float = 1.0, standardize: bool = False) -> None:
        super().__init__(loss_weight)
        self.tau = _check_number("PixelWiseKD", "tau", tau, positive=True)
        self.standardize = bool(standardize)

    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Return the weighted pixel-wise KD loss between two ``(N,C,H,W)`` logit maps."""
        _check_maps("PixelWiseKD", preds_S, preds_T, same_channels=True, same_size=True)
        n, c, h, w = preds_T.shape
        scale = self.loss_weight * self.tau**2 / (n * h * w)
        dtype = _compute_dtype(preds_S, preds_T)
        s = _maybe_standardize(preds_S.reshape(n, c, h * w), 1, dtype, self.standardize)
        t = _maybe_standardize(preds_T.reshape(n, c, h * w), 1, dtype, self.standardize)
        return _SoftmaxKLSum.apply(s, t, self.tau, 1, scale)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, loss_weight={self.loss_weight}, standardize={self.standardize}"


def _pearson(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of matching vectors of ``a`` and ``b`` along ``dim`` of two 2-D tensors.

    mmrazor's form: the cosine similarity of the centred vectors, with ``eps`` added to the product
    of the norms, so a constant vector has correlation 0 with everything (no NaN).
    """
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


class DISTLoss(DistillLoss):
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"), segmentation form.

    Every pixel's logits become class probabilities ``p = softmax_C(x / tau)``; DIST matches
    *relations* instead of values, through Pearson correlations (``rho``) of those probabilities::

        inter = 1 - mean_{n,h,w} rho_C( p_S[n,:,h,w], p_T[n,:,h,w] )   (each pixel's class ranking)
        intra = 1 - mean_c  rho_{N*H*W}( p_S[:,c], p_T[:,c] )           (each class over every pixel of the batch)
        loss  = loss_weight * tau**2 * (inter_weight * inter + intra_weight * intra)

    This is mmrazor's ``DISTLoss`` applied to the ``N*H*W`` per-pixel rows of the maps, as the
    DIST authors' segmentation code does (``x.transpose(1, 3).reshape(-1, C)``); with ``tau=1`` it
    is also the authors' segmentation loss (they use no temperature). The intra-class term
    correlates each class over all pixels of the *batch*, so it depends on what else is in the
    batch (and, under DDP, on the local batch of each process). The teacher is detached, as in
    mmrazor. Computed in float32 under plain autograd.

    Args:
        tau: softmax temperature; ``tau**2`` scales both terms as in mmrazor.
        inter_weight: weight of the inter-class (per-pixel) term (mmrazor's ``inter_loss_weight``, beta).
        intra_weight: weight of the intra-class (per-class) term (mmrazor's ``intra_loss_weight``, gamma).
        loss_weight: factor applied to the loss.
        standardize: z-score every pixel's logits over the ``C`` classes before dividing by ``tau``.
    """

    def __init__(self, tau: float = 1.0, inter_weight: float = 1.0, intra_weight: float = 1.0,
                 loss_weight: float = 1.0, standardize: bool = False) -> None:
        super().__init__(loss_weight)
        self.tau = _check_number("DISTLoss", "tau", tau, positive=True)
        self.inter_weight = _check_number("DISTLoss", "inter_weight", inter_weight, positive=False)
        self.intra_weight = _check_number("DISTLoss", "intra_weight", intra_weight, positive=False)
        self.standardize = bool(standardize)

    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Return the weighted DIST loss between two ``(N,C,H,W)`` logit maps."""
        _check_maps("DISTLoss", preds_S, preds_T, same_channels=True, same_size=True)
        dtype = _compute_dtype(preds_S, preds_T)
        c = preds_S.shape[1]
        with _no_autocast(preds_S.device.type):
            # One row of C logits per pixel, contiguous along C. The row layout is not only
            # mmrazor's: the softmax along a contiguous last dim is also rounded better than along
            # dim 1 of an (N,C,H,W) map, which matters where the Pearson gradient is ill-conditioned
            # (near-uniform rows, e.g. two classes: 1.2e-4 against 5e-6 of the peak gradient).
            rows_s = preds_S.transpose(1, 3).reshape(-1, c).to(dtype)
            rows_t = preds_T.detach().transpose(1, 3).reshape(-1, c).to(dtype)
            p_s = torch.softmax(_maybe_standardize(rows_s, 1, dtype, self.standardize) / self.tau, dim=1)
            p_t = torch.softmax(_maybe_standardize(rows_t, 1, dtype, self.standardize) / self.tau, dim=1)
            inter = 1 - _pearson(p_s, p_t, dim=1).mean()  # each pixel's row of classes
            intra = 1 - _pearson(p_s, p_t, dim=0).mean()  # each class's column of pixels
            return (self.inter_weight * inter + self.intra_weight * intra) * (self.loss_weight * self.tau**2)

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, inter_weight={self.inter_weight}, intra_weight={self.intra_weight}, "
                f"loss_weight={self.loss_weight}, standardize={self.standardize}")


class PairwiseAffinity(DistillLoss):
    """Pair-wise similarity distillation (SKD, Liu et al. CVPR 2019 "Structured Knowledge Distillation").

    Optionally average-pools both maps first (``pool_size`` x ``pool_size`` windows, stride
    ``pool_size``, partial windows at the border average only the pixels they cover), then
    L2-normalises the feature vector of every one of the ``M = H'*W'`` positions and compares
    the cosine-similarity matrices::

        a[n,i,j] = <f[n,:,i], f[n,:,j]> / (|f[n,:,i]| |f[n,:,j]|)
        loss = loss_weight / (N * M**2) * sum_{n,i,j} (a_S[n,i,j] - a_T[n,i,j])**2

    (the mean over all ``N*M*M`` ordered pairs, the diagonal included). A position whose feature
    vector is zero has similarity 0 with everything. Channel counts may differ between student
    and teacher; the spatial sizes must match. Memory grows as ``N*M**2``: at stride 8 on
    512x1024 crops ``M = 8192`` and each similarity matrix takes 256 MiB per image, so pool.

    Args:
        loss_weight: factor applied to the loss.
        pool_size: side of the average-pooling window, or ``None``/``1`` for no pooling.
    """

    def __init__(self, loss_weight: float = 1.0, pool_size: int | None = None) -> None:
        super().__init__(loss_weight)
        if pool_size is not None and (isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1):
            raise UserError(f"PairwiseAffinity: pool_size must be a positive integer or null, got {pool_size!r}; "
                            "fix 'pool_size' in the loss config")
        self.pool_size = pool_size

    def _pool(self, x: Tensor) -> Tensor:
        if self.pool_size is None or self.pool_size == 1:
            return x
        return F.avg_pool2d(x, kernel_size=self.pool_size, stride=self.pool_size, ceil_mode=True)

    @staticmethod
    def _similarity(x: Tensor) -> Tensor:
        f = F.normalize(x.flatten(2), dim=1)  # (N, C, M), unit vectors along C
        return torch.bmm(f.transpose(1, 2), f)  # (N, M, M)

    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Return the weighted mean squared difference of the student and teacher similarity matrices."""
        _check_maps("PairwiseAffinity", preds_S, preds_T, same_channels=False, same_size=True)
        dtype = _compute_dtype(preds_S, preds_T)
        with _no_autocast(preds_S.device.type):
            sim_diff = self._similarity(self._pool(preds_S.to(dtype)))
            sim_diff = sim_diff - self._similarity(self._pool(preds_T.to(dtype)))
            return sim_diff.square().mean() * self.loss_weight

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, pool_size={self.pool_size}"


class AttentionTransfer(DistillLoss):
    """Activation-based attention transfer (Zagoruyko & Komodakis, ICLR 2017).

    A map's spatial attention is the channel mean of ``|f|**p``, flattened and L2-normalised per
    sample; the loss is the squared L2 distance of the two attentions, averaged over samples::

        q[n] = mean_c |f[n,c]|**p  (flattened to H*W),   A[n] = q[n] / |q[n]|_2
        loss = loss_weight / N * sum_n |A_S[n] - A_T[n]|_2**2

    Each term lies in ``[0, 2]`` whatever ``H*W`` is. (The authors' code takes ``.mean()`` over
    samples *and* positions, i.e. this value divided by ``H*W``.) Channel counts may differ;
    the spatial sizes must match.

    Args:
        p: exponent of the activation magnitudes (2 in the paper).
        loss_weight: factor applied to the loss.
    """

    def __init__(self, p: float = 2, loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        self.p = _check_number("AttentionTransfer", "p", p, positive=True)

    def _attention(self, x: Tensor) -> Tensor:
        return F.normalize(x.abs().pow(self.p).mean(dim=1).flatten(1), dim=1)

    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Return the weighted mean (over samples) squared distance of the normalised attention maps."""
        _check_maps("AttentionTransfer", preds_S, preds_T, same_channels=False, same_size=True)
        dtype = _compute_dtype(preds_S, preds_T)
        with _no_autocast(preds_S.device.type):
            diff = self._attention(preds_S.to(dtype)) - self._attention(preds_T.to(dtype))
            return diff.square().sum(dim=1).mean() * self.loss_weight

    def extra_repr(self) -> str:
        return f"p={self.p}, loss_weight={self.loss_weight}"


class FeatureMSE(DistillLoss):
    """FitNet-style feature regression: ``loss_weight * mean((S - T)**2)`` over all ``N*C*H*W`` elements.

    Shapes must match exactly: map the student's channels to the teacher's with a connector
    (:func:`segdistill.distill.connectors.build_connector`).

    Args:
        loss_weight: factor applied to the loss.
    """

    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Return the weighted mean squared error between two maps of identical shape."""
        _check_maps("FeatureMSE", preds_S, preds_T, same_channels=True, same_size=True)
        dtype = _compute_dtype(preds_S, preds_T)
        with _no_autocast(preds_S.device.type):
            return F.mse_loss(preds_S.to(dtype), preds_T.to(dtype)) * self.loss_weight

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}"


class MGDLoss(DistillLoss):
    """The loss of MGD (Yang et al., ECCV 2022, "Masked Generative Distillation"), as mmrazor's ``MGDLoss``.

    The student map is what :class:`~segdistill.distill.connectors.MGDConnector` *generated* from
    the masked student feature; it is regressed onto the teacher feature with a summed squared
    error, averaged over the batch only::

        loss = loss_weight * alpha_mgd / N * sum_{n,c,h,w} (S - T)**2

    The sum over ``C*H*W`` makes the value grow with the map size, hence the small ``alpha_mgd``
    (mmrazor's default 2e-5). Shapes must match exactly.

    Args:
        alpha_mgd: mmrazor's weight of the loss.
        loss_weight: further factor (the term's ``weight``); 1 gives mmrazor's loss.
    """

    def __init__(self, alpha_mgd: float = 2e-5, loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        self.alpha_mgd = _check_number("MGDLoss", "alpha_mgd", alpha_mgd, positive=True)

    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Return ``loss_weight * alpha_mgd * sum((S - T)**2) / N`` for two maps of identical shape."""
        _check_maps("MGDLoss", preds_S, preds_T, same_channels=True, same_size=True)
        dtype = _compute_dtype(preds_S, preds_T)
        with _no_autocast(preds_S.device.type):
            diff = preds_S.to(dtype) - preds_T.to(dtype)
            return diff.square().sum() / preds_T.shape[0] * (self.alpha_mgd * self.loss_weight)

    def extra_repr(self) -> str:
        return f"alpha_mgd={self.alpha_mgd}, loss_weight={self.loss_weight}"


LOSSES: dict[str, type[DistillLoss]] = {
    "cwd": ChannelWiseDivergence,
    "kd": PixelWiseKD,
    "pairwise": PairwiseAffinity,
    "at": AttentionTransfer,
    "mse": FeatureMSE,
    "dist": DISTLoss,
    "mgd": MGDLoss,
}


def build_loss(name: str, **kwargs: Any) -> DistillLoss:
    """Build the loss registered as ``name`` in :data:`LOSSES` with the given options.

    Raises :class:`UserError` for an unknown name or an option the loss does not take, naming
    the valid choices.
    """
    if name not in LOSSES:
        raise UserError(f"unknown distillation loss {name!r}; valid names are {', '.join(LOSSES)}")
    cls = LOSSES[name]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise UserError(f"distillation loss {name!r} has no option {', '.join(map(repr, unknown))}; "
                        f"valid options are {', '.join(valid)}")
    return cls(**kwargs)
