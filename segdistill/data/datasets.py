"""Segmentation datasets: Cityscapes, CamVid, a plain folder layout, and the torch wrappers around them.

A :class:`SegDataset` only lists samples and loads them as numpy arrays (``RGB uint8 H x W x 3``,
``uint8 H x W`` label with ``ignore_index`` 255); augmentation lives in ``transforms`` and the torch
side in :class:`TrainSet` / :class:`EvalSet`. Images decode with OpenCV and labels with Pillow (so
palette PNGs keep their indices), like mmseg's ``LoadImageFromFile`` / ``LoadAnnotations``.

Every problem a user can fix (wrong layout, a missing or broken file, a label value the class list
does not know) is a one-line :class:`~segdistill.errors.UserError` naming the file.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from PIL import Image

try:  # optional (`pip install segdistill[fastpng]`): libspng decodes PNGs about 25 % faster than OpenCV's libpng
    import pyspng
except ImportError:  # pragma: no cover - exercised where pyspng is not installed
    pyspng = None

from ..config import load_yaml, read_text_file
from ..constants import IGNORE_INDEX
from ..errors import UserError
from .cache import DecodedCache
from .transforms import TrainSample

__all__ = [
    "IGNORE_INDEX",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "IMAGE_EXTENSIONS",
    "SegDataset",
    "CityscapesDataset",
    "CamVidDataset",
    "FolderDataset",
    "DATASET_KINDS",
    "build_dataset",
    "read_class_file",
    "png_decoder",
    "read_image",
    "read_label_array",
    "TrainSet",
    "EvalSet",
]


CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# The SegNet CamVid release (../shared/data/camvid/README.md); value 11 ("unlabelled") is ignored.
CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
CAMVID_UNLABELLED = 11

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff")

# ---------------------------------------------------------------------------------------------
# Decoding


#: OpenCV >= 4.10 decodes to RGB directly; older versions decode BGR and convert.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _read_bytes(path: Path, what: str, fix: str) -> bytes:
    """The bytes of ``path``; a one-line :class:`UserError` naming the ``what`` when unreadable or empty."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {_first_line(err)}; "
                        "check that the file exists and is readable") from None
    if not data:
        raise UserError(f"{what} {path} is empty (0 bytes); {fix}")
    return data


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_header(data: bytes) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` of a non-interlaced PNG, else None (not a PNG, or interlaced)."""
    if len(data) <= 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or data[28] != 0:
        return None
    return data[24], data[25]


def _png_intact(data: bytes) -> bool:
    """Every chunk of ``data`` (a PNG) is complete, its CRC is right, and IEND is there.

    libpng (OpenCV) stops at a bad CRC or a cut-off file; pyspng tells libspng to use the data
    whatever its CRC says. Checking the CRCs here (about 1 ms for a 2.3 MB frame) keeps a damaged file
    from decoding to wrong pixels: it goes to OpenCV instead, which raises the usual one-line error.
    """
    view = memoryview(data)
    pos, size = 8, len(data)
    while pos + 12 <= size:
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length
        if end > size:
            return False
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4:end - 4]) != crc:
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return True
        pos = end
    return False


def _decode_png_fast(data: bytes, colour_type: int) -> np.ndarray | None:
    """libspng's decode of ``data``, an 8-bit, non-interlaced PNG of ``colour_type`` (0 grey, 2 RGB) as
    :func:`_png_header` says (the caller checks), else None.

    PNG is lossless, so every correct decoder gives the same pixels (tested against OpenCV on every PNG
    flavour). Anything else (no pyspng, a damaged file, a decoder error) returns None and the caller
    decodes with OpenCV/Pillow as before.
    """
    if pyspng is None or not _png_intact(data):
        return None
    try:
        array = pyspng.load(data)
    except Exception:  # noqa: BLE001 - any decoder failure falls back to OpenCV, which names the problem
        return None
    expected_ndim = 2 if colour_type == 0 else 3
    if array.dtype != np.uint8 or array.ndim != expected_ndim or (expected_ndim == 3 and array.shape[2] != 3):
        return None
    return array


def png_decoder() -> str:
    """Which library decodes PNG images and labels here, for benchmark reports."""
    if pyspng is None:
        return f"OpenCV {cv2.__version__} (install segdistill[fastpng] for libspng)"
    version = getattr(pyspng, "__version__", "?")
    return f"libspng (pyspng {version}) for 8-bit RGB/grey PNGs, else OpenCV {cv2.__version__}"


@contextlib.contextmanager
def _quiet_opencv(level: int) -> Iterator[None]:
    """OpenCV's log level set to ``level`` for a decode: its own WARN lines would sit beside our one-line errors."""
    before = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(level)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(before)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` into an RGB ``uint8`` ``H x W x 3`` array, the pixels of mmseg's ``cv2.imread``.

    OpenCV decodes (grey images get 3 channels), except 8-bit RGB non-interlaced PNGs when pyspng is
    installed: libspng decodes those to the same pixels in about 75 % of the CPU time.

    Raises :class:`UserError` naming the file when it cannot be read, is not an image or is truncated.
    """
    path = Path(path)
    data = _read_bytes(path, "image", "re-copy or re-export the file")
    fast = _decode_png_fast(data, colour_type=2) if _png_header(data) == (8, 2) else None
    if fast is not None:
        return fast
    # libjpeg may hand back a grey-filled image for a cut-off JPEG with only a warning; the end
    # marker FFD9 cannot occur inside entropy-coded data, so its absence near the end is proof.
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:]:
        raise UserError(f"image {path} is truncated (JPEG without its end marker); re-copy or re-export the file")
    # OpenCV prints its own WARN line for a damaged file; our one-line error below replaces it.
    with _quiet_opencv(cv2.utils.logging.LOG_LEVEL_ERROR):
        if _IMREAD_RGB is not None:
            # Straight to RGB: the same pixels as IMREAD_COLOR + BGR2RGB (tested), without the extra pass.
            rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_RGB)
        else:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            rgb = None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb is None:
        raise UserError(f"image {path} is unreadable or truncated (OpenCV cannot decode it); "
                        "re-copy or re-export the file")
    return rgb


def read_label_array(path: str | os.PathLike) -> np.ndarray:
    """Decode a label image as stored: palette PNGs give their indices, RGB masks ``H x W x 3``.

    Pillow decodes every format, like mmseg's ``LoadAnnotations``. An 8-bit greyscale PNG (Cityscapes'
    labelTrainIds) is a lossless array of indices that libspng (with pyspng installed) or OpenCV
    decodes to the very same values faster, so they take those; anything they do not return as one
    ``H x W`` uint8 plane (a damaged file, say) goes to Pillow, which decodes it or raises the error.
    """
    path = Path(path)
    data = _read_bytes(path, "label", "re-copy or re-create the file")
    if _png_header(data) == (8, 0):
        fast = _decode_png_fast(data, colour_type=0)
        if fast is not None:
            return fast
        with _quiet_opencv(cv2.utils.logging.LOG_LEVEL_SILENT):
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is not None and array.ndim == 2 and array.dtype == np.uint8:
            return array
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"label {path} is unreadable or truncated ({_first_line(err)}); "
                        "re-copy or re-create the file") from None


def _index_lut(num_classes: int, extra: dict[int, int] | None = None) -> np.ndarray:
    """A 256-entry table raw value -> train id, -1 for values that are an error."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for raw, mapped in (extra or {}).items():
        lut[raw] = mapped
    return lut


def _format_values(values: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ---------------------------------------------------------------------------------------------
# Base class


class SegDataset:
    """A list of (image, label) files with class names and colours; :meth:`load` gives numpy arrays.

    Subclasses find the files; this class decodes and checks them. ``names[i]`` is the sample id
    (a relative path stem, unique within the dataset), also used to name prediction files.
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        root: Path,
        split: str | None,
        classes: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        names: Sequence[str],
        image_paths: Sequence[Path],
        label_paths: Sequence[Path],
        label_lut: np.ndarray | None = None,
    ) -> None:
        self.root = root
        self.split = split
        self.classes: tuple[str, ...] = tuple(classes)
        self.palette: tuple[tuple[int, int, int], ...] = tuple(tuple(int(c) for c in p) for p in palette)  # type: ignore[misc]
        self.names: list[str] = list(names)
        self._image_paths = list(image_paths)
        self._label_paths = list(label_paths)
        self._lut = _index_lut(len(self.classes)) if label_lut is None else label_lut
        # Skip the table lookup when it is the identity on every value it accepts (Cityscapes).
        valid = np.nonzero(self._lut >= 0)[0]
        self._lut_is_identity = bool(np.all(self._lut[valid] == valid))
        self._lut_u8 = np.where(self._lut >= 0, self._lut, IGNORE_INDEX).astype(np.uint8)
        self._bad_u8 = (self._lut < 0).astype(np.uint8)  # 1 for the raw values that are an error
        self.cache: DecodedCache | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes (label values ``0 .. num_classes-1``; ``ignore_index`` is not one)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, i: int) -> Path:
        """Path of the ``i``-th image."""
        return self._image_paths[i]

    def label_path(self, i: int) -> Path:
        """Path of the ``i``-th label file."""
        return self._label_paths[i]

    def subset(self, indices: Sequence[int]) -> SegDataset:
        """A copy holding only the samples ``indices`` (in that order); classes, decoding and cache are shared."""
        chosen = [int(i) for i in indices]
        part = copy.copy(self)
        part.names = [self.names[i] for i in chosen]
        part._image_paths = [self._image_paths[i] for i in chosen]
        part._label_paths = [self._label_paths[i] for i in chosen]
        return part

    def use_cache(self, folder: str | os.PathLike | None) -> None:
        """Read samples from the decoded cache in ``folder`` (``None``: decode every time).

        Entries are made by :func:`~segdistill.data.cache.build_decoded_cache`; a missing, stale or
        damaged entry is decoded from its file instead, with a one-line
        :class:`~segdistill.data.cache.CacheWarning`.
        """
        self.cache = None if folder is None else DecodedCache(folder, self.root)

    def image_key(self) -> str:
        """What a cached image depends on besides its file: the decoder and its colour order."""
        return "cv2-rgb"

    def label_key(self) -> str:
        """What a cached label depends on besides its file: the value mapping (a class list change invalidates it)."""
        return type(self).__name__ + "-" + hashlib.sha1(self._lut.tobytes()).hexdigest()[:16]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Return sample ``i`` as ``(RGB uint8 H x W x 3, uint8 H x W label with ignore 255)``, checked.

        With a cache (:meth:`use_cache`) the arrays are read-only views of the cache files.
        """
        if self.cache is None:
            return self.decode(i)
        image = self._from_cache(self._image_paths[i], "image", self.image_key(), read_image)
        label = self._from_cache(self._label_paths[i], "label", self.label_key(), self._decode_label)
        self._check_sizes(i, image, label)
        return image, label

    def decode(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` decoded from its files (never from the cache), checked."""
        image = read_image(self._image_paths[i])
        label = self._decode_label(self._label_paths[i])
        self._check_sizes(i, image, label)
        return image, label

    def _from_cache(self, path: Path, kind: str, key: str, decode: Callable[[Path], np.ndarray]) -> np.ndarray:
        assert self.cache is not None
        array, problem = self.cache.read(path, kind, key)
        if array is None:
            self.cache.warn(path, problem or "unusable")
            array = decode(path)
        return array

    def _check_sizes(self, i: int, image: np.ndarray, label: np.ndarray) -> None:
        if image.shape[:2] != label.shape:
            raise UserError(
                f"label {self._label_paths[i]} is {label.shape[1]}x{label.shape[0]} but its image "
                f"{self._image_paths[i].name} is {image.shape[1]}x{image.shape[0]} (WxH); they must be the same size"
            )

    def _decode_label(self, path: Path) -> np.ndarray:
        """Decode an index label and map it to train ids, rejecting values outside the class list."""
        raw = read_label_array(path)
        if raw.ndim == 3:
            raise UserError(
                f"label {path} is a colour image; {type(self).__name__} needs single-channel index PNGs "
                "(one class id per pixel)"
            )
        return self._map_indices(raw, path)

    def _map_indices(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.dtype.kind == "f":
            # A float image (TIFF/PFM mode F): class ids must be whole numbers, never truncated silently.
            fractional = raw[~np.isfinite(raw) | (raw != np.round(raw))]
            if fractional.size:
                raise UserError(f"label {path} is a floating-point image with non-integer values (e.g. "
                                f"{float(fractional.flat[0])!r}); labels must hold integer class ids: save it as an "
                                "8-bit index PNG (mode L or P)")
            raw = raw.astype(np.int64)
        elif raw.dtype.kind not in "biu":
            raise UserError(f"label {path} holds {raw.dtype} values; labels must hold integer class ids: save it as "
                            "an 8-bit index PNG (mode L or P)")
        if raw.dtype != np.uint8:
            if raw.size and (raw.min() < 0 or raw.max() > 255):
                bad = np.unique(raw[(raw < 0) | (raw > 255)])
                raise UserError(self._bad_values_message(path, bad.tolist()))
            raw = raw.astype(np.uint8)
        raw = np.ascontiguousarray(raw)
        # Table lookups (cv2.LUT) instead of a histogram: ten times faster on a 2048x1024 label.
        if raw.size and cv2.countNonZero(cv2.LUT(raw, self._bad_u8)):
            bad_values = np.nonzero((np.bincount(raw.ravel(), minlength=256) > 0) & (self._lut < 0))[0]
            raise UserError(self._bad_values_message(path, bad_values.tolist()))
        if self._lut_is_identity:
            return raw
        return cv2.LUT(raw, self._lut_u8)

    def _bad_values_message(self, path: Path, values: Sequence[int]) -> str:
        return (
            f"label {path} has values {_format_values(values)} outside [0, {self.num_classes}) and not "
            f"{self.ignore_index} (ignore); fix the label file or the dataset's class list"
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, "
                f"classes={self.num_classes})")


def _check_root(root: str | os.PathLike, kind: str, layout: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"{kind} root {path} does not exist or is not a folder; expected {layout}")
    return path


def _split_error(kind: str, folder: Path, split: str, layout: str, candidates: Sequence[str]) -> UserError:
    found = ", ".join(sorted(candidates)) or "none"
    return UserError(f"{kind} split {split!r} not found: {folder} is missing (splits found: {found}); "
                     f"expected {layout}")


def _files_by_stem(folder: Path, extensions: Sequence[str], what: str) -> dict[str, Path]:
    """Map relative stem (posix, no extension) -> file, for files under ``folder`` with these extensions."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in extensions or path.name.startswith("."):
            continue
        if not path.is_file():
            # Named like a sample but not one: say so here rather than meet it mid-run (or lose its pair).
            if path.is_symlink() and not path.exists():
                raise UserError(f"{what} {path} is a broken link (to {os.readlink(path)}); fix or remove it")
            if path.is_dir():
                raise UserError(f"{what} {path} is a folder, not a file; rename or move it")
            continue
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if stem in found:
            raise UserError(f"two {what} files share the name {stem!r}: {found[stem].name} and {path.name} "
                            f"in {path.parent}; keep one")
        found[stem] = path
    return found


# ---------------------------------------------------------------------------------------------
# Cityscapes

_CITYSCAPES_LAYOUT = ("ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
                      "ROOT/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png")


class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations with the 19 training classes (labels are ``*_gtFine_labelTrainIds.png``).

    The labelTrainIds files are made from the polygons by ``segdistill prepare cityscapes ROOT``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        root_path = _check_root(root, "Cityscapes", _CITYSCAPES_LAYOUT)
        img_root, gt_root = root_path / "leftImg8bit", root_path / "gtFine"
        for folder in (img_root, gt_root):
            if not folder.is_dir():
                raise UserError(f"Cityscapes root {root_path} has no {folder.name}/ folder; "
                                f"expected {_CITYSCAPES_LAYOUT}")
        img_dir, gt_dir = img_root / split, gt_root / split
        if not img_dir.is_dir():
            splits = [p.name for p in img_root.iterdir() if p.is_dir()]
            raise _split_error("Cityscapes", img_dir, split, _CITYSCAPES_LAYOUT, splits)
        if not gt_dir.is_dir():
            splits = [p.name for p in gt_root.iterdir() if p.is_dir()]
            raise _split_error("Cityscapes", gt_dir, split, _CITYSCAPES_LAYOUT, splits)

        img_suffix, lbl_suffix = "_leftImg8bit.png", "_gtFine_labelTrainIds.png"
        images = {p.relative_to(img_dir).as_posix()[: -len(img_suffix)]: p
                  for p in sorted(img_dir.glob(f"*/*{img_suffix}"))}
        labels = {p.relative_to(gt_dir).as_posix()[: -len(lbl_suffix)]: p
                  for p in sorted(gt_dir.glob(f"*/*{lbl_suffix}"))}
        if not images:
            raise UserError(f"no *{img_suffix} images in {img_dir}; expected {_CITYSCAPES_LAYOUT}")
        missing = [n for n in images if n not in labels]
        if missing:
            polygons = gt_dir / f"{missing[0]}_gtFine_polygons.json"
            if polygons.is_file():
                raise UserError(
                    f"{len(missing)} Cityscapes {split} labels are missing "
                    f"(first: {gt_dir / (missing[0] + lbl_suffix)}) "
                    f"but the polygons are there; run `segdistill prepare cityscapes {root_path}` to create them"
                )
            raise UserError(f"image {images[missing[0]]} has no label {gt_dir / (missing[0] + lbl_suffix)}; "
                            "add it or remove the image")
        orphans = [n for n in labels if n not in images]
        if orphans:
            raise UserError(f"label {labels[orphans[0]]} has no image {img_dir / (orphans[0] + img_suffix)}; "
                            "add it or remove the label")
        names = list(images)
        super().__init__(
            root_path, split, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, names,
            [images[n] for n in names], [labels[n] for n in names],
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# CamVid

_CAMVID_LAYOUT = "ROOT/<split>/*.jpg|png with labels in ROOT/<split>annot/*.png (SegNet CamVid layout)"


class CamVidDataset(SegDataset):
    """CamVid in the SegNet layout (``train/`` + ``trainannot/``, ``val/`` + ``valannot/``, ...).

    11 classes; the raw value 11 ("unlabelled") becomes ``ignore_index``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        root_path = _check_root(root, "CamVid", _CAMVID_LAYOUT)
        img_dir, ann_dir = root_path / split, root_path / f"{split}annot"
        splits = [p.name for p in root_path.iterdir() if p.is_dir() and (root_path / f"{p.name}annot").is_dir()]
        for folder in (img_dir, ann_dir):
            if not folder.is_dir():
                raise _split_error("CamVid", folder, split, _CAMVID_LAYOUT, splits)
        images = _files_by_stem(img_dir, IMAGE_EXTENSIONS, "image")
        labels = _files_by_stem(ann_dir, (".png",), "label")
        if not images:
            raise UserError(f"no images in {img_dir}; expected {_CAMVID_LAYOUT}")
        names = _pair_up(images, labels, ann_dir, ".png")
        super().__init__(
            root_path, split, CAMVID_CLASSES, CAMVID_PALETTE, names, [images[n] for n in names],
            [labels[n] for n in names],
            label_lut=_index_lut(len(CAMVID_CLASSES), {CAMVID_UNLABELLED: IGNORE_INDEX}),
        )  # fmt: skip


def _pair_up(images: dict[str, Path], labels: dict[str, Path], label_dir: Path, label_ext: str,
             accepted: Sequence[str] = (".png",)) -> list[str]:
    for name, path in images.items():
        if name not in labels:
            expected = label_dir / (name + label_ext)
            others = sorted(p.name for p in expected.parent.glob(glob.escape(Path(name).name) + ".*")
                            if p.suffix.lower() not in accepted)
            if others:
                raise UserError(f"label {expected.parent / others[0]} of image {path} is a {Path(others[0]).suffix} "
                                f"file; labels must be {', '.join(accepted)} (lossless): convert it")
            raise UserError(f"image {path} has no label {expected}; add it or remove the image")
    for name, path in labels.items():
        if name not in images:
            raise UserError(f"label {path} has no image with the same name; add the image or remove the label")
    return list(images)


# ---------------------------------------------------------------------------------------------
# Plain folder dataset

_FOLDER_LAYOUT = ("ROOT/images/[<split>/]*.jpg|png, ROOT/masks/[<split>/]*.png with the same names, "
                  "and ROOT/classes.txt or ROOT/classes.yaml")
IGNORE_CLASS_NAME = "__ignore__"


def _parse_color(values: Sequence[Any], where: str) -> tuple[int, int, int]:
    rgb: list[int] = []
    for v in values:
        try:
            number = float(v)
        except (TypeError, ValueError):
            break
        if not number.is_integer() or not 0 <= number <= 255:
            break
        rgb.append(int(number))
    if len(rgb) != 3 or len(values) != 3:
        raise UserError(f"{where}: colour must be three integers 0-255 (r g b), got {list(values)!r}")
    return rgb[0], rgb[1], rgb[2]


def read_class_file(path: Path) -> tuple[list[str], list[tuple[int, int, int]], tuple[int, int, int] | None]:
    """Read ``classes.txt`` / ``classes.yaml``: class names, their RGB colours, and the optional ignore colour.

    ``classes.txt``: one class per line ``name r g b`` (the name may contain spaces; ``#`` starts a
    comment); a line named ``__ignore__`` gives the colour of "do not care" pixels in RGB masks.
    ``classes.yaml``: ``classes: [{name: road, color: [128, 64, 128]}, ...]`` and optional
    ``ignore_color: [0, 0, 0]``. Class ``i`` is the ``i``-th class listed.
    """
    names: list[str] = []
    colors: list[tuple[int, int, int]] = []
    ignore: tuple[int, int, int] | None = None
    if path.suffix == ".txt":
        for lineno, line in enumerate(read_text_file(path, "class file").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            where = f"{path}:{lineno}"
            if len(parts) < 4:
                raise UserError(f"{where}: expected `name r g b` (e.g. `road 128 64 128`), got {line!r}")
            name, rgb = " ".join(parts[:-3]), _parse_color(parts[-3:], where)
            if name == IGNORE_CLASS_NAME:
                ignore = rgb
            else:
                names.append(name)
                colors.append(rgb)
    else:
        try:
            doc = load_yaml(read_text_file(path, "class file"))
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML ({_first_line(err)}); fix its syntax") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list):
            raise UserError(f"{path}: expected a top-level `classes:` list of {{name: ..., color: [r, g, b]}} entries")
        for k, entry in enumerate(doc["classes"]):
            where = f"{path}: classes[{k}]"
            if not isinstance(entry, dict) or "name" not in entry or "color" not in entry:
                raise UserError(f"{where} must be a mapping with `name` and `color: [r, g, b]`, got {entry!r}")
            if not isinstance(entry["color"], (list, tuple)):
                raise UserError(f"{where}: color must be a list [r, g, b], got {entry['color']!r}")
            names.append(str(entry["name"]))
            colors.append(_parse_color(entry["color"], where))
        if doc.get("ignore_color") is not None:
            if not isinstance(doc["ignore_color"], (list, tuple)):
                raise UserError(f"{path}: ignore_color must be a list [r, g, b], got {doc['ignore_color']!r}")
            ignore = _parse_color(doc["ignore_color"], f"{path}: ignore_color")
    if not names:
        raise UserError(f"{path} lists no classes; add one line `name r g b` per class")
    if len(names) > IGNORE_INDEX:
        raise UserError(f"{path} lists {len(names)} classes; at most {IGNORE_INDEX} are supported "
                        f"(value {IGNORE_INDEX} means ignore)")
    for seen, name in enumerate(names):
        if name in names[:seen]:
            raise UserError(f"{path}: class name {name!r} appears twice; class names must be unique")
    for seen, rgb in enumerate(colors):
        if rgb in colors[:seen]:
            raise UserError(f"{path}: colour {rgb} is used by both {names[colors.index(rgb)]!r} and {names[seen]!r}; "
                            "colours must be unique")
    if ignore is not None and ignore in colors:
        raise UserError(f"{path}: the ignore colour {ignore} is also the colour of class "
                        f"{names[colors.index(ignore)]!r}; pick another")
    return names, colors, ignore


class FolderDataset(SegDataset):
    """Your own data: ``ROOT/images/`` and ``ROOT/masks/`` with matching names, plus a class file.

    With ``split`` the files are in ``ROOT/images/<split>/`` and ``ROOT/masks/<split>/``. Masks are
    either index images (mode L or P: a class id per pixel, 255 = ignore) or RGB colour images
    mapped through the class colours (an unknown colour is an error, except the ``__ignore__`` /
    ``ignore_color`` colour, typically black, which becomes 255). See :func:`read_class_file`.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None) -> None:
        root_path = _check_root(root, "folder dataset", _FOLDER_LAYOUT)
        class_files = [root_path / n for n in ("classes.txt", "classes.yaml", "classes.yml")
                       if (root_path / n).is_file()]
        if not class_files:
            raise UserError(f"{root_path} has no classes.txt or classes.yaml; "
                            "add one (one line `name r g b` per class in classes.txt)")
        if len(class_files) > 1:
            raise UserError(f"{root_path} has both {class_files[0].name} and {class_files[1].name}; "
                            "keep only one class file")
        classes, palette, self.ignore_color = read_class_file(class_files[0])
        img_dir, mask_dir = root_path / "images", root_path / "masks"
        for folder in (img_dir, mask_dir):
            if not folder.is_dir():
                raise UserError(f"folder dataset {root_path} has no {folder.name}/ folder; expected {_FOLDER_LAYOUT}")
        if split is not None:
            img_dir, mask_dir = img_dir / split, mask_dir / split
            splits = [p.name for p in (root_path / "images").iterdir() if p.is_dir()]
            for folder in (img_dir, mask_dir):
                if not folder.is_dir():
                    raise _split_error("folder dataset", folder, split, _FOLDER_LAYOUT, splits)
        images = _files_by_stem(img_dir, IMAGE_EXTENSIONS, "image")
        masks = _files_by_stem(mask_dir, MASK_EXTENSIONS, "mask")
        if not images:
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {img_dir}; expected {_FOLDER_LAYOUT}")
        names = _pair_up(images, masks, mask_dir, ".png", MASK_EXTENSIONS)
        super().__init__(root_path, split, classes, palette, names, [images[n] for n in names],
                         [masks[n] for n in names])
        codes = np.array([(r << 16) | (g << 8) | b for r, g, b in self.palette], dtype=np.int32)
        targets = np.arange(len(codes), dtype=np.uint8)
        if self.ignore_color is not None:
            r, g, b = self.ignore_color
            codes = np.append(codes, np.int32((r << 16) | (g << 8) | b))
            targets = np.append(targets, np.uint8(IGNORE_INDEX))
        order = np.argsort(codes)
        self._color_codes, self._color_targets = codes[order], targets[order]

    def label_key(self) -> str:
        """The index mapping and the class colours (colour masks are cached already mapped)."""
        tables = self._lut.tobytes() + self._color_codes.tobytes() + self._color_targets.tobytes()
        return type(self).__name__ + "-" + hashlib.sha1(tables).hexdigest()[:16]

    def _decode_label(self, path: Path) -> np.ndarray:
        raw = read_label_array(path)
        if raw.ndim == 2:
            return self._map_indices(raw, path)
        if raw.ndim != 3 or raw.shape[2] not in (3, 4):
            raise UserError(f"mask {path} has shape {raw.shape}; "
                            "expected an index image (L or P) or an RGB colour image")
        rgb = raw[:, :, :3].astype(np.int32)
        code = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
        pos = np.searchsorted(self._color_codes, code).clip(0, len(self._color_codes) - 1)
        known = self._color_codes[pos] == code
        if not known.all():
            unknown = np.unique(code[~known])
            shown = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in unknown[:4]]
            more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
            hint = " (declare it as ignore with a `__ignore__ 0 0 0` line)" if (0, 0, 0) in shown else ""
            raise UserError(
                f"mask {path} has colour(s) {', '.join(map(str, shown))}{more} that are not in the class file{hint}; "
                f"fix the mask or add the colour to the class file"
            )
        return self._color_targets[pos]


# ---------------------------------------------------------------------------------------------
# Factory

DATASET_KINDS: dict[str, Callable[..., SegDataset]] = {
    "cityscapes": CityscapesDataset,
    "camvid": CamVidDataset,
    "folder": FolderDataset,
}


def build_dataset(kind: str, root: str | os.PathLike, split: str | None,
                  cache: str | os.PathLike | None = None) -> SegDataset:
    """Build the dataset ``kind`` (``cityscapes``, ``camvid`` or ``folder``) at ``root`` for ``split``.

    ``cache``: a decoded-cache folder to read samples from (:meth:`SegDataset.use_cache`).
    """
    if kind not in DATASET_KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; valid kinds are {', '.join(sorted(DATASET_KINDS))}")
    if split is None and kind != "folder":
        raise UserError(f"dataset kind {kind!r} needs a split (e.g. 'train' or 'val'); set it in the config")
    dataset = DATASET_KINDS[kind](root, split)
    dataset.use_cache(cache)
    return dataset


# ---------------------------------------------------------------------------------------------
# Torch wrappers

PipelineFn = Callable[[Any, Any, np.random.Generator], tuple[Any, Any]]


class TrainSet(torch.utils.data.Dataset):
    """Training samples keyed by ``(index, sample_seed)`` pairs, as :class:`~.sampler.InfiniteSampler` yields.

    ``train_set[(index, sample_seed)]`` is what the pipeline returns: a uint8
    :class:`~segdistill.data.transforms.TrainSample` with :func:`~segdistill.data.transforms.build_train_pipeline`,
    which the training device normalises and pads (:class:`~segdistill.data.preprocess.DataPreprocessor`).

    The augmentation generator is ``np.random.default_rng([seed, sample_seed])``, so a sample's
    augmentation depends only on the run seed and its position in the global stream: not on the
    number of workers, the world size or whether the run was resumed.
    """

    def __init__(self, dataset: SegDataset, pipeline: Callable[[np.ndarray, np.ndarray, np.random.Generator], Any],
                 seed: int) -> None:
        self.dataset = dataset
        self.pipeline = pipeline
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> TrainSample:
        if not isinstance(key, (tuple, list)) or len(key) != 2:
            raise TypeError(f"TrainSet keys are (index, sample_seed) pairs from InfiniteSampler, got {key!r}")
        index, sample_seed = int(key[0]), int(key[1])
        rng = np.random.default_rng([self.seed, sample_seed])
        image, label = self.dataset.load(index)
        return self.pipeline(image, label, rng)


class EvalSet(torch.utils.data.Dataset):
    """Evaluation samples keyed by plain ints, returning ``(image_tensor, label_tensor, index)``.

    Evaluation pipelines are deterministic; the generator passed (seeded by the index) only makes
    an accidental random transform reproducible.
    """

    def __init__(self, dataset: SegDataset, pipeline: PipelineFn) -> None:
        self.dataset = dataset
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, label = self.dataset.load(index)
        image_t, label_t = self.pipeline(image, label, np.random.default_rng(index))
        return image_t, label_t, index

