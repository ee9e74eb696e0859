"""The frozen teacher: no gradients, no dropout, no losses, and only as much network as the taps need.

Fast paths (each optional, each checked against the float32 teacher in the tests): channels_last,
bfloat16 autocast, BatchNorm folded into the preceding convolution, and torch.compile.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..models.ops import to_channels_last
from ..models.segmentor import EncoderDecoder


def resolve_module(model: nn.Module, name: str, role: str) -> nn.Module:
    """``model.get_submodule(name)`` with a one-line error suggesting the nearest names."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        near = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.4)
        hint = f"; nearest: {', '.join(near)}" if near else ""
        raise UserError(f"{role} has no module named {name!r} to tap{hint}")
    return modules[name]


class Tap:
    """Records the outputs of named submodules during a forward (forward hooks, removed with ``close``)."""

    def __init__(self, model: nn.Module, names: Sequence[str], role: str) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [resolve_module(model, n, role).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):  # noqa: ANN202 - a hook closure
        def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[name] = output
        return record

    def pop(self) -> dict[str, torch.Tensor]:
        """The outputs recorded since the last call."""
        out, self.outputs = self.outputs, {}
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _inside(model: nn.Module, tap: str, head: nn.Module) -> bool:
    """Whether the module named ``tap`` is ``head`` or one of its submodules."""
    target = model.get_submodule(tap)
    return any(m is target for m in head.modules())


def set_reference_mode(model: nn.Module) -> None:
    """mmrazor's teacher: train mode everywhere (dropout on) except BatchNorm (running statistics)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a Conv2d into that conv; returns the count.

    In our models a BN always follows its conv either inside an ``nn.Sequential`` or as the sibling
    attribute pairs ``conv``/``bn`` and ``convN``/``bnN``. The BN is replaced by ``nn.Identity``, so
    the folded model has other state-dict keys: fold only a loaded, frozen copy.
    """
    folded = 0
    for parent in list(model.modules()):
        pairs: list[tuple[str, str]] = []
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            pairs = [(a, b) for a, b in zip(names, names[1:], strict=False)]
        else:
            pairs = [(f"conv{s}", f"bn{s}") for s in ("", "1", "2", "3")]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold_into(conv, bn)
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    assert bn.running_var is not None and bn.running_mean is not None, "fold only BN with running statistics"
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the device runs it natively, else float16 on CUDA; None means stay in float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    return None


class FrozenTeacher(nn.Module):
    """Runs the teacher for its taps only; returns ``{tap name: float32 tensor}``.

    ``mode="eval"`` (default): every module in eval mode, so dropout is off and the targets are the
    teacher's real predictions. ``mode="reference"`` keeps mmrazor's behaviour (train mode except BN,
    dropout noise on the targets) for parity studies.
    """

    def __init__(self, model: EncoderDecoder, taps: Sequence[str], mode: str = "eval",
                 channels_last: bool = False, bf16: bool = False, fold_bn: bool = False,
                 compile: bool = False) -> None:
        super().__init__()
        if mode not in ("eval", "reference"):
            raise UserError(f"teacher.mode must be 'eval' or 'reference', got {mode!r}")
        self.model = model
        self.mode = mode
        self.taps = list(dict.fromkeys(taps))
        for name in self.taps:
            resolve_module(model, name, "teacher")
        # Only the heads a tap lies in run (a backbone-only tap runs no head at all).
        self.heads_needed = [name for name, head in model.heads().items()
                             if any(_inside(model, t, head) for t in self.taps)]
        for p in model.parameters():
            p.requires_grad_(False)
        self.channels_last = channels_last
        self.bf16 = bf16
        if fold_bn:
            if any(t.split(".")[-1].startswith("bn") or t.endswith(".bn") for t in self.taps):
                raise UserError("teacher.fold_bn removes BatchNorm modules, but a tap names one; "
                                "tap the enclosing module or set teacher.fold_bn=false")
            model.eval()
            fold_batchnorm(model)
        if channels_last:
            to_channels_last(model)
        self._tap = Tap(model, self.taps, "teacher")
        self._forward = torch.compile(self._run, dynamic=False) if compile else self._run
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        # Whatever the trainer asks, the teacher's modules keep their configured mode.
        super().train(False)
        if self.mode == "reference":
            set_reference_mode(self.model)
        else:
            self.model.eval()
        return self

    def _run(self, x: torch.Tensor) -> None:
        feats = self.model.backbone(x)
        heads = self.model.heads()
        for name in self.heads_needed:
            heads[name](heads[name].select(feats))

    @contextlib.contextmanager
    def _precision(self, device: torch.device) -> Iterator[None]:
        dtype = autocast_dtype(device) if self.bf16 else None
        if dtype is None:
            yield
        else:
            with torch.autocast(device.type, dtype=dtype):
                yield

    @torch.no_grad()
    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The tapped maps for the normalised images ``x`` (``label`` is unused: the teacher has no loss)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._precision(x.device):
            self._forward(x)
        return {k: v.float().contiguous() for k, v in self._tap.pop().items()}


class ReferenceCostTeacher(nn.Module):
    """What mmrazor's teacher costs per step: train mode except BatchNorm (dropout on), float32, every
    head, and the teacher's own task losses, computed and thrown away; returns the tapped maps.

    Used only by the benchmark's "all fast paths off" variant, as the reference point.
    """

    def __init__(self, model: EncoderDecoder, taps: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)
        self._tap = Tap(model, list(dict.fromkeys(taps)), "teacher")
        self.train(False)

    def train(self, mode: bool = True) -> ReferenceCostTeacher:
        super().train(False)
        set_reference_mode(self.model)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        outputs = self.model(x, with_aux=True)
        if label is not None:
            self.model.loss(outputs, label)  # mmrazor calls the teacher with mode='loss'
        return {k: v.float().contiguous() for k, v in self._tap.pop().items()}
