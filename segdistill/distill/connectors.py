"""Connectors: small trainable adapters that map a student's feature map to the teacher's width.

Feature-level distillation (CWD, FitNet MSE) compares maps channel by channel, so a student
layer with ``C_s`` channels needs a projection to the teacher's ``C_t`` before the loss. The
connector belongs to the student side of the distiller: it is trained with the student and
thrown away at export.
"""

from __future__ import annotations

from torch import Tensor, nn

from segdistill.errors import UserError

__all__ = ["CONNECTOR_KINDS", "ConvBNConnector", "build_connector"]

#: Names accepted by :func:`build_connector`.
CONNECTOR_KINDS: tuple[str, ...] = ("convbn", "convbnrelu", "identity")


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


def _check_channels(owner: str, in_channels: int, out_channels: int) -> None:
    for key, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{owner}: {key} must be a positive integer, got {value!r}; "
                            "fix the connector channels in the distillation config")


def build_connector(kind: str, in_ch: int, out_ch: int) -> nn.Module:
    """Build a connector from ``in_ch`` student channels to ``out_ch`` teacher channels.

    ``kind`` is one of :data:`CONNECTOR_KINDS`: ``"convbn"`` (:class:`ConvBNConnector`),
    ``"convbnrelu"`` (the same with a ReLU) or ``"identity"`` (no parameters; only when the
    channel counts already match). Raises :class:`UserError` otherwise.
    """
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
