"""Connectors: shapes, gradient flow, the identity rule, config errors, and use with CWD."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from segdistill.distill.connectors import CONNECTOR_KINDS, ConvBNConnector, build_connector
from segdistill.distill.losses import ChannelWiseDivergence
from segdistill.errors import UserError


@pytest.mark.parametrize("relu", [False, True])
def test_convbn_connector_shape_and_structure(relu: bool) -> None:
    conn = ConvBNConnector(8, 24, relu=relu)
    out = conn(torch.randn(2, 8, 5, 7))
    assert out.shape == (2, 24, 5, 7)
    assert conn.conv.kernel_size == (1, 1) and conn.conv.bias is None
    assert isinstance(conn.bn, nn.BatchNorm2d) and conn.bn.num_features == 24
    assert isinstance(conn.relu, nn.ReLU if relu else nn.Identity)
    assert sorted(conn.state_dict()) == ["bn.bias", "bn.num_batches_tracked", "bn.running_mean",
                                         "bn.running_var", "bn.weight", "conv.weight"]
    if relu:
        assert float(out.detach().min()) >= 0.0
    else:
        assert float(out.detach().min()) < 0.0  # train-mode BN output is zero-mean per channel


def test_convbn_connector_computes_conv_then_bn() -> None:
    torch.manual_seed(0)
    conn = ConvBNConnector(3, 4).eval()
    with torch.no_grad():
        conn.bn.running_mean.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
        conn.bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25, 9.0]))
        conn.bn.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
        conn.bn.bias.copy_(torch.tensor([0.0, 1.0, 0.5, -0.5]))
    x = torch.randn(1, 3, 2, 2)
    w = conn.conv.weight.detach()[:, :, 0, 0]  # (out, in)
    bn_w, bn_b = conn.bn.weight.detach(), conn.bn.bias.detach()
    expected = torch.empty(1, 4, 2, 2)
    for o in range(4):
        for i in range(2):
            for j in range(2):
                y = sum(float(w[o, c]) * float(x[0, c, i, j]) for c in range(3))
                norm = (y - float(conn.bn.running_mean[o])) / (float(conn.bn.running_var[o]) + conn.bn.eps) ** 0.5
                expected[0, o, i, j] = norm * float(bn_w[o]) + float(bn_b[o])
    torch.testing.assert_close(conn(x).detach(), expected, rtol=1e-5, atol=1e-6)


def test_convbn_connector_gradients_flow_through_cwd() -> None:
    torch.manual_seed(1)
    conn = build_connector("convbn", 16, 32)
    student = torch.randn(2, 16, 6, 8, requires_grad=True)
    teacher = torch.randn(2, 32, 6, 8) * 3
    loss = ChannelWiseDivergence(tau=1.0, loss_weight=3.0)(conn(student), teacher)
    loss.backward()
    for name, p in conn.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and float(p.grad.abs().sum()) > 0, name
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    # one SGD step on the connector alone lowers the loss: the connector can learn the mapping
    with torch.no_grad():
        for p in conn.parameters():
            assert p.grad is not None
            p -= 0.5 * p.grad
    after = ChannelWiseDivergence(tau=1.0, loss_weight=3.0)(conn(student.detach()), teacher)
    assert after.item() < loss.item()


def test_identity_connector() -> None:
    conn = build_connector("identity", 19, 19)
    assert isinstance(conn, nn.Identity) and list(conn.parameters()) == []
    x = torch.randn(1, 19, 3, 3)
    assert conn(x) is x
    with pytest.raises(UserError) as err:
        build_connector("identity", 128, 512)
    msg = str(err.value)
    assert "128" in msg and "512" in msg and "convbn" in msg and "\n" not in msg


def test_build_connector_kinds_and_errors() -> None:
    assert CONNECTOR_KINDS == ("convbn", "convbnrelu", "identity", "mgd")
    relu_conn = build_connector("convbnrelu", 4, 6)
    assert isinstance(relu_conn, ConvBNConnector) and isinstance(relu_conn.relu, nn.ReLU)
    plain = build_connector("convbn", 4, 6)
    assert isinstance(plain, ConvBNConnector) and isinstance(plain.relu, nn.Identity)
    with pytest.raises(UserError, match="unknown connector kind 'conv'.*convbn, convbnrelu, identity"):
        build_connector("conv", 4, 6)
    with pytest.raises(UserError, match="in_channels must be a positive integer"):
        build_connector("convbn", 0, 6)
    with pytest.raises(UserError, match="out_channels must be a positive integer"):
        ConvBNConnector(4, 2.5)  # type: ignore[arg-type]


def test_connector_state_dict_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(2)
    conn = build_connector("convbnrelu", 5, 7)
    conn(torch.randn(4, 5, 3, 3))  # move the BN running stats away from their init
    path = tmp_path / "connector.pt"
    torch.save(conn.state_dict(), path)
    other = build_connector("convbnrelu", 5, 7)
    other.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(other.eval()(x), conn.eval()(x), rtol=0, atol=0)
