"""mmseg-compatible checkpoints in and out, from files or http(s) URLs with a local cache.

Read: a bare state dict, mmseg/mmengine's ``{"meta", "state_dict", ...}`` (without mmengine or mmcv installed:
see :mod:`segdistill.models.safe_load`), DDP's ``module.`` prefixes,
mmrazor distillation checkpoints (the student lives under ``architecture.``, the teacher under
``teacher.``), and ImageNet backbone checkpoints (``open-mmlab://resnetXX_v1c``, ``mmcls://mobilenet_v2``)
into a backbone.
Write: ``{"meta": ..., "state_dict": ...}`` with mmseg's key names, which mmseg's loader accepts.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UserError
from ..fileio import atomic_path
from .safe_load import UntrustedGlobal, load_untrusted

# torch.hub's convention, used by mmseg's released files: "<name>-<sha256 prefix>.pth".
_HASH_RE = re.compile(r"-([a-f0-9]{8,})\.(?:pth|pt)$")


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept: ``$SEGDISTILL_CACHE`` or ``~/.cache/segdistill``."""
    return Path(os.environ.get("SEGDISTILL_CACHE", Path.home() / ".cache" / "segdistill")) / "checkpoints"


def download(url: str, dest_dir: Path | None = None, progress: bool = True) -> Path:
    """Download ``url`` into the cache once; later calls return the cached file.

    When the file name carries a sha256 prefix (``...-e1e1100f.pth``) the download is verified against
    it, so a truncated or tampered file is never cached.
    """
    dest_dir = dest_dir or cache_dir()
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    dest = dest_dir / name
    if dest.exists():
        return dest
    expected = _HASH_RE.search(name)
    sha = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(dest) as tmp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                sha.update(chunk)
                done += len(chunk)
                if progress and total:
                    print(f"\rdownloading {name}: {100 * done // total}%", end="", file=sys.stderr)
            if progress and total:
                print(file=sys.stderr)
            if expected and not sha.hexdigest().startswith(expected.group(1)):
                raise UserError(f"download of {url} is corrupt: sha256 {sha.hexdigest()[:12]} does not start "
                                f"with {expected.group(1)}; delete {dest_dir} entries and retry")
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"cannot download {url}: {e}; check the URL or pass a local file instead") from e
    return dest


def read_pickled(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load`` of ``path`` through :func:`~segdistill.models.safe_load.load_untrusted`, with one-line errors.

    mmseg/mmrazor files written by mmengine or mmcv load without those libraries (their objects become
    inert stand-ins, see :mod:`segdistill.models.safe_load`); a file that names any other code is refused.
    """
    try:
        return load_untrusted(path)
    except UntrustedGlobal as e:
        raise UserError(f"{what} {path} needs {e.qualified} to load, which segdistill does not run (it reads tensors, "
                        "plain Python data, numpy arrays, and OpenMMLab objects as inert stand-ins); if you trust the "
                        "file, load it with that library and re-save only its state_dict with torch.save") from None
    except Exception as e:  # noqa: BLE001 - any other unpickling failure means the same thing to the user
        detail = (str(e).strip().splitlines() or [""])[0]  # torch's messages can span lines; the error is one
        raise UserError(f"{what} {path} is unreadable ({type(e).__name__}: {detail}); "
                        "it may be truncated: re-download or re-save it") from e


def read_checkpoint(path_or_url: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file (or URL) to CPU and return the raw object as a dict.

    Besides our own files this reads mmseg/mmrazor checkpoints written by mmengine's Runner or mmcv's,
    without mmengine or mmcv installed (see :func:`read_pickled`).
    """
    src = str(path_or_url)
    path = download(src) if src.startswith(("http://", "https://")) else Path(src)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the path (or give an http(s) URL)")
    obj = read_pickled(path, "checkpoint")
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def extract_state_dict(obj: Mapping[str, Any], part: str = "student") -> dict[str, torch.Tensor]:
    """The model's state dict inside any of the supported checkpoint layouts.

    ``part`` chooses which network of an mmrazor distillation checkpoint: ``"student"``
    (``architecture.*``) or ``"teacher"`` (``teacher.*``).
    """
    sd: Mapping[str, Any] = obj
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            sd = obj[key]
            break
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    prefix = {"student": "architecture.", "teacher": "teacher."}[part]
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    elif part == "teacher" and any(k.startswith("architecture.") for k in sd):
        raise UserError("this mmrazor checkpoint holds no teacher weights (no 'teacher.' keys)")
    return dict(sd)


@dataclass
class Mismatch:
    """How a state dict differs from a model's."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape)

    def summary(self, limit: int = 4) -> str:
        """One line listing the first ``limit`` keys of each kind, with counts."""
        def cut(items: list[str]) -> str:
            more = f", ... {len(items) - limit} more" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing [{cut(self.missing)}]")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected [{cut(self.unexpected)}]")
        if self.shape:
            parts.append(f"{len(self.shape)} of another shape "
                         f"[{cut([f'{k}: checkpoint {tuple(a)} vs model {tuple(b)}' for k, a, b in self.shape])}]")
        return "; ".join(parts)


def compare_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> Mismatch:
    """Missing, unexpected and shape-mismatched keys of ``sd`` against ``model``."""
    own = model.state_dict()
    return Mismatch(
        missing=[k for k in own if k not in sd],
        unexpected=[k for k in sd if k not in own],
        shape=[(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items()
               if k in sd and tuple(sd[k].shape) != tuple(v.shape)],
    )


class _SkipInitOnMeta(TorchFunctionMode):
    """Skips in-place functions (``normal_``, ``nn.init.kaiming_normal_``, ...) on meta tensors.

    Building a model on the meta device then skips its random initialisation, which is meaningless there
    and slow (it runs through torch's Python reference kernels and imports torch._dynamo). Shapes come
    from the constructors, so the state dict's names and shapes are unchanged.
    """

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if first is not None and first.is_meta:
                return first
        return func(*args, **kwargs)


@functools.cache
def _zoo_signature(name: str) -> dict[str, tuple[int, ...]]:
    """Model ``name``'s state-dict shapes, built on the meta device (no memory, a fraction of a second)."""
    from .builders import MODELS  # late: checkpoint loading must not need the model zoo

    with torch.device("meta"), _SkipInitOnMeta():
        return _signature(MODELS[name](19).state_dict())


def _signature(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    # The class-dependent conv_seg layers are left out: the number of classes is reported separately.
    return {k: tuple(v.shape) for k, v in sd.items() if "conv_seg." not in k}


def identify_weights(sd: Mapping[str, torch.Tensor], hint: str = "", search_all: bool = True) -> str | None:
    """Which model of ``MODELS`` the segmentor weights ``sd`` are, as ``"name (N classes)"``; None for none.

    The models whose name starts ``hint`` (a file name: mmseg's releases are named after the model, e.g.
    ``segformer_mit-b0_8x1_1024x1024_160k_cityscapes_...pth``) are tried first, then, with ``search_all``,
    the rest of the zoo. Each candidate is built on the meta device: the whole zoo takes seconds on a
    small CPU, so this is for error messages only.
    """
    from .builders import MODELS

    if "decode_head.conv_seg.weight" not in sd:
        return None
    hinted = sorted((n for n in MODELS if hint.startswith(n)), key=len, reverse=True)
    candidates = [*hinted, *(n for n in MODELS if n not in hinted)] if search_all else hinted
    sig = _signature(sd)
    name = next((n for n in candidates if _zoo_signature(n) == sig), None)
    return None if name is None else f"{name} ({sd['decode_head.conv_seg.weight'].shape[0]} classes)"


def _what_and_expected(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, mismatch: Mismatch) -> str:
    """``"it holds X weights, the model is Y; "`` for a model built by ``build_segmentor``; else nothing.

    The weights are looked up in the whole zoo only when most of the model's keys are missing (another
    architecture); a near miss (a few keys, the number of classes) keeps the error instant.
    """
    own = model.state_dict()
    name = getattr(model, "zoo_name", None)
    if name is None or "decode_head.conv_seg.weight" not in own:
        return ""
    expected = f"{name} ({own['decode_head.conv_seg.weight'].shape[0]} classes)"
    search_all = len(mismatch.missing) > len(own) // 2
    found = identify_weights(sd, hint=re.split(r"[\s/\\]", source)[-1], search_all=search_all)
    if found:
        return f"it holds {found} weights, the model is {expected}; "
    if search_all:
        return f"it holds weights of no model segdistill builds, the model is {expected}; "
    return f"the model is {expected}; "


def load_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], strict: bool = True,
                    source: str = "state dict") -> Mismatch:
    """Copy ``sd`` into ``model``; with ``strict`` any mismatch is a :class:`UserError` naming the keys.

    Without ``strict`` the matching keys are loaded, shape mismatches are skipped, and the mismatch
    is returned for the caller to report.
    """
    mismatch = compare_state_dict(model, sd)
    if strict and mismatch:
        what = _what_and_expected(model, sd, source, mismatch)
        raise UserError(f"{source} does not fit the model: {what}{mismatch.summary()} "
                        "(wrong model name or num_classes? load with strict=False to skip these)")
    bad = {k for k, _, _ in mismatch.shape}
    own = model.state_dict()
    # Copy under no_grad in the model's dtype: a float16-stored checkpoint lands exactly in float32.
    with torch.no_grad():
        for k, v in sd.items():
            if k in own and k not in bad:
                own[k].copy_(v)
    return mismatch


def load_checkpoint(model: nn.Module, path_or_url: str | os.PathLike, strict: bool = True,
                    part: str = "student") -> Mismatch:
    """Load an mmseg / mmrazor / segdistill checkpoint (file or URL) into ``model``."""
    sd = extract_state_dict(read_checkpoint(path_or_url), part=part)
    return load_state_dict(model, sd, strict=strict, source=f"checkpoint {path_or_url}")


def load_backbone_checkpoint(backbone: nn.Module, path_or_url: str | os.PathLike) -> Mismatch:
    """Load ImageNet weights into a backbone: mmseg's ``resnetXX_v1c`` or mmcls's ``mobilenet_v2``.

    Keys may be plain (``open-mmlab://resnet18_v1c``) or ``backbone.``-prefixed (mmcls's classifier
    checkpoints such as ``mmcls://mobilenet_v2``, i.e. ``mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth``;
    a full segmentor checkpoint too): with the prefix only the ``backbone.*`` part is used, which
    leaves out mmcls's ``head.*``. The classifier ``fc.*`` and the layers that only feed the ImageNet
    classifier (the backbone's ``IMAGENET_ONLY_PREFIXES``, e.g. MobileNetV2's 1280-channel ``conv2``)
    are dropped. Everything else must match: a missing, unexpected or wrongly shaped key is a
    :class:`UserError` that lists them in one line.

    A backbone that wraps an ImageNet network names it in ``PRETRAINED_CHILD`` (STDC's context path:
    ``backbone``, the STDCNet). Weights keyed for that child alone (mmseg's converted
    ``stdc1_20220308-5368626c.pth``: ``stages.0.conv.weight``, ``stages.2.0.layers.0.conv.weight``, ...)
    load into it, strictly, and the wrapper's own layers keep their init, as mmseg's
    ``backbone_cfg.init_cfg`` does; a full segmentor checkpoint's ``backbone.*`` part loads into the whole.
    """
    sd = extract_state_dict(read_checkpoint(path_or_url))
    if any(k.startswith("backbone.") for k in sd):
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    child = getattr(backbone, "PRETRAINED_CHILD", None)
    if child is not None and not any(k.startswith(f"{child}.") for k in sd):
        backbone = getattr(backbone, child)
    dropped = ("fc.", *getattr(backbone, "IMAGENET_ONLY_PREFIXES", ()))
    sd = {k: v for k, v in sd.items() if not k.startswith(dropped)}
    return load_state_dict(backbone, sd, strict=True, source=f"backbone checkpoint {path_or_url}")


def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any] | None = None, **extra: Any) -> Path:
    """Write ``{"meta", "state_dict", **extra}`` atomically; mmseg's ``load_checkpoint`` reads it."""
    path = Path(path)
    obj = {"meta": dict(meta or {}), "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **extra}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path

