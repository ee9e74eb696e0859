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
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

from segdistill.errors import UserError

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
    "rescale_size",
    "build_train_pipeline",
    "build_eval_pipeline",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

#: RGB mean/std on the 0-255 scale, the reference's (ImageNet) normalisation.
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

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
            raise UserError(f"ratio_range must be (min, max) with 0 < min <= max, got {tuple(ratio_range)}; fix it in the config")
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

    def __init__(self, scale: tuple[int, int] = (2048, 1024), keep_ratio: bool = True, resize_label: bool = False) -> None:
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
        counts = np.bincount(crop.ravel(), minlength=256)
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
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio}, ignore_index={self.ignore_index})"


class RandomFlip:
    """Horizontal flip of image and label together with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        if not 0 <= prob <= 1:
            raise UserError(f"flip prob must be in [0, 1], got {prob}; fix it in the config")
        self.prob = float(prob)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.prob:
            # Contiguous copies: OpenCV refuses the negative strides of a flipped view.
            image = np.ascontiguousarray(image[:, ::-1])
            label = np.ascontiguousarray(label[:, ::-1])
        return image, label

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # The reference's `convert`: affine in float32, clip to [0, 255], truncate back to uint8.
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg ``PhotoMetricDistortion``: brightness, contrast, saturation and hue jitter on a uint8 image.

    Order and probabilities are the reference's: brightness (p=0.5, delta uniform in
    ``[-brightness_delta, brightness_delta]``); a fair coin ``mode`` puts contrast first (mode 1) or
    last (mode 0); saturation and hue are each applied with p=0.5 in OpenCV's uint8 HSV (H in
    [0, 180), hue shift an integer in ``[-hue_delta, hue_delta)``); contrast has p=0.5. Every step
    clips to [0, 255] and truncates to uint8. Our images are RGB, so the HSV conversion is
    ``COLOR_RGB2HSV`` where mmseg uses ``COLOR_BGR2HSV`` on BGR: the same H, S, V either way.
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

    def _brightness(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return _convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        return img

    def _contrast(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def _saturation(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*self.saturation_range))
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return img

    def _hue(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            # numpy's legacy randint(-d, d) excludes d; rng.integers has the same half-open range.
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + shift) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return img

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if image.dtype != np.uint8:
            raise UserError("PhotoMetricDistortion needs a uint8 image: put it before Normalize in the pipeline")
        img = np.ascontiguousarray(image)
        img = self._brightness(img, rng)
        mode = rng.integers(2)
        if mode == 1:
            img = self._contrast(img, rng)
        img = self._saturation(img, rng)
        img = self._hue(img, rng)
        if mode == 0:
            img = self._contrast(img, rng)
        return img, label

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, contrast_range={self.contrast_range}, "
            f"saturation_range={self.saturation_range}, hue_delta={self.hue_delta})"
        )


class Normalize:
    """``(image - mean) / std`` per RGB channel in float32, as mmseg's ``SegDataPreProcessor`` computes it."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UserError(f"Normalize needs 3 means and 3 positive stds, got mean={tuple(mean)} std={tuple(std)}; fix the config")
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

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        lbl = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return img, lbl

    def __repr__(self) -> str:
        return "ToTensor()"


def build_train_pipeline(
    crop_size: int | tuple[int, int],
    scale: tuple[int, int],
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    ignore_index: int = 255,
) -> Compose:
    """The reference training pipeline: random resize, crop, flip, photometric jitter, normalise, pad, tensors.

    ``crop_size`` is ``(h, w)``, ``scale`` is ``(w, h)`` (mmseg's own conventions, e.g. Cityscapes
    ``crop_size=(512, 1024)``, ``scale=(2048, 1024)``).
    """
    crop = _pair(crop_size, "crop_size")
    transforms: list[Transform] = [
        RandomResize(scale=scale, ratio_range=ratio_range, keep_ratio=True),
        RandomCrop(crop_size=crop, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
        RandomFlip(prob=flip_prob),
    ]
    if photometric:
        transforms.append(PhotoMetricDistortion())
    transforms += [Normalize(), Pad(size=crop, image_value=0.0, label_value=ignore_index), ToTensor()]
    return Compose(transforms)


def build_eval_pipeline(scale: tuple[int, int] | None) -> Compose:
    """The reference test pipeline: optional keep-ratio resize of the image only, normalise, tensors.

    The label keeps its original resolution so metrics are computed at full resolution, like mmseg.
    """
    transforms: list[Transform] = []
    if scale is not None:
        transforms.append(Resize(scale=scale, keep_ratio=True, resize_label=False))
    transforms += [Normalize(), ToTensor()]
    return Compose(transforms)
