"""Paired transforms: shapes, label safety, reference (mmseg/mmcv) arithmetic, determinism."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from segdistill.data.preprocess import DataPreprocessor
from segdistill.data.transforms import (
    MEAN_RGB,
    STD_RGB,
    Normalize,
    PackTrainSample,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    Resize,
    ToTensor,
    TrainPipeline,
    build_eval_pipeline,
    build_train_pipeline,
    class_counts,
    rescale_size,
)
from segdistill.errors import UserError


def coord_image(h: int, w: int) -> np.ndarray:
    """An image whose pixel (y, x) is (y, x, y+x mod 256): any crop tells where it came from."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([ys, xs, (ys + xs) % 256], axis=2).astype(np.uint8)


def blocky_label(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.choice(np.array([0, 3, 7, 255], dtype=np.uint8), size=(h // 8 + 1, w // 8 + 1))
    return np.kron(small, np.ones((8, 8), dtype=np.uint8))[:h, :w].copy()


class ScriptedRng:
    """Stands in for a Generator: returns scripted values, so every branch can be forced."""

    def __init__(self, ints: list[int], uniforms: list[float]) -> None:
        self.ints, self.uniforms = list(ints), list(uniforms)

    def integers(self, low: int, high: int | None = None) -> int:
        return self.ints.pop(0)

    def uniform(self, low: float, high: float) -> float:
        return self.uniforms.pop(0)


# --------------------------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    "old_hw, scale, expected",
    [
        ((1024, 2048), (2048, 1024), (1024, 2048)),  # Cityscapes at ratio 1: unchanged
        ((1024, 2048), (1024, 512), (512, 1024)),  # ratio 0.5
        ((360, 480), (480, 360), (360, 480)),  # CamVid at ratio 1
        ((360, 480), (960, 720), (720, 960)),  # CamVid at ratio 2
        ((100, 300), (2048, 1024), (683, 2048)),  # long edge binds: 2048/300 = 6.8267, 100*6.8267 = 682.67 -> 683
        ((300, 100), (2048, 1024), (2048, 683)),  # orientation does not matter with keep_ratio
        ((1000, 1000), (2048, 1024), (1024, 1024)),  # short edge binds
        ((3, 5), (7, 3), (3, 5)),  # min(7/5, 3/3) = 1
        ((2, 3), (5, 3), (3, 5)),  # factor 1.5: 2*1.5=3, 3*1.5=4.5 rounds half up to 5
    ],
)
def test_rescale_size_matches_mmcv_arithmetic(old_hw, scale, expected) -> None:
    assert rescale_size(old_hw, scale) == expected


def test_random_resize_uses_ratio_times_scale_and_keeps_ratio() -> None:
    image, label = coord_image(60, 80), blocky_label(60, 80)
    t = RandomResize(scale=(80, 60), ratio_range=(0.5, 2.0), keep_ratio=True)
    sizes = set()
    for seed in range(20):
        out_img, out_lbl = t(image, label, np.random.default_rng(seed))
        ratio = np.random.default_rng(seed).random() * 1.5 + 0.5  # what the transform must draw first
        target = (int(80 * ratio), int(60 * ratio))
        assert out_img.shape[:2] == rescale_size((60, 80), target)
        assert out_lbl.shape == out_img.shape[:2]
        assert out_img.dtype == np.uint8 and out_lbl.dtype == np.uint8
        assert set(np.unique(out_lbl)) <= set(np.unique(label))
        sizes.add(out_img.shape[:2])
    assert len(sizes) > 10  # the ratio really varies


def test_random_resize_without_keep_ratio_hits_the_target_exactly() -> None:
    t = RandomResize(scale=(100, 40), ratio_range=(1.0, 1.0), keep_ratio=False)
    out_img, out_lbl = t(coord_image(60, 80), blocky_label(60, 80), np.random.default_rng(0))
    assert out_img.shape == (40, 100, 3) and out_lbl.shape == (40, 100)


def test_resize_label_is_nearest_and_image_bilinear() -> None:
    label = np.zeros((4, 4), dtype=np.uint8)
    label[:, 2:] = 9
    image = np.repeat(label[:, :, None] * 20, 3, axis=2).astype(np.uint8)
    out_img, out_lbl = Resize(scale=(8, 8), keep_ratio=True, resize_label=True)(image, label, np.random.default_rng(0))
    assert set(np.unique(out_lbl)) == {0, 9}  # nearest never invents an in-between class
    assert len(np.unique(out_img)) > 2  # bilinear blends the image edge
    expected = cv2.resize(image, (8, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out_img, expected)


def test_eval_resize_keeps_label_at_original_size_by_default() -> None:
    image, label = coord_image(30, 40), blocky_label(30, 40)
    out_img, out_lbl = Resize(scale=(80, 60))(image, label, np.random.default_rng(0))
    assert out_img.shape == (60, 80, 3)
    assert out_lbl is label


# --------------------------------------------------------------------------------------------- crop


def test_random_crop_is_a_window_of_image_and_label_at_the_same_place() -> None:
    image, label = coord_image(50, 70), blocky_label(50, 70)
    t = RandomCrop(crop_size=(20, 30), cat_max_ratio=1.0)
    offsets = set()
    for seed in range(30):
        out_img, out_lbl = t(image, label, np.random.default_rng(seed))
        assert out_img.shape == (20, 30, 3) and out_lbl.shape == (20, 30)
        y0, x0 = int(out_img[0, 0, 0]), int(out_img[0, 0, 1])
        np.testing.assert_array_equal(out_img, image[y0 : y0 + 20, x0 : x0 + 30])
        np.testing.assert_array_equal(out_lbl, label[y0 : y0 + 20, x0 : x0 + 30])
        assert 0 <= y0 <= 30 and 0 <= x0 <= 40
        offsets.add((y0, x0))
    assert len(offsets) > 20


def test_random_crop_smaller_image_gives_smaller_crop() -> None:
    crop = RandomCrop(crop_size=(64, 64))
    out_img, out_lbl = crop(coord_image(20, 100), blocky_label(20, 100), np.random.default_rng(0))
    assert out_img.shape == (20, 64, 3) and out_lbl.shape == (20, 64)


def _passes(crop: np.ndarray, ratio: float, ignore: int = 255) -> bool:
    values, counts = np.unique(crop, return_counts=True)
    counts = counts[values != ignore]
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


def test_cat_max_ratio_is_honoured_when_possible() -> None:
    # Columns 0-47 are class 0, 48-63 class 1; only 8 of 33 horizontal offsets give an acceptable
    # 32-wide crop (p = 0.24), so without the retry loop most crops fail, with it ~95% pass.
    label = np.zeros((64, 64), dtype=np.uint8)
    label[:, 48:] = 1
    image = coord_image(64, 64)
    with_ratio = RandomCrop(crop_size=(32, 32), cat_max_ratio=0.75)
    without = RandomCrop(crop_size=(32, 32), cat_max_ratio=1.0)
    ok_with = sum(_passes(with_ratio(image, label, np.random.default_rng(s))[1], 0.75) for s in range(200))
    ok_without = sum(_passes(without(image, label, np.random.default_rng(s))[1], 0.75) for s in range(200))
    assert ok_with >= 175
    assert ok_without <= 80


def test_cat_max_ratio_keeps_last_crop_when_impossible() -> None:
    label = np.full((40, 40), 5, dtype=np.uint8)  # one class: no crop can pass
    crop = RandomCrop(crop_size=(16, 16), cat_max_ratio=0.75)
    out_img, out_lbl = crop(coord_image(40, 40), label, np.random.default_rng(3))
    assert out_img.shape == (16, 16, 3) and (out_lbl == 5).all()


def test_cat_max_ratio_does_not_count_ignored_pixels() -> None:
    # Every crop is 75% ignore and 12.5% each of classes 0 and 1: it passes only if 255 is not counted,
    # so the first crop is kept and equals the crop drawn without the ratio check.
    label = np.full((64, 64), 255, dtype=np.uint8)
    label[::4, ::2] = 0
    label[::4, 1::2] = 1
    image = coord_image(64, 64)
    for seed in range(10):
        a = RandomCrop((32, 32), cat_max_ratio=0.75)(image, label, np.random.default_rng(seed))
        b = RandomCrop((32, 32), cat_max_ratio=1.0)(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(a[0], b[0])
    # ...whereas with ignore_index set to another value the 255s count and crops get redrawn.
    moved = [
        not np.array_equal(
            RandomCrop((32, 32), cat_max_ratio=0.75, ignore_index=254)(image, label, np.random.default_rng(s))[0],
            RandomCrop((32, 32), cat_max_ratio=1.0)(image, label, np.random.default_rng(s))[0],
        )
        for s in range(10)
    ]
    assert sum(moved) >= 8


# --------------------------------------------------------------------------------------------- flip


def test_flip_moves_image_and_label_together() -> None:
    image, label = coord_image(10, 12), blocky_label(10, 12)
    out_img, out_lbl = RandomFlip(prob=1.0)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_img, image[:, ::-1])
    np.testing.assert_array_equal(out_lbl, label[:, ::-1])
    assert out_img.flags.c_contiguous and out_lbl.flags.c_contiguous
    same_img, same_lbl = RandomFlip(prob=0.0)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(same_img, image)
    flips = sum(RandomFlip(0.5)(image, label, np.random.default_rng(s))[0][0, 0, 1] == 11 for s in range(200))
    assert 70 <= flips <= 130


# --------------------------------------------------------------------------------------------- photometric


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def mmseg_distortion_on_bgr(bgr: np.ndarray, delta: float, sat: float, hue: int, con: float) -> np.ndarray:
    """The reference's mode-0 path, written out on a BGR image with BGR2HSV as mmseg does."""
    img = _convert(bgr, beta=delta)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=sat)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + hue) % 180
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return _convert(img, alpha=con)


def test_photometric_matches_reference_on_rgb_colour_order() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    label = blocky_label(16, 16)
    # brightness on (+12.5), mode 0, saturation on (x1.3), hue on (+7), contrast on (x0.8)
    rng = ScriptedRng(ints=[1, 0, 1, 1, 7, 1], uniforms=[12.5, 1.3, 0.8])
    out, out_lbl = PhotoMetricDistortion()(rgb, label, rng)  # type: ignore[arg-type]
    assert rng.ints == [] and rng.uniforms == []  # exactly the reference's draws
    expected_bgr = mmseg_distortion_on_bgr(rgb[:, :, ::-1].copy(), 12.5, 1.3, 7, 0.8)
    np.testing.assert_array_equal(out, expected_bgr[:, :, ::-1])
    assert out_lbl is label
    # Teeth: treating our RGB as BGR would give a different image.
    wrong = mmseg_distortion_on_bgr(rgb, 12.5, 1.3, 7, 0.8)
    assert not np.array_equal(out, wrong)


def test_photometric_mode_1_puts_contrast_first() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rng = ScriptedRng(ints=[0, 1, 1, 0, 0], uniforms=[1.4])  # no brightness, mode 1, contrast x1.4, no sat/hue
    out, _ = PhotoMetricDistortion()(rgb, blocky_label(8, 8), rng)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, _convert(rgb, alpha=1.4))


def test_photometric_is_identity_when_every_coin_misses() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for mode in (0, 1):
        rng = ScriptedRng(ints=[0, mode, 0, 0, 0], uniforms=[])
        out, _ = PhotoMetricDistortion()(rgb, blocky_label(8, 8), rng)  # type: ignore[arg-type]
        np.testing.assert_array_equal(out, rgb)


def test_photometric_clips_instead_of_wrapping() -> None:
    bright = np.full((4, 4, 3), 250, dtype=np.uint8)
    out, _ = PhotoMetricDistortion()(bright, blocky_label(4, 4), ScriptedRng([1, 0, 0, 0, 0], [32.0]))  # type: ignore[arg-type]
    assert (out == 255).all()
    dark = np.full((4, 4, 3), 5, dtype=np.uint8)
    out, _ = PhotoMetricDistortion()(dark, blocky_label(4, 4), ScriptedRng([1, 0, 0, 0, 0], [-32.0]))  # type: ignore[arg-type]
    assert (out == 0).all()


def test_photometric_random_runs_stay_uint8_and_reproducible() -> None:
    rgb = coord_image(24, 24)
    outs = [PhotoMetricDistortion()(rgb, blocky_label(24, 24), np.random.default_rng(s))[0] for s in range(30)]
    assert all(o.dtype == np.uint8 and o.shape == rgb.shape for o in outs)
    assert sum(not np.array_equal(o, rgb) for o in outs) > 20
    again = PhotoMetricDistortion()(rgb, blocky_label(24, 24), np.random.default_rng(7))[0]
    np.testing.assert_array_equal(again, outs[7])


def test_photometric_refuses_float_images() -> None:
    with pytest.raises(UserError, match="before Normalize"):
        PhotoMetricDistortion()(np.zeros((4, 4, 3), np.float32), blocky_label(4, 4), np.random.default_rng(0))


# --------------------------------------------------------------------------------------------- normalise, pad, tensor


def test_normalize_is_rgb_mean_std_in_float32() -> None:
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 10)
    out, _ = Normalize()(image, blocky_label(2, 3), np.random.default_rng(0))
    assert out.dtype == np.float32
    mean, std = np.float32(MEAN_RGB), np.float32(STD_RGB)
    np.testing.assert_array_equal(out[0, 0], (np.float32([255, 0, 10]) - mean) / std)
    np.testing.assert_array_equal(out[1, 1], -mean / std)
    assert out[0, 0, 0] == pytest.approx((255 - 123.675) / 58.395, rel=1e-6)


def test_pad_bottom_right_with_image_and_label_values() -> None:
    image = np.ones((5, 6, 3), dtype=np.float32)
    label = np.full((5, 6), 2, dtype=np.uint8)
    out_img, out_lbl = Pad(size=(8, 10), image_value=0.0, label_value=255)(image, label, np.random.default_rng(0))
    assert out_img.shape == (8, 10, 3) and out_lbl.shape == (8, 10)
    assert (out_img[:5, :6] == 1).all() and (out_img[5:] == 0).all() and (out_img[:, 6:] == 0).all()
    assert (out_lbl[:5, :6] == 2).all() and (out_lbl[5:] == 255).all() and (out_lbl[:, 6:] == 255).all()
    big_img, big_lbl = Pad(size=(3, 3))(image, label, np.random.default_rng(0))
    assert big_img.shape == (5, 6, 3) and big_lbl.shape == (5, 6)


def test_to_tensor_layout_and_dtypes() -> None:
    image = coord_image(4, 5).astype(np.float32)
    label = blocky_label(4, 5)
    img_t, lbl_t = ToTensor()(image, label, np.random.default_rng(0))
    assert img_t.dtype == torch.float32 and img_t.shape == (3, 4, 5) and img_t.is_contiguous()
    assert lbl_t.dtype == torch.int64 and lbl_t.shape == (4, 5) and lbl_t.is_contiguous()
    assert img_t[1, 2, 3].item() == 3.0  # channel 1 holds x
    assert torch.equal(lbl_t, torch.from_numpy(label.astype(np.int64)))


# --------------------------------------------------------------------------------------------- pipelines


def test_train_pipeline_shapes_labels_and_determinism() -> None:
    image, label = coord_image(60, 80), blocky_label(60, 80)
    pipe = build_train_pipeline(crop_size=(32, 48), scale=(80, 60), ratio_range=(0.5, 2.0))
    assert isinstance(pipe, TrainPipeline)
    allowed = set(np.unique(label).tolist()) | {255}
    outs = []
    for seed in range(12):
        img_t, lbl_t, valid = pipe(image, label, np.random.default_rng([5, seed]))
        # The worker ships uint8 (normalisation happens on the training device).
        assert img_t.shape == (3, 32, 48) and img_t.dtype == torch.uint8 and img_t.is_contiguous()
        assert lbl_t.shape == (32, 48) and lbl_t.dtype == torch.uint8
        assert valid.dtype == torch.int64 and valid.shape == (2,)
        assert set(torch.unique(lbl_t).tolist()) <= allowed
        outs.append((img_t, lbl_t))
    again = pipe(image, label, np.random.default_rng([5, 3]))
    assert torch.equal(again[0], outs[3][0]) and torch.equal(again[1], outs[3][1])
    assert not torch.equal(outs[0][0], outs[1][0])


def test_train_pipeline_pads_small_crops_with_zero_and_ignore() -> None:
    # ratio 0.5 of a 40x40 scale shrinks a 40x40 image to 20x20 < the 32x32 crop: the rest is padding.
    image, label = coord_image(40, 40), np.zeros((40, 40), dtype=np.uint8)
    pipe = build_train_pipeline(crop_size=(32, 32), scale=(40, 40), ratio_range=(0.5, 0.5), photometric=False,
                                flip_prob=0.0)
    img_t, lbl_t, valid = pipe(image, label, np.random.default_rng(0))
    assert img_t.shape == (3, 32, 32) and valid.tolist() == [20, 20]
    assert (lbl_t[:20, :20] == 0).all() and (lbl_t[20:] == 255).all() and (lbl_t[:, 20:] == 255).all()
    # After the device's normalisation the padding is 0, the mean colour (as Normalize then Pad gave).
    x, y = DataPreprocessor()(img_t[None], lbl_t[None], valid[None])
    assert (x[0, :, 20:] == 0).all() and (x[0, :, :, 20:] == 0).all() and (x[0, :, :20, :20] != 0).any()
    assert (y[0, :20, :20] == 0).all() and (y[0, 20:] == 255).all() and (y[0, :, 20:] == 255).all()


def test_eval_pipeline_keeps_label_resolution() -> None:
    image, label = coord_image(30, 40), blocky_label(30, 40)
    img_t, lbl_t = build_eval_pipeline(scale=(80, 60))(image, label, np.random.default_rng(0))
    assert img_t.shape == (3, 60, 80) and lbl_t.shape == (30, 40)
    img_t, lbl_t = build_eval_pipeline(scale=None)(image, label, np.random.default_rng(0))
    assert img_t.shape == (3, 30, 40)
    mean, std = torch.tensor(MEAN_RGB).view(3, 1, 1), torch.tensor(STD_RGB).view(3, 1, 1)
    expected = (torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) - mean) / std
    torch.testing.assert_close(img_t, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomCrop(crop_size=0),
        lambda: RandomCrop(crop_size=(32, 32), cat_max_ratio=1.5),
        lambda: RandomResize(scale=(10, 10), ratio_range=(2.0, 0.5)),
        lambda: RandomFlip(prob=2.0),
        lambda: Pad(size=(-1, 4)),
        lambda: Normalize(mean=(1, 2), std=(1, 1)),
        lambda: build_train_pipeline(crop_size="big", scale=(10, 10)),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_are_user_errors(make) -> None:
    with pytest.raises(UserError) as info:
        make()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ fast paths = reference arithmetic
# The transforms compute the reference's results faster (tables, cv2.calcHist, cv2.flip, uint8 workers with
# normalisation on the device). These tests replay the plain per-pixel reference code with the same random
# draws and demand the very same bytes / float32 values.


def reference_photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion pixel by pixel (on RGB with RGB2HSV), default parameters."""
    img = np.ascontiguousarray(img)
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + int(rng.integers(-18, 18))) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mode == 0 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(0.5, 1.5))
    return img


def street_like(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: every value range, saturated and grey pixels, hues across the circle."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([255 * xs / w, 255 * ys / h, 128 + 127 * np.sin(xs / 5 + ys / 7)], axis=2)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def test_photometric_tables_equal_per_pixel_reference_for_every_draw() -> None:
    big = street_like(70, 90, seed=0)
    view = big[5:62, 7:80]  # a crop view, as the pipeline hands it over (not contiguous)
    steps = set()
    for seed in range(300):
        out, _ = PhotoMetricDistortion()(view, blocky_label(57, 73), np.random.default_rng(seed))
        expected = reference_photometric(view, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, expected, err_msg=f"seed {seed}")
        probe = np.random.default_rng(seed)
        steps.add((int(probe.integers(2)), int(probe.integers(2))))
    assert len(steps) == 4  # brightness on/off x both contrast positions were exercised


def reference_crop_ok(crop: np.ndarray, ratio: float, ignore: int = 255) -> bool:
    values, counts = np.unique(crop, return_counts=True)
    counts = counts[values != ignore]
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_class_counts_equal_bincount_on_views(dtype) -> None:
    label = np.random.default_rng(0).choice(np.array([0, 1, 7, 200, 255]), size=(90, 130)).astype(dtype)
    for y0, x0, h, w in [(0, 0, 90, 130), (3, 5, 40, 77), (50, 100, 1, 30), (10, 0, 80, 1)]:
        view = label[y0 : y0 + h, x0 : x0 + w]
        np.testing.assert_array_equal(class_counts(view), np.bincount(view.ravel(), minlength=256))


def reference_train_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop: tuple[int, int],
                           scale: tuple[int, int], ratio_range: tuple[float, float],
                           cat_max_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The float pipeline as workers ran it before: every step in plain numpy, normalise and pad in the worker."""
    lo, hi = ratio_range
    ratio = rng.random() * (hi - lo) + lo
    hw = rescale_size(image.shape[:2], (int(scale[0] * ratio), int(scale[1] * ratio)))
    if hw != image.shape[:2]:
        image = cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)

    def bbox() -> tuple[int, int]:
        y = int(rng.integers(0, max(image.shape[0] - crop[0], 0) + 1))
        return y, int(rng.integers(0, max(image.shape[1] - crop[1], 0) + 1))

    y, x = bbox()
    for _ in range(10):
        if reference_crop_ok(label[y : y + crop[0], x : x + crop[1]], cat_max_ratio):
            break
        y, x = bbox()
    image, label = image[y : y + crop[0], x : x + crop[1]], label[y : y + crop[0], x : x + crop[1]]
    if rng.random() < 0.5:
        image, label = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    image = reference_photometric(image, rng)
    image = (image.astype(np.float32) - np.float32(MEAN_RGB)) / np.float32(STD_RGB)
    pad = ((0, crop[0] - image.shape[0]), (0, crop[1] - image.shape[1]))
    image = np.pad(image, (*pad, (0, 0)), constant_values=0.0)
    label = np.pad(label, pad, constant_values=255)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(label.astype(np.int64))


def test_uint8_pipeline_plus_device_preprocessor_equals_the_old_float_pipeline() -> None:
    # Structured labels with ignored areas make the cat_max_ratio check redraw crops; ratios from 0.3
    # make images smaller than the crop, so padding is exercised too.
    image = street_like(48, 64, seed=1)
    label = blocky_label(48, 64, seed=2)
    label[:, :20] = 3  # one dominant class on the left: many crops fail the 0.75 check
    crop, scale, ratio_range = (32, 40), (64, 48), (0.3, 2.0)
    pipe = build_train_pipeline(crop_size=crop, scale=scale, ratio_range=ratio_range, cat_max_ratio=0.75)
    pre = DataPreprocessor()
    padded = 0
    for seed in range(120):
        sample = pipe(image, label, np.random.default_rng([7, seed]))
        batch = torch.utils.data.default_collate([sample])
        x, y = pre(batch.image, batch.label, batch.valid_hw)
        ref_x, ref_y = reference_train_sample(image, label, np.random.default_rng([7, seed]), crop, scale, ratio_range,
                                              0.75)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x[0], ref_x), f"seed {seed}: image differs by {(x[0] - ref_x).abs().max():.3g}"
        assert torch.equal(y[0], ref_y), f"seed {seed}: label differs"
        padded += int(sample.valid_hw.tolist() != [32, 40])
    assert padded > 10


def test_preprocessor_pads_each_sample_of_a_batch_by_its_own_size() -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (3, 3, 6, 8), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 4, (3, 6, 8)).astype(np.int64))
    valid = torch.tensor([[6, 8], [4, 8], [6, 5]])
    before = labels.clone()
    x, y = DataPreprocessor()(images, labels, valid)
    assert torch.equal(labels, before)  # an int64 label batch is not written into
    mean, std = torch.tensor(MEAN_RGB).view(3, 1, 1), torch.tensor(STD_RGB).view(3, 1, 1)
    for i, (h, w) in enumerate(valid.tolist()):
        assert torch.equal(x[i, :, :h, :w], (images[i, :, :h, :w].float() - mean) / std)
        assert (x[i, :, h:] == 0).all() and (x[i, :, :, w:] == 0).all()
        assert torch.equal(y[i, :h, :w], labels[i, :h, :w])
        assert (y[i, h:] == 255).all() and (y[i, :, w:] == 255).all()
    x2, _ = DataPreprocessor()(images, labels)  # no sizes: every pixel is real
    assert torch.equal(x2, (images.float() - mean) / std)


def test_pack_train_sample_is_an_exact_channel_first_copy() -> None:
    big = street_like(40, 50, seed=3)
    view = big[3:30, 4:41]  # 27 x 37, not contiguous
    frozen = np.frombuffer(view.tobytes(), dtype=np.uint8).reshape(view.shape)  # read-only, as cache maps are
    label = blocky_label(27, 37)
    for src in (view, frozen):
        out = PackTrainSample((32, 40))(src, label)
        assert out.image.shape == (3, 32, 40) and out.image.is_contiguous() and out.valid_hw.tolist() == [27, 37]
        assert torch.equal(out.image[:, :27, :37], torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))))
        assert (out.image[:, 27:] == 0).all() and (out.image[:, :, 37:] == 0).all()
        assert torch.equal(out.label[:27, :37], torch.from_numpy(label)) and (out.label[27:] == 255).all()
    big_out = PackTrainSample((8, 8))(view, label)  # larger than the pad size: left alone
    assert big_out.image.shape == (3, 27, 37) and big_out.valid_hw.tolist() == [27, 37]
    with pytest.raises(UserError, match="uint8"):
        PackTrainSample((8, 8))(view.astype(np.float32), label)


def test_pack_train_sample_copies_itself_if_opencv_does_not_write_into_the_planes(monkeypatch) -> None:
    import segdistill.data.transforms as transforms

    view = street_like(40, 50, seed=4)[2:30, 3:40]
    monkeypatch.setattr(transforms.cv2, "split", lambda image, planes: [image[:, :, c].copy() for c in range(3)])
    out = PackTrainSample((32, 40))(view, blocky_label(28, 37))
    assert torch.equal(out.image[:, :28, :37], torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1))))
