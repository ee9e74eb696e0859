"""Predict label maps for images: a palette PNG of class ids and a colour overlay per image.

``predict(model, inputs, out_dir, palette)`` takes an image file, a folder (searched recursively), a
list of image files, or a dataset, and for every image writes into ``out_dir``

- ``<stem>_pred.png``: an 8-bit palette PNG (mode ``P``) whose pixel values are the class ids and whose
  palette holds the class colours, so it is both a label file and a picture;
- ``<stem>_overlay.jpg``: the image blended with the colour mask.

Predictions are made at the original image size: with ``eval_scale`` the image is first resized the way
the evaluation pipeline does (keep ratio, mmcv's ``rescale_size``), and the scores are resized back
with ``out_size``. Sub-folders of a folder input are mirrored in ``out_dir``. Every file is written
atomically. ``out_dir`` must not contain any input, nor lie inside a folder input or a dataset's root,
image or label folders, so predictions never land among the data; and an existing prediction is
replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from PIL import Image

from ..data.datasets import IMAGE_EXTENSIONS, read_image
from ..data.preprocess import normalize_image
from ..data.transforms import rescale_size
from ..errors import UserError
from ..fileio import atomic_path
from ..models.segmentor import EncoderDecoder
from ..progress import progress_bar

__all__ = ["ImageSource", "collect_images", "default_palette", "colorize", "overlay", "predict"]

PathLike = str | os.PathLike
Color = Sequence[int]


class ImageSource(Protocol):
    """What :func:`predict` needs from a dataset: sample names (relative stems) and image paths."""

    names: list[str]

    def __len__(self) -> int: ...

    def image_path(self, i: int) -> Path: ...


def collect_images(path: PathLike) -> list[Path]:
    """The image at ``path``, or every image under the folder ``path`` (recursive, sorted).

    Images are recognised by extension (``.png .jpg .jpeg .bmp .tif .tiff .webp``, any case). Hidden
    files are skipped, which also skips half-written temporary files of an interrupted run.
    """
    path = Path(path)
    exts = ", ".join(IMAGE_EXTENSIONS)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise UserError(f"{path} is not an image file ({exts}); pass an image or a folder of images")
        return [path]
    if not path.is_dir():
        raise UserError(f"input {path} does not exist; pass an image file or a folder of images")
    found = sorted(
        p for p in path.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise UserError(f"no images ({exts}) found in folder {path} or its sub-folders; check the path")
    return found


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct deterministic colours (the PASCAL VOC bit-interleaving colour map) for unnamed classes."""
    colors = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return colors


def _check_palette(palette: Sequence[Color] | None, num_classes: int) -> np.ndarray:
    if palette is None:
        palette = default_palette(num_classes)
    table = np.asarray([tuple(c) for c in palette], dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 3 or table.min(initial=0) < 0 or table.max(initial=0) > 255:
        raise UserError("palette must be a list of [r, g, b] colours with values 0..255; fix the class colours")
    if len(table) < num_classes:
        raise UserError(f"palette has {len(table)} colours but the model predicts {num_classes} classes; "
                        "give one colour per class (or no palette for default colours)")
    return table[:num_classes].astype(np.uint8)


def colorize(pred: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class ids ``H x W`` -> ``RGB uint8 H x W x 3`` through the ``(C, 3)`` colour table."""
    return palette[pred]


def overlay(rgb: np.ndarray, color_mask: np.ndarray, opacity: float) -> np.ndarray:
    """``(1 - opacity) * image + opacity * mask``, rounded to ``uint8``."""
    blend = (1.0 - opacity) * rgb.astype(np.float32) + opacity * color_mask.astype(np.float32)
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def _save_index_png(pred: np.ndarray, palette: np.ndarray, path: Path) -> None:
    im = Image.fromarray(pred.astype(np.uint8))  # mode "L"; putpalette turns it into "P" keeping the values
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette
    im.putpalette(flat.flatten().tolist())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def _save_jpeg(rgb: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=90)


def _protected_folders(inputs: PathLike | Sequence[PathLike] | ImageSource) -> list[Path]:
    """Folders no prediction may be written into: folder inputs, and a dataset's root, image and label folders."""
    if isinstance(inputs, (str, os.PathLike)):
        return [Path(inputs).resolve()] if Path(inputs).is_dir() else []
    if hasattr(inputs, "image_path") and hasattr(inputs, "names"):
        folders = {Path(inputs.image_path(i)).resolve().parent for i in range(len(inputs))}
        label_path = getattr(inputs, "label_path", None)
        if callable(label_path):
            folders |= {Path(label_path(i)).resolve().parent for i in range(len(inputs))}
        if getattr(inputs, "root", None) is not None:
            folders.add(Path(inputs.root).resolve())  # type: ignore[union-attr]
        return sorted(folders)
    return [Path(p).resolve() for p in inputs if Path(p).is_dir()]


def _plan(inputs: PathLike | Sequence[PathLike] | ImageSource, out_dir: Path,
          overwrite: bool = False, protected: Sequence[PathLike] = ()) -> list[tuple[Path, Path]]:
    """``(image path, output stem path)`` per image.

    Checks that no input lives inside ``out_dir``, that ``out_dir`` is not inside an input or dataset
    folder, and (unless ``overwrite``) that no output exists yet: all before anything is written.
    """
    if isinstance(inputs, (str, os.PathLike)):
        root = Path(inputs)
        images = collect_images(root)
        base = root if root.is_dir() else root.parent
        plan = [(p, out_dir / p.relative_to(base).with_suffix("")) for p in images]
    elif hasattr(inputs, "image_path") and hasattr(inputs, "names"):
        plan = [(Path(inputs.image_path(i)), out_dir / inputs.names[i]) for i in range(len(inputs))]
    else:
        images = [q for p in inputs for q in collect_images(p)]
        if not images:
            raise UserError("no input images given; pass an image file or a folder of images")
        # Mirror paths below the common folder so equal file names in different folders stay apart.
        base = Path(os.path.commonpath([str(p.resolve().parent) for p in images]))
        plan = [(p, out_dir / p.resolve().relative_to(base).with_suffix("")) for p in images]
    out_real = out_dir.resolve()
    seen: dict[Path, Path] = {}
    for image, stem in plan:
        if image.resolve().is_relative_to(out_real):
            raise UserError(f"output folder {out_dir} contains the input {image}; choose an --out folder "
                            "outside the input folder so no input can be overwritten")
        if stem in seen:
            raise UserError(f"inputs {seen[stem]} and {image} would both be written as {stem}_pred.png; "
                            "rename one of them or predict them separately")
        seen[stem] = image
    for folder in [*_protected_folders(inputs), *(Path(p).resolve() for p in protected)]:
        if out_real.is_relative_to(folder):
            raise UserError(f"output folder {out_dir} is inside the input or dataset folder {folder}; choose an --out "
                            "folder outside the data, so no prediction is written among the images or labels")
    if not overwrite:
        existing = [p for _, stem in plan for p in _outputs(stem) if p.exists()]
        if existing:
            raise UserError(f"{existing[0]} already exists ({len(existing)} of the {2 * len(plan)} outputs do); "
                            "pass --overwrite to replace them, or choose another --out folder")
    return plan


def _outputs(stem: Path) -> tuple[Path, Path]:
    """The two files written for one image: the class-index PNG and the overlay JPEG."""
    return stem.parent / f"{stem.name}_pred.png", stem.parent / f"{stem.name}_overlay.jpg"


@torch.no_grad()
def predict(
    model: EncoderDecoder,
    inputs: PathLike | Sequence[PathLike] | ImageSource,
    out_dir: PathLike,
    palette: Sequence[Color] | None = None,
    *,
    device: torch.device | str = "cpu",
    mode: str = "whole",
    crop_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    eval_scale: tuple[int, int] | None = None,
    opacity: float = 0.5,
    progress: bool = False,
    overwrite: bool = False,
    protected: Sequence[PathLike] = (),
) -> list[Path]:
    """Segment every input image and write ``<stem>_pred.png`` and ``<stem>_overlay.jpg`` into ``out_dir``.

    Args:
        model: the segmentor; it is put in eval mode and moved to ``device``.
        inputs: an image file, a folder (recursive), a list of images/folders, or a dataset
            (anything with ``names`` and ``image_path(i)``; outputs are named after ``names[i]``).
        out_dir: output folder, created if needed; it must not contain any input.
        palette: one RGB colour per class (``dataset.palette``); ``None`` picks distinct default colours.
        device: where inference runs.
        mode, crop_size, stride, flip, scales: passed to :meth:`EncoderDecoder.inference`
            (``mode="slide"`` needs ``crop_size`` and ``stride``; ``flip``/several ``scales`` is TTA).
        eval_scale: ``(long, short)`` edge bound the image is resized into before inference, keeping its
            ratio (the config's ``data.eval_scale``); ``None`` runs at the native size. Either way the
            prediction has the size of the original image.
        opacity: weight of the colour mask in the overlay, in ``[0, 1]``.
        progress: show a progress bar (or periodic lines) on stderr.
        overwrite: replace outputs that already exist; without it an existing output is a
            :class:`UserError` raised before anything is written.

    Returns:
        Every file written, in input order: ``[pred_0, overlay_0, pred_1, overlay_1, ...]``.
    """
    if not 0.0 <= opacity <= 1.0:
        raise UserError(f"opacity must be in [0, 1], got {opacity}")
    if model.num_classes > 255:
        raise UserError(f"the model predicts {model.num_classes} classes; palette PNGs hold at most 255 "
                        "(value 255 is ignore_index)")
    colors = _check_palette(palette, model.num_classes)
    out_path = Path(out_dir)
    plan = _plan(inputs, out_path, overwrite, protected)
    device = torch.device(device)
    model.eval().to(device)
    written: list[Path] = []
    with progress_bar(len(plan), "predict", unit="img", enabled=progress) as bar:
        for image_path, stem in plan:
            written += _predict_one(model, image_path, stem, colors, device, mode, crop_size, stride, flip, scales,
                                    eval_scale, opacity)
            bar.update(1)
    return written


def _predict_one(model: EncoderDecoder, image_path: Path, stem: Path, colors: np.ndarray, device: torch.device,
                 mode: str, crop_size: Sequence[int] | None, stride: Sequence[int] | None, flip: bool,
                 scales: Sequence[float] | None, eval_scale: Sequence[int] | None, opacity: float) -> list[Path]:
    rgb = read_image(image_path)
    h, w = rgb.shape[:2]
    net_rgb = rgb
    if eval_scale is not None:
        nh, nw = rescale_size((h, w), (int(eval_scale[0]), int(eval_scale[1])))
        if (nh, nw) != (h, w):
            # Same resize as the evaluation pipeline: bilinear on the uint8 image, before normalising.
            net_rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = normalize_image(net_rgb, device)
    scores = model.inference(x, mode=mode, crop_size=crop_size, stride=stride, flip=flip,
                             scales=scales, out_size=(h, w))
    pred = scores[0].argmax(dim=0).to("cpu", torch.uint8).numpy()
    pred_path, overlay_path = _outputs(stem)
    _save_index_png(pred, colors, pred_path)
    _save_jpeg(overlay(rgb, colorize(pred, colors), opacity), overlay_path)
    return [pred_path, overlay_path]
