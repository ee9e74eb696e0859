"""Show what channel-wise distillation aligns: per-channel spatial softmax maps of teacher and student.

CWD turns every channel of a tapped map into a distribution over its ``H*W`` positions,
``softmax(x[c] / tau)``, and pulls the student's distribution towards the teacher's with
``KL(T || S)``. :func:`channel_softmax_figure` runs both networks on one image and draws, for a few
channels, the teacher's and the student's distribution side by side with that channel's KL, so one can
see where the student still disagrees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ..data.preprocess import normalize_image
from ..errors import UserError
from ..fileio import atomic_path
from .teacher import Tap

__all__ = ["ChannelFigure", "channel_kl", "channel_softmax", "channel_softmax_figure"]

DEFAULT_TAP = "decode_head.conv_seg"


@dataclass(frozen=True)
class ChannelFigure:
    """What :func:`channel_softmax_figure` drew and computed.

    ``kl`` maps each drawn channel to its ``KL(T || S)`` at ``tau``; ``kl_all`` holds it for every channel;
    ``loss`` is ``tau**2 * mean(kl_all)``, i.e. mmrazor's ``ChannelWiseDivergence`` (loss_weight 1) on
    this image.
    """

    path: Path
    tau: float
    channels: list[int]
    kl: dict[int, float]
    kl_all: list[float]
    loss: float


def channel_softmax(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``(C, H, W)`` map -> per-channel softmax over the ``H*W`` positions at temperature ``tau`` (float64)."""
    c, h, w = logits.shape
    return torch.softmax(logits.double().reshape(c, h * w) / tau, dim=1).reshape(c, h, w)


def channel_kl(teacher: torch.Tensor, student: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``KL(softmax_HW(T[c]/tau) || softmax_HW(S[c]/tau))`` for every channel of two ``(C, H, W)`` maps."""
    c = teacher.shape[0]
    log_t = torch.log_softmax(teacher.double().reshape(c, -1) / tau, dim=1)
    log_s = torch.log_softmax(student.double().reshape(c, -1) / tau, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1)


def _tapped(model: nn.Module, image: torch.Tensor, tap: str, role: str) -> torch.Tensor:
    device = next(model.parameters()).device
    x = image.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if tap == DEFAULT_TAP:
                # Dropout2d is the identity in eval mode, so this is exactly conv_seg's output.
                out = model(x, with_aux=False)["decode"]
            else:
                hooks = Tap(model, [tap], role)
                try:
                    model(x)
                    out = hooks.pop()[tap]
                finally:
                    hooks.close()
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise UserError(f"{role} tap {tap!r} does not output an (N, C, H, W) map; tap a convolution instead")
    return out[0].float().cpu()


def _default_channels(teacher_map: torch.Tensor, k: int) -> list[int]:
    """The ``k`` channels the teacher predicts on most pixels (ties broken by mean class probability)."""
    c = teacher_map.shape[0]
    counts = torch.bincount(teacher_map.argmax(dim=0).flatten(), minlength=c).double()
    mass = torch.softmax(teacher_map.double(), dim=0).mean(dim=(1, 2))  # < 1, so it only breaks ties
    return torch.topk(counts + mass, min(k, c)).indices.tolist()


def channel_softmax_figure(
    teacher: nn.Module,
    student: nn.Module,
    image_rgb: np.ndarray,
    out_path: str | os.PathLike,
    *,
    tau: float = 1.0,
    channels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    tap: str = DEFAULT_TAP,
    input_size: Sequence[int] | None = None,
    dpi: int = 100,
) -> ChannelFigure:
    """Draw teacher vs student channel distributions for one image and save the figure as a PNG.

    Args:
        teacher, student: segmentors (run in eval mode; their modes are restored).
        image_rgb: ``RGB uint8 H x W x 3`` image.
        out_path: the PNG to write (atomically).
        tau: the CWD temperature.
        channels: channel indices to draw; default the 4 classes the teacher predicts on most pixels.
        class_names: names for the channel titles (class ``i`` = channel ``i`` of ``conv_seg``).
        tap: module whose output both networks are compared on, as in the config's distill terms.
            The default is the decode head's classifier, what the reference CWD recipe aligns.
        input_size: ``(H, W)`` to resize the image to before the forward (e.g. to fit a big teacher in
            memory); ``None`` keeps the image size.
        dpi: figure resolution; the PNG is ``dpi`` pixels per inch of a figure about 3.2 in per column.

    Returns:
        A :class:`ChannelFigure` with the path, the drawn channels and the per-channel KL numbers.
    """
    try:
        # An Agg canvas on a bare Figure: no pyplot, so no global backend switch and no GUI.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError('viz-channels needs matplotlib, which is not installed; '
                        'run: pip install "segdistill[plot]"') from None
    if not tau > 0:
        raise UserError(f"tau must be positive, got {tau}")
    if not (isinstance(image_rgb, np.ndarray) and image_rgb.dtype == np.uint8 and image_rgb.ndim == 3
            and image_rgb.shape[2] == 3):
        raise UserError("the image must be an RGB uint8 H x W x 3 array (read it with segdistill.data.read_image)")
    rgb = image_rgb
    if input_size is not None:
        h, w = (int(s) for s in input_size)
        if min(h, w) < 8:
            raise UserError(f"input size must be two numbers H W of at least 8 pixels, got {list(input_size)}")
        rgb = cv2.resize(image_rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    x = normalize_image(rgb)

    t_map = _tapped(teacher, x, tap, "teacher")
    s_map = _tapped(student, x, tap, "student")
    if t_map.shape != s_map.shape:
        raise UserError(f"tap {tap!r} gives the teacher {tuple(t_map.shape)} and the student {tuple(s_map.shape)} "
                        "(C, H, W); CWD compares equal shapes, so pick a tap where both match (e.g. conv_seg)")
    num_channels = t_map.shape[0]
    chosen = list(channels) if channels is not None else _default_channels(t_map, 4)
    if not chosen:
        raise UserError("no channels to draw; pass channel indices or leave them out for the default 4")
    bad = [c for c in chosen if not 0 <= c < num_channels]
    if bad:
        raise UserError(f"channels {bad} are out of range: the tapped map has {num_channels} channels "
                        f"(0..{num_channels - 1})")

    kl_all = channel_kl(t_map, s_map, tau)
    loss = float(tau**2 * kl_all.mean())
    p_t = channel_softmax(t_map, tau).numpy()
    p_s = channel_softmax(s_map, tau).numpy()
    names = list(class_names) if class_names is not None else []

    n = len(chosen)
    h_img, w_img = rgb.shape[:2]
    h_map, w_map = t_map.shape[1:]
    col_w = 3.2
    map_h = col_w * h_map / w_map
    img_h = min(2.0 * map_h, n * col_w * h_img / w_img)
    fig = Figure(figsize=(col_w * n + 0.6, img_h + 2 * map_h + 2.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, n, height_ratios=[img_h, map_h, map_h])
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(rgb)
    ax.set_axis_off()
    ax.set_title(f"input {w_img}x{h_img}; tap {tap} ({w_map}x{h_map} map)", fontsize=9)
    uniform = float(h_map * w_map)
    for j, c in enumerate(chosen):
        # Shown as multiples of the uniform density 1/(H*W), on one range per column so T and S
        # compare by eye; a fixed 0-based scale would flatten the near-uniform maps of early training.
        t_c, s_c = p_t[c] * uniform, p_s[c] * uniform
        lo, hi = float(min(t_c.min(), s_c.min())), float(max(t_c.max(), s_c.max()))
        label = f"{names[c]} (ch {c})" if c < len(names) else f"channel {c}"
        axes = []
        for row, (m, who) in enumerate(((t_c, "teacher"), (s_c, "student")), start=1):
            ax = fig.add_subplot(grid[row, j])
            im = ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            axes.append(ax)
            if j == 0:
                ax.set_ylabel(who, fontsize=10)
            if row == 1:
                ax.set_title(f"{label}\nKL(T||S) = {kl_all[c].item():.3g}", fontsize=9)
        bar = fig.colorbar(im, ax=axes, location="bottom", shrink=0.9, aspect=30)
        bar.ax.tick_params(labelsize=7)
        if j == 0:
            bar.set_label("x uniform density", fontsize=8)
    fig.suptitle(f"CWD: softmax over positions per channel, tau = {tau:g}; "
                 f"loss = tau^2 * mean KL over {num_channels} channels = {loss:.4g}", fontsize=10)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return ChannelFigure(path=out, tau=float(tau), channels=chosen,
                         kl={c: float(kl_all[c]) for c in chosen}, kl_all=kl_all.tolist(), loss=loss)
