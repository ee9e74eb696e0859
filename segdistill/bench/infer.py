"""``segdistill bench --mode infer``: latency of the teacher and the student as deployed.

Eager float32, the eager fast path (BatchNorm folded, channels_last, bfloat16 autocast),
``torch.compile`` of the fast path and ONNX Runtime (float32 graph exported by torch's exporter),
at batch 1 and at the configured batch. A backend that cannot run is reported as ``n/a`` with the
reason; the ONNX row also reports its largest difference to eager float32.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..distill.teacher import autocast_dtype, fold_batchnorm
from ..engine.distributed import pick_device
from ..errors import UserError
from ..models import build_segmentor
from ..models.export import ONNX_OPSET, LogitsAtInputSize
from ..models.ops import to_channels_last
from ..models.segmentor import EncoderDecoder
from .timing import median, now
from .train import num_classes_of


@dataclass
class InferRow:
    """Latency of one model, backend and batch size; ``latency_ms`` is None when the backend could not run."""

    model: str
    role: str
    backend: str
    batch: int
    latency_ms: float | None
    note: str = ""

    @property
    def images_per_s(self) -> float | None:
        return None if self.latency_ms is None else self.batch / (self.latency_ms / 1e3)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "images_per_s": self.images_per_s}


class _FastInference(nn.Module):
    """Inference fast path on a private copy: BatchNorm folded, channels_last, bfloat16 autocast."""

    def __init__(self, model: EncoderDecoder, size: tuple[int, int]) -> None:
        super().__init__()
        net = copy.deepcopy(model).eval()
        fold_batchnorm(net)
        to_channels_last(net)
        self.net = LogitsAtInputSize(net, size).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        dtype = autocast_dtype(x.device)
        ctx = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            out = self.net(x)
        return out.float()


def _latencies(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        start = now(device)
        fn()
        out.append(now(device) - start)
    return out


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:160]


def _onnx_latencies(model: EncoderDecoder, x: torch.Tensor, iters: int, warmup: int) -> tuple[list[float], float]:
    """Export ``model`` (float32, this batch size) to a temporary ONNX file and time ONNX Runtime on it.

    Also returns ``max|onnx - torch|`` on ``x``, so a fast but wrong graph cannot pass unnoticed.
    """
    import onnxruntime as ort

    size = (int(x.shape[2]), int(x.shape[3]))
    with tempfile.TemporaryDirectory(prefix="segdistill-bench-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        wrapper = LogitsAtInputSize(model.cpu(), size).eval()
        # The exporter prints progress and warns about its own internals; keep the table clean.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (x.cpu(),), path, dynamo=True, opset_version=ONNX_OPSET,
                              input_names=["image"], output_names=["logits"], external_data=False,
                              verbose=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.cpu().numpy()}
        with torch.no_grad():
            ref = wrapper(x.cpu()).float()
        diff = float((torch.from_numpy(session.run(None, feed)[0]) - ref).abs().max())
        return _latencies(lambda: session.run(None, feed), torch.device("cpu"), iters, warmup), diff


def bench_infer(cfg: Config, *, iters: int = 10, warmup: int = 2, num_classes: int | None = None,
                compile: bool = True, onnx: bool = True, device: torch.device | None = None) -> list[InferRow]:
    """Latency of the teacher (when configured) and the student at batch 1 and ``cfg.train.batch_size``.

    Input size is ``cfg.data.crop_size``; the output is the decode logits resized to the input, as
    deployed (see :class:`~segdistill.models.export.LogitsAtInputSize`).
    """
    if iters < 1 or warmup < 0:
        raise UserError(f"bench needs --iters >= 1 and --warmup >= 0, got {iters} and {warmup}")
    device = device or pick_device(cfg.train.device)
    n_classes = num_classes or num_classes_of(cfg)
    size = (int(cfg.data.crop_size[0]), int(cfg.data.crop_size[1]))
    batches = sorted({1, cfg.train.batch_size})
    models = [("student", cfg.student.model)] + ([("teacher", cfg.teacher.model)] if cfg.teacher else [])
    rows: list[InferRow] = []
    for role, name in models:
        torch.manual_seed(cfg.seed)
        model = build_segmentor(name, n_classes).to(device).eval()
        eager = LogitsAtInputSize(model, size).eval()
        fast = _FastInference(model, size)
        compiled: Callable[..., Any] | None = None
        compile_note = "skipped (--no-compile)"
        if compile:
            try:
                compiled = torch.compile(fast, dynamic=False)
                compile_note = ""
            except Exception as e:  # noqa: BLE001 - any failure means "n/a", with its reason
                compile_note = f"n/a: {_reason(e)}"
        for b in batches:
            x = torch.randn(b, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
            with torch.no_grad():
                for backend, net in (("eager fp32", eager), ("eager fast path (fold_bn+channels_last+bf16)", fast)):
                    t = _latencies(lambda: net(x), device, iters, warmup)  # noqa: B023 - called right here
                    rows.append(InferRow(name, role, backend, b, median(t) * 1e3))
                backend = "torch.compile (fast path)"
                if compiled is None:
                    rows.append(InferRow(name, role, backend, b, None, compile_note))
                else:
                    try:
                        start = time.perf_counter()
                        compiled(x)  # compiles for this shape
                        first = time.perf_counter() - start
                        t = _latencies(lambda: compiled(x), device, iters, warmup)  # noqa: B023
                        rows.append(InferRow(name, role, backend, b, median(t) * 1e3,
                                             f"first call (compile) {first:.0f} s"))
                    except Exception as e:  # noqa: BLE001
                        rows.append(InferRow(name, role, backend, b, None, f"n/a: {_reason(e)}"))
            backend = "onnxruntime fp32 (CPU)"
            if not onnx:
                rows.append(InferRow(name, role, backend, b, None, "skipped (--no-onnx)"))
                continue
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                rows.append(InferRow(name, role, backend, b, None, "n/a: onnxruntime is not installed"))
                continue
            try:
                t, diff = _onnx_latencies(model, x, iters, warmup)
                rows.append(InferRow(name, role, backend, b, median(t) * 1e3, f"max abs diff vs eager {diff:.1e}"))
            except Exception as e:  # noqa: BLE001
                rows.append(InferRow(name, role, backend, b, None, f"n/a: {_reason(e)}"))
            finally:
                model.to(device)
    return rows


