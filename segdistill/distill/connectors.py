"""Connectors: small trainable adapters that map a student's feature map to the teacher's width.

Feature-level distillation (CWD, FitNet MSE) compares maps channel by channel, so a student
layer with ``C_s`` channels needs a projection to the teacher's ``C_t`` before the loss. The
connector belongs to the student side of the distiller: it is trained with the student and
thrown away at export. :class:`MGDConnector` is more than a projection: it masks the student
feature at random and generates the teacher's feature from what is left (MGD).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError

__all__ = ["CONNECTOR_KINDS", "ConvBNConnector", "MGDConnector", "build_connector"]

#: Names accepted by :func:`build_connector`.
CONNECTOR_KINDS: tuple[str, ...] = ("convbn", "convbnrelu", "identity", "mgd")


class ConvBNConnector(nn.Module):
    """1x1 convolution (no bias) + BatchNorm2d, optionally followed by ReLU.

    Maps ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``. The conv has no bias because
    the BatchNorm that follows has its own shift. Weights start as He-normal (fan-out, ReLU
    gain) and the BN as the identity (weight 1, bias 0), the usual init of conv-BN blocks.

    Args:
        in_channels: channels of the student map.
        out_channels: channels of the teacher map.
        relu: append a ReLU (for teacher features that are themselves post-ReLU).
    """

    def __init__(self, in_channels: int, out_channels: int, relu: bool = False) -> None:
        super().__init__()
        _check_channels("ConvBNConnector", in_channels, out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu: nn.Module = nn.ReLU(inplace=True) if relu else nn.Identity()
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Project ``x`` from ``in_channels`` to ``out_channels``."""
        return self.relu(self.bn(self.conv(x)))


class MGDConnector(nn.Module):
    """The generative connector of MGD (Yang et al., ECCV 2022), as mmrazor's ``MGDConnector``.

    ``forward(x)``: project ``x`` to the teacher's width with a 1x1 conv (``align``, with bias; only
    when the channel counts differ), zero a random part of it, and *generate* the teacher feature
    from the rest with ``generation`` = conv3x3 -> ReLU -> conv3x3 (with biases, padding 1)::

        mask  = 1 where u <= 1 - lambda_mgd else 0,   u ~ U[0, 1)  of shape (N,1,H,W) (or (N,C,1,1))
        out   = generation(align(x) * mask)

    so each position (each channel with ``mask_on_channel``) is dropped with probability
    ``lambda_mgd``, as mmrazor draws it. The mask is drawn on every call, in train and eval mode
    alike (mmrazor's connector does the same); pass ``mask=`` to apply a given one instead.

    **Randomness.** The mask never comes from the global RNG (which drives dropout and must not
    shift when a term is added): the connector owns a CPU ``torch.Generator``, reseeded before
    each draw from ``(seed, rank, draws)`` (``numpy.random.SeedSequence``), where ``draws`` counts
    the masks drawn so far and ``rank`` is this process's distributed rank (0 without
    ``torch.distributed``), so every process draws its own masks. ``(seed, draws)`` is the whole
    state: it is the module's *extra state*, so it travels in ``state_dict()`` (key
    ``_extra_state``) and ``load_state_dict`` restores it; a resumed run then draws exactly the
    masks the uninterrupted run would have drawn, on any number of processes, although only one
    process saves the checkpoint. The mask is drawn on the CPU, so it is the same on every device.

    Args:
        in_channels: channels of the student feature.
        out_channels: channels of the teacher feature.
        lambda_mgd: probability that a position is masked, in ``[0, 1)`` (mmrazor's default 0.65).
        mask_on_channel: mask whole channels (``(N,C,1,1)``) instead of positions (``(N,1,H,W)``).
        seed: seed of the mask stream; ``None`` takes one from the global torch RNG here, at
            construction, so that it follows the run seed (the trainer seeds the global RNG with
            the config's ``seed`` before it builds the connectors).
    """

    def __init__(self, in_channels: int, out_channels: int, lambda_mgd: float = 0.65, mask_on_channel: bool = False,
                 seed: int | None = None) -> None:
        super().__init__()
        _check_channels("MGDConnector", in_channels, out_channels)
        if (isinstance(lambda_mgd, bool) or not isinstance(lambda_mgd, (int, float)) or not math.isfinite(lambda_mgd)
                or not 0 <= lambda_mgd < 1):
            raise UserError(f"MGDConnector: lambda_mgd must be a number in [0, 1), got {lambda_mgd!r}; "
                            "fix 'lambda_mgd' in the distillation config")
        self.lambda_mgd = float(lambda_mgd)
        self.mask_on_channel = bool(mask_on_channel)
        self.align: nn.Conv2d | None = (nn.Conv2d(in_channels, out_channels, kernel_size=1)
                                        if in_channels != out_channels else None)
        self.generation = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self.seed = int(seed) % 2**63
        self.draws = 0
        self.generator = torch.Generator()

    @staticmethod
    def _rank() -> int:
        dist = torch.distributed
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    def draw_mask(self, n: int, c: int, h: int, w: int) -> Tensor:
        """Draw the next 0/1 mask (float32, CPU) for an aligned feature of shape ``(n, c, h, w)``."""
        entropy = [self.seed, self._rank(), self.draws]
        self.generator.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))
        shape = (n, c, 1, 1) if self.mask_on_channel else (n, 1, h, w)
        u = torch.rand(shape, generator=self.generator)
        self.draws += 1
        return (u <= 1 - self.lambda_mgd).float()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Generate the teacher feature from the masked ``x``; ``mask`` replaces the random draw."""
        if self.align is not None:
            x = self.align(x)
        if mask is None:
            mask = self.draw_mask(*x.shape)
        elif mask.dim() != 4 or any(m not in (1, d) for m, d in zip(mask.shape, x.shape, strict=True)):
            raise ValueError(f"MGDConnector: mask of shape {tuple(mask.shape)} does not broadcast to the aligned "
                             f"feature {tuple(x.shape)}; give (N,1,H,W) or (N,C,1,1)")
        return self.generation(x * mask.to(device=x.device, dtype=x.dtype))

    def get_extra_state(self) -> Tensor:
        """``[seed, draws]``: the whole state of the mask stream, saved in ``state_dict()``."""
        return torch.tensor([self.seed, self.draws], dtype=torch.int64)

    def set_extra_state(self, state: Tensor) -> None:
        """Restore the mask stream saved by :meth:`get_extra_state` (by ``load_state_dict``)."""
        seed, draws = (int(v) for v in torch.as_tensor(state).tolist())
        self.seed, self.draws = seed, draws

    def extra_repr(self) -> str:
        return f"lambda_mgd={self.lambda_mgd}, mask_on_channel={self.mask_on_channel}"


def _check_channels(owner: str, in_channels: int, out_channels: int) -> None:
    for key, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{owner}: {key} must be a positive integer, got {value!r}; "
                            "fix the connector channels in the distillation config")


def build_connector(kind: str, in_ch: int, out_ch: int, lambda_mgd: float = 0.65) -> nn.Module:
    """Build a connector from ``in_ch`` student channels to ``out_ch`` teacher channels.

    ``kind`` is one of :data:`CONNECTOR_KINDS`: ``"convbn"`` (:class:`ConvBNConnector`),
    ``"convbnrelu"`` (the same with a ReLU), ``"identity"`` (no parameters; only when the
    channel counts already match) or ``"mgd"`` (:class:`MGDConnector` with mask ratio
    ``lambda_mgd``, which the other kinds ignore). Raises :class:`UserError` otherwise.
    """
    if kind == "mgd":
        return MGDConnector(in_ch, out_ch, lambda_mgd=lambda_mgd)
    if kind == "convbn":
        return ConvBNConnector(in_ch, out_ch, relu=False)
    if kind == "convbnrelu":
        return ConvBNConnector(in_ch, out_ch, relu=True)
    if kind == "identity":
        _check_channels("identity connector", in_ch, out_ch)
        if in_ch != out_ch:
            raise UserError(f"identity connector cannot map {in_ch} student channels to {out_ch} teacher channels; "
                            "use connector 'convbn' (or 'convbnrelu') in the distillation config")
        return nn.Identity()
    raise UserError(f"unknown connector kind {kind!r}; valid kinds are {', '.join(CONNECTOR_KINDS)}")
