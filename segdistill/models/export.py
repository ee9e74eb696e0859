"""Deployable outputs of a trained student: a student-only ``.pth`` and an ONNX graph.

``export_student`` turns any checkpoint this project reads (our training checkpoints, mmrazor
distillation checkpoints, plain mmseg files) into ``{"meta": {...}, "state_dict": {...}}`` holding only
the student's weights under mmseg's key names. The meta holds only plain Python values, so the file
also loads with ``torch.load(weights_only=True)``, the safe loader mmengine uses on recent torch.

``export_onnx`` writes a fixed-size ONNX graph with this contract:

- input ``image``: float32 ``(1, 3, H, W)``, RGB, normalised as ``(pixel - MEAN_RGB) / STD_RGB`` on the
  0-255 scale (mean 123.675 116.28 103.53, std 58.395 57.12 57.375);
- output ``logits``: float32 ``(1, C, H, W)``, the decode head's logits resized bilinearly to the input
  size with the head's ``align_corners`` (``False`` except STDC's ``True``), exactly as
  :meth:`EncoderDecoder.inference`; ``argmax`` over dim 1 gives the class ids.

Resize images to ``(H, W)`` before feeding them (the graph does not accept other sizes).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import UserError
from ..fileio import atomic_path
from .builders import MODELS, build_segmentor
from .checkpoint import compare_state_dict, extract_state_dict, read_checkpoint, save_checkpoint
from .ops import resize
from .safe_load import ForeignObject
from .segmentor import MEAN_RGB, STD_RGB, EncoderDecoder

__all__ = ["ExportCheckError", "LogitsAtInputSize", "export_student", "export_onnx", "check_onnx",
           "ONNX_OPSET", "ONNX_RTOL"]

#: Opset of the dynamo exporter's translation tables (its lowest supported version).
ONNX_OPSET = 18
#: ONNX vs PyTorch bound: ``max|onnx - torch| <= ONNX_RTOL * max(1, max|torch|)``. Measured float32
#: differences are <= 1.2e-6 of the logit scale (PSPNet/DeepLabV3 R18 and R101, see docs/outputs.md).
ONNX_RTOL = 1e-5

_INSTALL_EXPORT = 'pip install "segdistill[export]"'


class ExportCheckError(UserError):
    """The exported ONNX graph does not compute what the PyTorch model computes."""


def _plain(value: Any) -> Any:
    """``value`` reduced to what the safe unpickler accepts (str/int/float/bool/None, lists, str-keyed dicts).

    Anything else (numpy arrays, custom classes in mmengine metas) is dropped rather than stored,
    because a single such object makes ``torch.load(weights_only=True)`` refuse the whole file. An
    OpenMMLab object read as a stand-in keeps its items when it has some (a ``ConfigDict``), else it is dropped.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, ForeignObject) and not value:
        return None
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return [v for v, raw in zip(items, value, strict=False) if v is not None or raw is None]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            pv = _plain(v)
            if isinstance(k, str) and (pv is not None or v is None):
                out[k] = pv
        return out
    if hasattr(value, "tolist") and not isinstance(value, torch.Tensor):  # numpy scalars and arrays
        return _plain(value.tolist())
    return None


def _build_on_meta(name: str, num_classes: int) -> EncoderDecoder:
    # The meta device allocates nothing, so checking a checkpoint against a ResNet-101 costs no memory.
    with torch.device("meta"):
        return build_segmentor(name, num_classes)


def _num_classes(sd: Mapping[str, torch.Tensor], source: str) -> int:
    weight = sd.get("decode_head.conv_seg.weight")
    if weight is None:
        raise UserError(f"{source} has no decode_head.conv_seg.weight, so it is not an mmseg/segdistill "
                        "segmentor checkpoint; check the file")
    return int(weight.shape[0])


def _identify(sd: Mapping[str, torch.Tensor], num_classes: int, source: str) -> str:
    """The one model of :data:`MODELS` whose keys and shapes the state dict matches exactly."""
    matches = [n for n in MODELS if not compare_state_dict(_build_on_meta(n, num_classes), sd)]
    if len(matches) != 1:
        what = "matches none" if not matches else f"matches {len(matches)} ({', '.join(matches)})"
        raise UserError(f"{source} {what} of the known models; pass the model name "
                        f"(the config's student.model), one of {', '.join(MODELS)}")
    return matches[0]


def export_student(
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    model_name: str | None = None,
    num_classes: int | None = None,
    *,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write the student of ``checkpoint`` alone to ``out_path`` as ``{"meta", "state_dict"}``.

    Args:
        checkpoint: a segdistill training checkpoint, an mmrazor distillation checkpoint (the student
            is ``architecture.*``), a plain mmseg checkpoint or a bare state dict; path or URL.
        out_path: the ``.pth`` to write (atomically); it must not be ``checkpoint`` itself.
        model_name: the student's name in :data:`MODELS`; ``None`` takes ``meta["model"]`` of our
            training checkpoints, else the one model whose keys and shapes fit.
        num_classes: expected number of classes; ``None`` reads it from ``decode_head.conv_seg``.
        classes, palette: class names and RGB colours stored as mmseg's ``meta["dataset_meta"]``
            (mmseg's ``init_model`` reads them); by default the source's ``dataset_meta`` is kept.

    The weights are checked to load strictly into ``build_segmentor(model_name, num_classes)``; teacher,
    connectors, optimizer and every other entry are left out. Returns ``out_path``.
    """
    out = Path(out_path)
    src = str(checkpoint)
    if not src.startswith(("http://", "https://")) and out.resolve() == Path(src).resolve():
        raise UserError(f"export output {out} is the input checkpoint itself; choose another --out path")
    raw = read_checkpoint(checkpoint)
    sd = {k: v.detach().clone() for k, v in extract_state_dict(raw, part="student").items()}
    source = f"checkpoint {checkpoint}"
    if not sd:
        raise UserError(f"{source} holds no weights; check the file")
    found_classes = _num_classes(sd, source)
    if num_classes is not None and num_classes != found_classes:
        raise UserError(f"{source} predicts {found_classes} classes, not {num_classes}; "
                        "fix num_classes in the config or pick the matching checkpoint")
    raw_meta = raw.get("meta")
    src_meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    if model_name is None:
        # Our trainer records the student's name; otherwise the weights' keys and shapes decide.
        named = src_meta.get("model")
        model_name = named if isinstance(named, str) and named in MODELS else _identify(sd, found_classes, source)
    mismatch = compare_state_dict(_build_on_meta(model_name, found_classes), sd)
    if mismatch:
        raise UserError(f"{source} does not fit {model_name}: {mismatch.summary()} "
                        "(wrong student.model in the config?)")
    meta: dict[str, Any] = {
        "model": model_name,
        "num_classes": found_classes,
        "exported_from": src,
        "segdistill_version": __version__,
    }
    kept = _plain(src_meta.get("dataset_meta")) if src_meta else None
    dataset_meta: dict[str, Any] = dict(kept) if isinstance(kept, dict) else {}
    for key, given in (("classes", classes), ("palette", palette)):
        if given is not None and len(given) != found_classes:
            raise UserError(f"{len(given)} {key} given for a model of {found_classes} classes; "
                            "pass one entry per class")
    if classes is not None:
        dataset_meta["classes"] = [str(c) for c in classes]
    if palette is not None:
        dataset_meta["palette"] = [[int(v) for v in c] for c in palette]
    if dataset_meta:
        meta["dataset_meta"] = dataset_meta
    if src_meta:
        meta["source_meta"] = _plain({k: v for k, v in src_meta.items() if k != "dataset_meta"})
    return save_checkpoint(out, sd, meta)


class LogitsAtInputSize(nn.Module):
    """The graph that is exported: normalised image -> decode logits resized to the (fixed) input size."""

    def __init__(self, model: EncoderDecoder, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.input_size = input_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return resize(self.model(image, with_aux=False)["decode"], self.input_size,
                      self.model.decode_head.align_corners)


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{what} needs the '{module}' package, which is not installed; run: {_INSTALL_EXPORT}")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_size(input_size: Sequence[int]) -> tuple[int, int]:
    size = tuple(int(s) for s in input_size)
    if len(size) != 2 or min(size) < 8:
        raise UserError(f"ONNX input size must be two numbers H W of at least 8 pixels, got {list(input_size)}")
    return size  # type: ignore[return-value]


def _pooling_problems(model: nn.Module, example: torch.Tensor) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``(input map size, pooled size)`` of every adaptive average pool whose output does not divide its input."""
    bad: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        size: Any = module.output_size
        out_hw = (size, size) if isinstance(size, int) else tuple(size)
        in_hw = tuple(inputs[0].shape[-2:])
        if any(o is not None and i % o for i, o in zip(in_hw, out_hw, strict=False)):
            bad.append((in_hw, out_hw))  # type: ignore[arg-type]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return bad


def _legacy_size_hint(model: nn.Module, size: tuple[int, int]) -> str:
    pools: list[Any] = [m.output_size for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    lcm = math.lcm(*[p if isinstance(p, int) else max(v for v in p if v is not None) for p in pools]) if pools else 1
    step = 8 * lcm  # stride-8 network: the pooled map is input / 8
    near = [max(step, round(s / step) * step) for s in size]
    return f"{near[0]} {near[1]} (multiples of {step})"


def check_onnx(path: str | os.PathLike, model: EncoderDecoder, input_size: Sequence[int],
               rtol: float = ONNX_RTOL, seed: int = 0) -> float:
    """Run the ONNX file with onnxruntime and PyTorch on one random input; return ``max|onnx - torch|``.

    Raises :class:`ExportCheckError` when the difference exceeds ``rtol * max(1, max|torch|)``.
    """
    _require("onnxruntime", "checking the ONNX export")
    import onnxruntime as ort

    size = _check_size(input_size)
    gen = torch.Generator().manual_seed(seed)
    # N(0, 1) is the range of a normalised image, so every layer sees realistic magnitudes.
    image = torch.randn(1, 3, *size, generator=gen)
    device = next(model.parameters()).device
    with _eval_mode(model), torch.no_grad():
        ref = LogitsAtInputSize(model, size).eval()(image.to(device)).float().cpu()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: image.numpy()})[0])
    if got.shape != ref.shape:
        raise ExportCheckError(f"ONNX file {path} outputs shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}; "
                               "report this as a bug")
    diff = float((got - ref).abs().max())
    bound = rtol * max(1.0, float(ref.abs().max()))
    if not diff <= bound:
        raise ExportCheckError(f"ONNX file {path} differs from PyTorch by {diff:.3g} (bound {bound:.3g}); "
                               "report this as a bug, or export with check=False to keep it anyway")
    return diff


def export_onnx(
    model: EncoderDecoder,
    out_path: str | os.PathLike,
    input_size: Sequence[int] = (512, 1024),
    *,
    opset: int = ONNX_OPSET,
    check: bool = True,
    dynamo: bool = True,
    rtol: float = ONNX_RTOL,
) -> Path:
    """Export ``model`` to ONNX for a fixed ``(H, W)`` input (contract in this module's docstring).

    Args:
        model: the segmentor (exported in eval mode; its mode is restored afterwards).
        out_path: the ``.onnx`` file, written atomically as one self-contained file.
        input_size: ``(H, W)`` of the normalised input image, at least 8 each.
        opset: ONNX opset version.
        check: run the file with onnxruntime (when installed) and compare with PyTorch (see
            :func:`check_onnx`); on failure nothing is written.
        dynamo: use torch's ``torch.export``-based exporter (needs ``onnxscript``). It handles every
            input size. ``False`` uses the deprecated TorchScript exporter, which can only export
            adaptive average pooling whose output divides its input: for PSPNet (pools 1, 2, 3, 6) the
            stride-8 map must be divisible by 6, i.e. H and W multiples of 48.
        rtol: bound of the check, relative to the logit scale.

    Returns ``out_path``.
    """
    _require("onnx", "ONNX export")
    if dynamo:
        _require("onnxscript", "ONNX export")
    import onnx

    out = Path(out_path)
    size = _check_size(input_size)
    device = next(model.parameters()).device
    example = torch.zeros(1, 3, *size, device=device)
    with _eval_mode(model):
        wrapper = LogitsAtInputSize(model, size).eval()
        if not dynamo:
            bad = _pooling_problems(model, example)
            if bad:
                (ih, iw), (oh, ow) = bad[0]
                raise UserError(
                    f"input size {size[0]}x{size[1]} makes the pooled map {ih}x{iw}, which the legacy exporter cannot "
                    f"pool to {oh}x{ow}; use the default exporter (dynamo) or --size {_legacy_size_hint(model, size)}")
        with atomic_path(out) as tmp, warnings.catch_warnings():
            # torch's exporters warn about their own internals (deprecations), nothing the user can act on.
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            kwargs: dict[str, Any] = {"external_data": False, "verbose": False} if dynamo else {}
            torch.onnx.export(wrapper, (example,), str(tmp), dynamo=dynamo, opset_version=opset,
                              input_names=["image"], output_names=["logits"], **kwargs)
            proto = onnx.load(str(tmp))
            meta = {
                "segdistill_version": __version__,
                "input": f"image: float32 (1, 3, {size[0]}, {size[1]}) RGB, (pixel - mean_rgb) / std_rgb on 0-255",
                "output": f"logits: float32 (1, {model.num_classes}, {size[0]}, {size[1]}); argmax over dim 1",
                "mean_rgb": " ".join(map(str, MEAN_RGB)),
                "std_rgb": " ".join(map(str, STD_RGB)),
            }
            onnx.helper.set_model_props(proto, meta)
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
            if check and importlib.util.find_spec("onnxruntime") is not None:
                check_onnx(tmp, model, size, rtol=rtol)
    return out
