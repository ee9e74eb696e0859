"""channel_softmax_figure: the KL numbers are CWD's per-channel KL, and the figure is a readable PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.distill.losses import ChannelWiseDivergence
from segdistill.distill.viz import channel_kl, channel_softmax, channel_softmax_figure
from segdistill.errors import UserError
from segdistill.models import MEAN_RGB, STD_RGB, build_segmentor

C = 6


def model(seed: int, name: str = "pspnet_r18-d8-tiny") -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_segmentor(name, C)
    with torch.no_grad():
        m.decode_head.conv_seg.weight.mul_(100)  # peaked, different maps for teacher and student
        m.auxiliary_head.conv_seg.weight.mul_(100)
    return m


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (64, 48), interpolation=cv2.INTER_LINEAR)


def logits(m: torch.nn.Module, rgb: np.ndarray, key: str = "decode") -> torch.Tensor:
    x = ((torch.from_numpy(rgb).float() - torch.tensor(MEAN_RGB)) / torch.tensor(STD_RGB)).permute(2, 0, 1)[None]
    m.eval()
    with torch.no_grad():
        return m(x)[key][0]


def direct_kl(t: torch.Tensor, s: torch.Tensor, tau: float) -> list[float]:
    out = []
    for c in range(t.shape[0]):
        p = torch.softmax(t[c].flatten().double() / tau, 0)
        q = torch.softmax(s[c].flatten().double() / tau, 0)
        out.append(float((p * (p.log() - q.log())).sum()))
    return out


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kl_numbers_and_figure(image: np.ndarray, tmp_path: Path, tau: float) -> None:
    pytest.importorskip("matplotlib")
    teacher, student = model(0), model(1)
    teacher.train()  # modes must be restored after the eval-mode forward
    student.eval()
    res = channel_softmax_figure(teacher, student, image, tmp_path / "fig.png", tau=tau,
                                 class_names=[f"class{i}" for i in range(C)])
    assert teacher.training and not student.training
    t, s = logits(teacher, image), logits(student, image)
    want = direct_kl(t, s, tau)
    np.testing.assert_allclose(res.kl_all, want, rtol=1e-9, atol=1e-12)
    assert res.kl == {c: pytest.approx(want[c], rel=1e-9) for c in res.channels}
    assert max(want) > 1e-3  # the maps really differ
    # The figure's loss is what the project's CWD loss (mmrazor's formula) gives for these logits.
    cwd = ChannelWiseDivergence(tau=tau)(s[None], t[None])
    assert res.loss == pytest.approx(float(cwd), rel=1e-5)

    # Default channels: the 4 classes the teacher predicts on most pixels, most first.
    counts = torch.bincount(t.argmax(0).flatten(), minlength=C)
    assert len(res.channels) == 4 == len(set(res.channels))
    assert [int(counts[c]) for c in res.channels] == sorted((int(n) for n in counts), reverse=True)[:4]

    png = tmp_path / "fig.png"
    assert res.path == png and png.stat().st_size > 10_000
    with Image.open(png) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert abs(w - (3.2 * 4 + 0.6) * 100) <= 2  # 4 columns of 3.2 in at 100 dpi
    assert 500 <= h <= 1200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


def test_explicit_channels_other_tap_and_input_size(image: np.ndarray, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    teacher, student = model(2), model(3)
    res = channel_softmax_figure(teacher, student, image, tmp_path / "aux.png", channels=[5, 0],
                                 tap="auxiliary_head.conv_seg", input_size=(32, 40), dpi=50)
    assert res.channels == [5, 0]
    small = cv2.resize(image, (40, 32), interpolation=cv2.INTER_LINEAR)
    want = direct_kl(logits(teacher, small, "aux"), logits(student, small, "aux"), 1.0)
    assert res.kl == {5: pytest.approx(want[5], rel=1e-9), 0: pytest.approx(want[0], rel=1e-9)}
    with Image.open(res.path) as im:
        assert abs(im.size[0] - (3.2 * 2 + 0.6) * 50) <= 2


def test_channel_softmax_helpers() -> None:
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    p = channel_softmax(x, tau=2.0)
    torch.testing.assert_close(p.sum(dim=(1, 2)), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(p[1], torch.softmax(x[1].flatten().double() / 2, 0).reshape(4, 5))
    assert torch.all(channel_kl(x, x, 3.0).abs() < 1e-12)
    y = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(channel_kl(x, y, 2.0).numpy(), direct_kl(x, y, 2.0), rtol=1e-12)


def test_errors(image: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    teacher, student = model(4), model(5)
    out = tmp_path / "f.png"
    with pytest.raises(UserError, match="out of range"):
        channel_softmax_figure(teacher, student, image, out, channels=[C])
    with pytest.raises(UserError, match="tau must be positive"):
        channel_softmax_figure(teacher, student, image, out, tau=0)
    with pytest.raises(UserError, match="RGB uint8"):
        channel_softmax_figure(teacher, student, image.astype(np.float32), out)
    with pytest.raises(UserError, match="no module named"):
        channel_softmax_figure(teacher, student, image, out, tap="decode_head.conv_sag")
    big = model(6, "pspnet_r50-d8-tiny")
    with pytest.raises(UserError, match="pick a tap where both match"):
        channel_softmax_figure(big, student, image, out, tap="decode_head.bottleneck")
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(UserError, match=r'pip install "segdistill\[plot\]"'):
        channel_softmax_figure(teacher, student, image, out)
    assert not out.exists()
