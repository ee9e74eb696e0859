"""Paired image/label transforms with the semantics of mmsegmentation 1.x (and mmcv 2.x).

Every transform is a small callable ``t(image, label, rng) -> (image, label)``:

* ``image``: ``H x W x 3`` RGB, ``uint8`` until :class:`Normalize` (``float32`` after it);
* ``label``: ``H x W`` ``uint8`` class indices, ``ignore_index`` (255) for "do not care";
* ``rng``: a :class:`numpy.random.Generator`; it is the ONLY source of randomness, so one sample is
  exactly reproducible from its seed whatever the number of DataLoader workers or ranks.

Conventions are the reference's, including its mixed orders: a resize ``scale`` is ``(w, h)`` like
mmcv (with ``keep_ratio`` only its long/short edges matter), a ``crop_size`` / pad ``size`` is
``(h, w)`` like mmseg. The reference reads images as BGR and converts to RGB in its data
preprocessor; ours are RGB from the start, which changes nothing except the HSV conversion in
:class:`PhotoMetricDistortion` (``RGB2HSV`` on RGB gives the very same H, S, V as mmseg's ``BGR2HSV``
on BGR, so the distortion is the same function).

The training pipeline (:func:`build_train_pipeline`, a :class:`TrainPipeline`) stays uint8 and ends in
:class:`PackTrainSample`: workers return uint8 :class:`TrainSample` s, and the training device
normalises and pads them (:class:`~segdistill.data.preprocess.DataPreprocessor`), as mmseg's
``SegDataPreProcessor`` does. Several transforms take faster routes to the reference's exact results
(tables for the photometric steps, ``cv2.calcHist`` and ``cv2.flip``); the tests compare them with
the plain reference arithmetic bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

from ..constants import MEAN_RGB, STD_RGB
from ..errors import UserError

__all__ = [
    "Transform",
    "Compose",
    "RandomResize",
    "Resize",
    "RandomCrop",
    "RandomFlip",
    "PhotoMetricDistortion",
    "Normalize",
    "Pad",
    "ToTensor",
    "TrainSample",
    "PackTrainSample",
    "TrainPipeline",
    "class_counts",
    "rescale_size",
    "build_train_pipeline",
    "build_eval_pipeline",
    "MEAN_RGB",
    "STD_RGB",
]

#: RGB mean/std on the 0-255 scale, the reference's (ImageNet) normalisation.

#: The signature every transform has; arrays in, arrays (or tensors after :class:`ToTensor`) out.
Transform = Callable[[Any, Any, np.random.Generator], tuple[Any, Any]]


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """Turn ``n`` or ``(a, b)`` into a tuple of two positive ints, or raise a one-line UserError."""
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be an int or a pair of ints, got {value!r}; fix it in the config") from None
    if a <= 0 or b <= 0:
        raise UserError(f"{what} must be positive, got {(a, b)}; fix it in the config")
    return a, b


def rescale_size(old_hw: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """Return the ``(h, w)`` an image of size ``old_hw`` gets when rescaled to fit ``scale``, keeping its ratio.

    This is ``mmcv.rescale_size``: the factor is the largest one that keeps the long edge within
    ``max(scale)`` and the short edge within ``min(scale)``, and each side is rounded half up.
    """
    h, w = old_hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _target_hw(shape: tuple[int, ...], scale: tuple[int, int], keep_ratio: bool) -> tuple[int, int]:
    if keep_ratio:
        return rescale_size((shape[0], shape[1]), scale)
    return scale[1], scale[0]  # mmcv's scale is (w, h)


def _resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if hw == image.shape[:2]:
        return image
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def _resize_label(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if hw == label.shape[:2]:
        return label
    # Nearest neighbour: a label value is a class, averaging two classes would invent a third.
    return cv2.resize(label, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


def class_counts(label: np.ndarray) -> np.ndarray:
    """How many pixels of ``label`` hold each value 0..255 (int64, 256 entries), like ``np.bincount``.

    ``cv2.calcHist`` counts a uint8 view in place (no copy of a crop, no cast to int64), several
    times faster than ``np.bincount(label.ravel(), minlength=256)``; its float32 counts are exact below
    2**24 pixels, larger arrays take numpy's path.
    """
    if label.dtype == np.uint8 and label.ndim == 2 and 0 < label.size < 2**24 and label.strides[1] == 1:
        return cv2.calcHist([label], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return np.bincount(label.ravel(), minlength=256)


def _hflip(array: np.ndarray) -> np.ndarray:
    """A contiguous left-right mirror of an ``H x W`` or ``H x W x C`` array (a copy)."""
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] <= 4):
        return cv2.flip(array, 1)
    return np.ascontiguousarray(array[:, ::-1])


class Compose:
    """Apply transforms in order, threading the same ``rng`` through all of them."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms: list[Transform] = list(transforms)

    def __call__(self, image: Any, label: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        for t in self.transforms:
            image, label = t(image, label, rng)
        return image, label

    def __repr__(self) -> str:
        inner = ",\n    ".join(repr(t) for t in self.transforms)
        return f"Compose([\n    {inner}\n])"


class RandomResize:
    """mmcv ``RandomResize(scale, ratio_range, keep_ratio=True)``: rescale by a random ratio of ``scale``.

    A ratio ``r`` is drawn uniformly in ``ratio_range``; the target is ``(int(scale[0]*r), int(scale[1]*r))``
    (``(w, h)``); with ``keep_ratio`` the image is rescaled as :func:`rescale_size` says, else resized to
    the target exactly. The image is resized bilinearly, the label with nearest neighbour.
    """

    def __init__(
        self,
        scale: tuple[int, int] = (2048, 1024),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        keep_ratio: bool = True,
    ) -> None:
        self.scale = _pair(scale, "RandomResize scale")
        lo, hi = (float(r) for r in ratio_range)
        if not 0 < lo <= hi:
            raise UserError(f"ratio_range must be (min, max) with 0 < min <= max, got {tuple(ratio_range)}; "
                            "fix it in the config")
        self.ratio_range = (lo, hi)
        self.keep_ratio = keep_ratio

    def sample_scale(self, rng: np.random.Generator) -> tuple[int, int]:
        """Draw the target ``(w, h)`` scale exactly as mmcv's ``_random_sample_ratio`` does."""
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        return int(self.scale[0] * ratio), int(self.scale[1] * ratio)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        hw = _target_hw(image.shape, self.sample_scale(rng), self.keep_ratio)
        return _resize_image(image, hw), _resize_label(label, hw)

    def __repr__(self) -> str:
        return f"RandomResize(scale={self.scale}, ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})"


class Resize:
    """Deterministic resize to ``scale`` (``(w, h)``), mmcv ``Resize`` semantics, for evaluation.

    The label is left at its original size unless ``resize_label``: metrics are then computed at full
    resolution against the prediction resized back, as mmseg's test pipeline does (it loads the
    annotation after the resize).
    """

    def __init__(self, scale: tuple[int, int] = (2048, 1024), keep_ratio: bool = True,
                 resize_label: bool = False) -> None:
        self.scale = _pair(scale, "Resize scale")
        self.keep_ratio = keep_ratio
        self.resize_label = resize_label

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        hw = _target_hw(image.shape, self.scale, self.keep_ratio)
        return _resize_image(image, hw), (_resize_label(label, hw) if self.resize_label else label)

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale}, keep_ratio={self.keep_ratio}, resize_label={self.resize_label})"


class RandomCrop:
    """mmseg ``RandomCrop(crop_size, cat_max_ratio, ignore_index)``; ``crop_size`` is ``(h, w)``.

    Offsets are uniform in ``[0, max(H - h, 0)]`` (a smaller image gives a smaller crop; :class:`Pad`
    fills it up later). With ``cat_max_ratio < 1`` up to 10 more crops are drawn until more than one
    non-ignored class is present and the most frequent one covers less than ``cat_max_ratio`` of the
    non-ignored pixels; otherwise the last crop drawn is kept (mmseg's exact loop).
    """

    def __init__(self, crop_size: int | tuple[int, int], cat_max_ratio: float = 1.0, ignore_index: int = 255) -> None:
        self.crop_size = _pair(crop_size, "crop_size")
        if not 0 < cat_max_ratio <= 1:
            raise UserError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio}; fix it in the config")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)

    def _bbox(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int, int, int]:
        margin_h = max(shape[0] - self.crop_size[0], 0)
        margin_w = max(shape[1] - self.crop_size[1], 0)
        y = int(rng.integers(0, margin_h + 1))
        x = int(rng.integers(0, margin_w + 1))
        return y, y + self.crop_size[0], x, x + self.crop_size[1]

    def _acceptable(self, crop: np.ndarray) -> bool:
        counts = class_counts(crop)
        if 0 <= self.ignore_index < counts.size:
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        y1, y2, x1, x2 = self._bbox(image.shape, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                if self._acceptable(label[y1:y2, x1:x2]):
                    break
                y1, y2, x1, x2 = self._bbox(image.shape, rng)
        return image[y1:y2, x1:x2], label[y1:y2, x1:x2]

    def __repr__(self) -> str:
        return (f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio}, "
                f"ignore_index={self.ignore_index})")


class RandomFlip:
    """Horizontal flip of image and label together with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        if not 0 <= prob <= 1:
            raise UserError(f"flip prob must be in [0, 1], got {prob}; fix it in the config")
        self.prob = float(prob)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.prob:
            # Contiguous copies (OpenCV refuses the negative strides of a flipped view); cv2.flip makes
            # them ten times faster than numpy's reversed copy of an interleaved image.
            image, label = _hflip(image), _hflip(label)
        return image, label

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # The reference's `convert`: affine in float32, clip to [0, 255], truncate back to uint8.
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


_VALUES = np.arange(256, dtype=np.uint8)
_HSV_IDENTITY = np.repeat(_VALUES[:, None, None], 3, axis=2)  # a 256 x 1 x 3 table for cv2.LUT


def _convert_table(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """:func:`_convert` of every uint8 value: ``table[v]`` is what ``_convert`` makes of a pixel value ``v``."""
    return _convert(_VALUES, alpha, beta)


def _then(first: np.ndarray | None, second: np.ndarray | None) -> np.ndarray | None:
    """The table of "apply ``first``, then ``second``" (``None`` is the identity)."""
    if first is None:
        return second
    if second is None:
        return first
    return second[first]


def _apply(img: np.ndarray, table: np.ndarray | None) -> np.ndarray:
    return img if table is None else cv2.LUT(img, table)


def _in_hsv(img: np.ndarray, channel: int, table: np.ndarray) -> np.ndarray:
    """RGB -> OpenCV uint8 HSV, ``table`` on one HSV channel, -> RGB."""
    tables = _HSV_IDENTITY.copy()
    tables[:, 0, channel] = table
    return cv2.cvtColor(cv2.LUT(cv2.cvtColor(img, cv2.COLOR_RGB2HSV), tables), cv2.COLOR_HSV2RGB)


class PhotoMetricDistortion:
    """mmseg ``PhotoMetricDistortion``: brightness, contrast, saturation and hue jitter on a uint8 image.

    Order and probabilities are the reference's: brightness (p=0.5, delta uniform in
    ``[-brightness_delta, brightness_delta]``); a fair coin ``mode`` puts contrast first (mode 1) or
    last (mode 0); saturation and hue are each applied with p=0.5 in OpenCV's uint8 HSV (H in
    [0, 180), hue shift an integer in ``[-hue_delta, hue_delta)``); contrast has p=0.5. Every step
    clips to [0, 255] and truncates to uint8. Our images are RGB, so the HSV conversion is
    ``COLOR_RGB2HSV`` where mmseg uses ``COLOR_BGR2HSV`` on BGR: the same H, S, V either way.

    Each step maps a pixel's value (or one HSV channel's value) on its own, so it is computed once
    for the 256 possible values, with the reference's very float32 arithmetic, and applied as a
    table (``cv2.LUT``): the same bytes as converting every pixel, about ten times faster.
    Brightness and a contrast that follows it directly compose into one table.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = int(hue_delta)

    def _brightness(self, rng: np.random.Generator) -> np.ndarray | None:
        if rng.integers(2):
            return _convert_table(beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        return None

    def _contrast(self, rng: np.random.Generator) -> np.ndarray | None:
        if rng.integers(2):
            return _convert_table(alpha=rng.uniform(*self.contrast_range))
        return None

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if image.dtype != np.uint8:
            raise UserError("PhotoMetricDistortion needs a uint8 image: put it before Normalize in the pipeline")
        # The random draws happen in the reference's order; the per-value tables wait until an HSV
        # step (or the end) needs the pixels.
        table = self._brightness(rng)
        mode = rng.integers(2)
        if mode == 1:
            table = _then(table, self._contrast(rng))
        img = image
        if rng.integers(2):  # saturation
            img, table = _apply(img, table), None
            img = _in_hsv(img, 1, _convert_table(alpha=rng.uniform(*self.saturation_range)))
        if rng.integers(2):  # hue
            img, table = _apply(img, table), None
            # numpy's legacy randint(-d, d) excludes d; rng.integers has the same half-open range.
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            img = _in_hsv(img, 0, ((_VALUES.astype(np.int64) + shift) % 180).astype(np.uint8))
        if mode == 0:
            table = _then(table, self._contrast(rng))
        return _apply(img, table), label

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, contrast_range={self.contrast_range}, "
            f"saturation_range={self.saturation_range}, hue_delta={self.hue_delta})"
        )


class Normalize:
    """``(image - mean) / std`` per RGB channel in float32, as mmseg's ``SegDataPreProcessor`` computes it."""

    def __init__(self, mean: Sequence[float] = MEAN_RGB, std: Sequence[float] = STD_RGB) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UserError(f"Normalize needs 3 means and 3 positive stds, got mean={tuple(mean)} std={tuple(std)}; "
                            "fix the config")
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        # A true division (not a multiply by 1/std) so values match the reference to the last bit.
        return (image.astype(np.float32) - self.mean) / self.std, label

    def __repr__(self) -> str:
        return f"Normalize(mean={tuple(self.mean.tolist())}, std={tuple(self.std.tolist())})"


class Pad:
    """Pad bottom/right up to ``size`` (``(h, w)``): image with ``image_value``, label with ``label_value``.

    Placed after :class:`Normalize` the image value 0 is the dataset mean, like the reference, which
    pads normalised batches with 0. A side already at least ``size`` is left alone (never cropped).
    """

    def __init__(self, size: int | tuple[int, int], image_value: float = 0.0, label_value: int = 255) -> None:
        self.size = _pair(size, "Pad size")
        self.image_value = image_value
        self.label_value = int(label_value)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pad_h = max(self.size[0] - image.shape[0], 0)
        pad_w = max(self.size[1] - image.shape[1], 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=self.image_value)
        pad_h = max(self.size[0] - label.shape[0], 0)
        pad_w = max(self.size[1] - label.shape[1], 0)
        if pad_h or pad_w:
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=self.label_value)
        return image, label

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, image_value={self.image_value}, label_value={self.label_value})"


class ToTensor:
    """``(H x W x 3 array, H x W label)`` -> ``(float32 3 x H x W tensor, int64 H x W tensor)``, both contiguous."""

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        lbl = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return img, lbl

    def __repr__(self) -> str:
        return "ToTensor()"


class TrainSample(NamedTuple):
    """What a training worker returns for one sample; the DataLoader's default collate stacks each field.

    Normalisation and the final padding values are the training device's job
    (:class:`~segdistill.data.preprocess.DataPreprocessor`), as in mmseg's ``SegDataPreProcessor``:
    a worker ships uint8 pixels, a quarter of the bytes of normalised float32.
    """

    image: torch.Tensor  #: ``uint8 3 x H x W`` RGB, ``H x W`` at least the crop size; 0 beyond ``valid_hw``
    label: torch.Tensor  #: ``uint8 H x W`` class indices; ``ignore_index`` beyond ``valid_hw``
    valid_hw: torch.Tensor  #: ``int64 [2]``: the height and width of real pixels (the rest is padding)


class PackTrainSample:
    """The worker's last step: ``(H x W x 3 uint8, H x W uint8)`` arrays -> a :class:`TrainSample` padded to ``size``.

    The image goes channel-first; both are padded bottom/right up to ``size`` (``(h, w)``; a side
    already at least that long is left alone), the image with 0 and the label with ``ignore_index``,
    so samples of a batch share one shape. The image's padding is not its final value: the
    preprocessor on the device normalises, then sets everything beyond ``valid_hw`` to 0 (the mean
    colour), which is what :class:`Normalize` followed by :class:`Pad` compute.
    """

    def __init__(self, size: int | tuple[int, int], ignore_index: int = 255) -> None:
        self.size = _pair(size, "Pad size")
        self.ignore_index = int(ignore_index)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> TrainSample:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"PackTrainSample needs an H x W x 3 uint8 image, got {image.dtype} {image.shape}; "
                            "keep Normalize out of the training pipeline (the device normalises)")
        h, w = image.shape[:2]
        out_h, out_w = max(self.size[0], h), max(self.size[1], w)
        packed = np.empty((3, out_h, out_w), dtype=np.uint8)
        # cv2.split writes the three planes straight into the channel-first buffer: one pass, about
        # three times faster than numpy's transposed copy of an interleaved image.
        planes = [packed[c, :h, :w] for c in range(3)]
        written = cv2.split(image, planes)
        if any(out is not plane for out, plane in zip(written, planes, strict=True)):
            packed[:, :h, :w] = image.transpose(2, 0, 1)  # OpenCV made new arrays instead: copy with numpy
        if out_h > h or out_w > w:
            packed[:, h:, :] = 0
            packed[:, :h, w:] = 0
        lbl = np.full((out_h, out_w), self.ignore_index, dtype=np.uint8)
        lbl[: label.shape[0], : label.shape[1]] = label
        return TrainSample(torch.from_numpy(packed), torch.from_numpy(lbl), torch.tensor([h, w], dtype=torch.int64))

    def __repr__(self) -> str:
        return f"PackTrainSample(size={self.size}, ignore_index={self.ignore_index})"


class TrainPipeline:
    """The training side of a worker: augment with ``transforms`` (uint8 arrays throughout), then ``pack``.

    ``pipeline(image, label, rng)`` returns a :class:`TrainSample`; ``pipeline.augment(image, label,
    rng)`` the augmented arrays before packing (what the benchmark times stage by stage).
    """

    def __init__(self, transforms: Sequence[Transform], pack: PackTrainSample) -> None:
        self.transforms: list[Transform] = list(transforms)
        self.pack = pack

    def augment(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Run the augmentations in order with one ``rng``; arrays in, arrays out."""
        for t in self.transforms:
            image, label = t(image, label, rng)
        return image, label

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> TrainSample:
        return self.pack(*self.augment(image, label, rng))

    def __repr__(self) -> str:
        inner = ",\n    ".join(repr(t) for t in [*self.transforms, self.pack])
        return f"TrainPipeline([\n    {inner}\n])"


def build_train_pipeline(
    crop_size: int | tuple[int, int],
    scale: tuple[int, int],
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    ignore_index: int = 255,
) -> TrainPipeline:
    """The reference training pipeline as a worker runs it: random resize, crop, flip, photometric jitter, pack.

    ``crop_size`` is ``(h, w)``, ``scale`` is ``(w, h)`` (mmseg's own conventions, e.g. Cityscapes
    ``crop_size=(512, 1024)``, ``scale=(2048, 1024)``). It returns uint8 :class:`TrainSample` s;
    :class:`~segdistill.data.preprocess.DataPreprocessor` on the training device then normalises and
    pads exactly as :class:`Normalize` and :class:`Pad` (``image_value=0``, ``label_value=ignore_index``)
    would have in the worker.
    """
    crop = _pair(crop_size, "crop_size")
    transforms: list[Transform] = [
        RandomResize(scale=scale, ratio_range=ratio_range, keep_ratio=True),
        RandomCrop(crop_size=crop, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
        RandomFlip(prob=flip_prob),
    ]
    if photometric:
        transforms.append(PhotoMetricDistortion())
    return TrainPipeline(transforms, PackTrainSample(crop, ignore_index=ignore_index))


def build_eval_pipeline(scale: tuple[int, int] | None) -> Compose:
    """The reference test pipeline: optional keep-ratio resize of the image only, normalise, tensors.

    The label keeps its original resolution so metrics are computed at full resolution, like mmseg.
    """
    transforms: list[Transform] = []
    if scale is not None:
        transforms.append(Resize(scale=scale, keep_ratio=True, resize_label=False))
    transforms += [Normalize(), ToTensor()]
    return Compose(transforms)
