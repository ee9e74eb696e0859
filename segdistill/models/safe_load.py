"""Read checkpoints that other tools wrote, without their libraries and without running their code.

A checkpoint is a pickle, and a pickle names the Python callables that rebuild its objects; that is how a
malicious file runs code when it is loaded. mmengine's Runner, which wrote every mmseg 1.x and mmrazor 1.x
checkpoint, pickles some of its own objects beside the weights (the message hub, its ``HistoryBuffer``\\ s
with numpy arrays inside, ``ConfigDict``\\ s); mmcv 1.x runners put numpy scalars in the meta. torch's
``weights_only`` loader refuses such files, and the plain unpickler needs mmengine installed and runs
whatever the file names.

:func:`load_untrusted` unpickles with an allowlist instead. What the file may name:

- **trusted, rebuilt for real**: torch's tensor, parameter and storage rebuilders, ``torch.Size``,
  devices, dtypes, layouts and memory formats; numpy arrays, dtypes and scalars (through numpy's own
  constructors, which build data and call nothing else); ``OrderedDict``, ``defaultdict``, the built-in
  containers and scalar types, ``pathlib`` paths, ``datetime`` values, and the two helpers pickle
  protocol 2 itself uses (``_codecs.encode``, ``copyreg._reconstructor``).
- **inert stand-ins**: any class or function of an OpenMMLab package (:data:`OPENMMLAB_PACKAGES`:
  mmengine, mmcv, mmseg, mmrazor, ...). It becomes a :class:`ForeignObject` subclass of the same name
  that keeps the arguments and state the pickle hands it and runs none of the library's code
  (``builtins.getattr`` is allowed on these stand-ins only, and gives another stand-in). The
  library is never imported, even where it is installed. Nothing segdistill uses is read from these
  objects: it needs the tensors and the plain metadata (``meta["dataset_meta"]``) only.
- **refused**: everything else, e.g. ``builtins.eval``, ``os.system``, a ``torch.nn.Module`` pickled
  whole, or a class of any other library. Loading stops with :class:`UntrustedGlobal`, naming it,
  before anything is called.

What this does not protect against: a file can still make the loader allocate a lot of memory (as
``weights_only`` can), and stand-ins reproduce none of the original objects' behaviour.
"""

from __future__ import annotations

import builtins
import collections
import copyreg
import datetime
import importlib
import os
import pathlib
import pickle
import types
import warnings
from typing import Any, BinaryIO

import torch

__all__ = ["OPENMMLAB_PACKAGES", "ForeignObject", "UntrustedGlobal", "load_untrusted"]

#: Top-level packages whose pickled objects are read as inert stand-ins.
OPENMMLAB_PACKAGES = frozenset({
    "mmengine", "mmcv", "mmseg", "mmrazor", "mmdet", "mmdet3d", "mmcls", "mmpretrain", "mmpose", "mmaction",
    "mmocr", "mmyolo", "mmagic", "mmedit", "mmtrack", "mmrotate", "mmselfsup", "mmfewshot", "mmflow",
    "mmgen", "mmhuman3d", "mmdeploy",
})

_BUILTINS = ("set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "bool", "str", "bytes",
             "bytearray", "slice", "range", "object")
_TRUSTED: dict[tuple[str, str], Any] = {
    **{("builtins", n): getattr(builtins, n) for n in _BUILTINS},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,  # type: ignore[attr-defined]
    ("_codecs", "encode"): __import__("_codecs").encode,  # how protocol 2 stores bytes
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,  # type: ignore[attr-defined]
    **{("pathlib", n): getattr(pathlib, n) for n in ("Path", "PosixPath", "WindowsPath", "PurePath",
                                                     "PurePosixPath", "PureWindowsPath")},
    **{("datetime", n): getattr(datetime, n) for n in ("datetime", "date", "time", "timedelta", "timezone")},
}
# torch._utils' tensor rebuilders that torch's own weights_only loader allows.
_TORCH_REBUILDERS = frozenset({
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor",
    "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_device_tensor_from_numpy",
})
# Python 2 names that pickle protocol 2 still writes.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
# numpy 2 writes numpy._core, numpy 1 numpy.core; either reads with whichever numpy is installed.
_NUMPY_NAMES = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
}


class UntrustedGlobal(pickle.UnpicklingError):
    """The file names a callable outside the allowlist; nothing of it was called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class ForeignObject(dict):
    """An object of an OpenMMLab library, read without the library: it keeps what the pickle gave it.

    ``args``/``kwargs`` hold what the pickle called it with, ``state`` what it set as its state, and
    ``items_`` what it appended. It is a dict because some of these classes are (``ConfigDict``), so the
    pickle's items land in it. No method of the original class exists, and none of its code runs.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.__dict__.update(args=args, kwargs=kwargs)

    def __setstate__(self, state: Any) -> None:
        if state is not self:  # addict's ConfigDict gives itself as its state
            self.__dict__["state"] = state

    def append(self, item: Any) -> None:
        self.__dict__.setdefault("items_", []).append(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)

    def __repr__(self) -> str:
        return f"<stand-in for {type(self).__module__}.{type(self).__qualname__}: {dict.__repr__(self)}>"


_STAND_INS: dict[tuple[str, str], type[ForeignObject]] = {}


def _stand_in(module: str, name: str) -> type[ForeignObject]:
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = types.new_class(name.rsplit(".", 1)[-1], (ForeignObject,),
                                          exec_body=lambda ns: ns.update(__module__=module, __qualname__=name))
    return _STAND_INS[key]


def _torch_global(name: str) -> Any:
    """``torch.<name>`` when it is a dtype, layout, memory format or storage class, else None."""
    obj = getattr(torch, name, None)
    if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
        return obj
    if isinstance(obj, type) and name.endswith("Storage"):
        return obj
    return None


def _numpy_global(module: str, name: str) -> Any:
    generic = module.replace("numpy._core", "numpy.core")
    if (generic, name) not in _NUMPY_NAMES:
        return None
    for candidate in (module, module.replace("numpy.core", "numpy._core"), generic):
        try:
            with warnings.catch_warnings():  # numpy 2 warns that numpy.core is deprecated
                warnings.simplefilter("ignore")
                return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    return None


def _stand_in_getattr(obj: Any, name: str) -> Any:
    """``getattr`` for pickles, on stand-ins only: an attribute of an OpenMMLab class is another stand-in.

    mmengine's ``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, "min")``
    (seen in checkpoints written by mmengine 0.10.7, whose message hub holds such buffers). On anything
    else (``getattr(os, "system")``) it refuses, calling nothing.
    """
    owner = obj if isinstance(obj, type) else type(obj)
    if not issubclass(owner, ForeignObject) or not isinstance(name, str):
        raise UntrustedGlobal("builtins", "getattr")
    return _stand_in(owner.__module__, f"{owner.__qualname__}.{name}")


def resolve_global(module: str, name: str) -> Any:
    """What the allowlist gives for the global ``module.name``; raises :class:`UntrustedGlobal` otherwise."""
    module = _PY2_MODULES.get(module, module)
    if (module, name) == ("builtins", "getattr"):
        return _stand_in_getattr
    if (module, name) in _TRUSTED:
        return _TRUSTED[(module, name)]
    if module.split(".", 1)[0] in OPENMMLAB_PACKAGES:
        return _stand_in(module, name)
    if (module == "torch._utils" and name in _TORCH_REBUILDERS) or (module, name) == ("torch.serialization",
                                                                                       "_get_layout"):
        return getattr(importlib.import_module(module), name)
    if module == "torch" and (found := _torch_global(name)) is not None:
        return found
    if module in ("torch.storage",) and name in ("UntypedStorage", "TypedStorage"):
        return getattr(torch.storage, name)
    if module.startswith("numpy") and (found := _numpy_global(module, name)) is not None:
        return found
    raise UntrustedGlobal(module, name)


class RestrictedUnpickler(pickle.Unpickler):
    """:class:`pickle.Unpickler` whose globals come from :func:`resolve_global` only."""

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name)


def _restricted_load(file: BinaryIO, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


#: What ``torch.load(pickle_module=...)`` needs of a pickle module.
PICKLE_MODULE = types.SimpleNamespace(__name__="segdistill.models.safe_load", Unpickler=RestrictedUnpickler,
                                      load=_restricted_load)


def load_untrusted(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path)`` through the allowlist of this module's docstring (zip and legacy formats).

    Raises :class:`UntrustedGlobal` when the file names anything else, and whatever ``torch.load``
    raises for a truncated or corrupt file.
    """
    return torch.load(path, map_location=map_location, weights_only=False, pickle_module=PICKLE_MODULE)
