"""predict: palette PNGs hold exactly the argmax of model.inference, at the original size, for any input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.data.datasets import read_image
from segdistill.data.preprocess import normalize_image
from segdistill.data.transforms import rescale_size
from segdistill.errors import UserError
from segdistill.evaluation.predict import collect_images, colorize, default_palette, overlay, predict
from segdistill.models import MEAN_RGB, STD_RGB, build_segmentor

NUM_CLASSES = 5
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_segmentor("pspnet_r18-d8-tiny", NUM_CLASSES).eval()
    with torch.no_grad():
        # Random-init logits are nearly flat; sharper ones make the argmax vary across the image.
        m.decode_head.conv_seg.weight.mul_(300)
    return m


def write_image(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    rgb = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)  # smooth, so regions differ in class
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def expected_pred(model: torch.nn.Module, path: Path, eval_scale: tuple[int, int] | None = None,
                  **kwargs: object) -> np.ndarray:
    rgb = read_image(path)
    h, w = rgb.shape[:2]
    if eval_scale is not None:
        nh, nw = rescale_size((h, w), eval_scale)
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(rgb).float()
    x = ((x - torch.tensor(MEAN_RGB)) / torch.tensor(STD_RGB)).permute(2, 0, 1)[None]
    scores = model.inference(x, out_size=(h, w), **kwargs)
    return scores[0].argmax(0).numpy().astype(np.uint8)


def read_pred(path: Path) -> tuple[np.ndarray, list[int], str]:
    with Image.open(path) as im:
        return np.array(im), im.getpalette() or [], im.mode


def test_single_image_pred_equals_inference_argmax(model: torch.nn.Module, tmp_path: Path) -> None:
    img = write_image(tmp_path / "in" / "street.png", 44, 60, seed=1)
    out = tmp_path / "out"
    written = predict(model, img, out, PALETTE)
    assert written == [out / "street_pred.png", out / "street_overlay.jpg"]
    values, palette, mode = read_pred(written[0])
    assert mode == "P"
    assert values.shape == (44, 60)
    want = expected_pred(model, img)
    assert len(np.unique(want)) > 1  # the comparison below would be weak on a constant map
    np.testing.assert_array_equal(values, want)
    assert [tuple(palette[3 * i:3 * i + 3]) for i in range(NUM_CLASSES)] == PALETTE
    with Image.open(written[1]) as ov:
        assert ov.format == "JPEG" and ov.size == (60, 44)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_eval_scale_predicts_at_original_size(model: torch.nn.Module, tmp_path: Path) -> None:
    img = write_image(tmp_path / "in" / "a.jpg", 40, 56, seed=2)
    written = predict(model, img, tmp_path / "out", PALETTE, eval_scale=(28, 20))
    values, _, _ = read_pred(written[0])
    assert values.shape == (40, 56)
    assert rescale_size((40, 56), (28, 20)) == (20, 28)  # the network really ran on a smaller image
    np.testing.assert_array_equal(values, expected_pred(model, img, eval_scale=(28, 20)))


def test_slide_and_flip_are_passed_to_inference(model: torch.nn.Module, tmp_path: Path) -> None:
    img = write_image(tmp_path / "in" / "b.png", 48, 64, seed=3)
    kw = dict(mode="slide", crop_size=(32, 32), stride=(24, 24), flip=True)
    written = predict(model, img, tmp_path / "out", PALETTE, **kw)
    np.testing.assert_array_equal(read_pred(written[0])[0], expected_pred(model, img, **kw))
    # Not vacuous: dropping the options (plain whole-image inference) would give another map.
    assert (expected_pred(model, img) != read_pred(written[0])[0]).any()


def test_folder_is_recursive_and_mirrors_subfolders(model: torch.nn.Module, tmp_path: Path) -> None:
    src = tmp_path / "images"
    write_image(src / "x.png", 24, 32, seed=4)
    write_image(src / "day" / "x.jpg", 32, 24, seed=5)
    write_image(src / "night" / "x.PNG", 24, 24, seed=6)
    (src / "notes.txt").write_text("not an image")
    write_image(src / ".hidden.png", 16, 16, seed=7)
    assert collect_images(src) == [src / "day" / "x.jpg", src / "night" / "x.PNG", src / "x.png"]
    out = tmp_path / "out"
    written = predict(model, src, out, PALETTE, progress=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "day/x_overlay.jpg", "day/x_pred.png", "night/x_overlay.jpg", "night/x_pred.png",
        "x_overlay.jpg", "x_pred.png"]
    for image, pred in [(src / "day" / "x.jpg", out / "day" / "x_pred.png"), (src / "x.png", out / "x_pred.png")]:
        np.testing.assert_array_equal(read_pred(pred)[0], expected_pred(model, image))
    assert set(written) == {p for p in out.rglob("*") if p.is_file()}


def test_list_of_files_and_dataset_inputs(model: torch.nn.Module, tmp_path: Path) -> None:
    a = write_image(tmp_path / "a" / "img.png", 24, 32, seed=8)
    b = write_image(tmp_path / "b" / "img.png", 24, 32, seed=9)
    written = predict(model, [a, b], tmp_path / "out", PALETTE)
    assert written[0] == tmp_path / "out" / "a" / "img_pred.png"
    assert written[2] == tmp_path / "out" / "b" / "img_pred.png"

    class Images:  # the part of a dataset predict uses
        names = ["seq1/f0", "seq2/f0"]

        def __len__(self) -> int:
            return 2

        def image_path(self, i: int) -> Path:
            return [a, b][i]

    written = predict(model, Images(), tmp_path / "ds", PALETTE)
    assert written[::2] == [tmp_path / "ds" / "seq1" / "f0_pred.png", tmp_path / "ds" / "seq2" / "f0_pred.png"]
    np.testing.assert_array_equal(read_pred(written[2])[0], expected_pred(model, b))


def test_default_palette_and_overlay_math(model: torch.nn.Module, tmp_path: Path) -> None:
    colors = default_palette(NUM_CLASSES)
    assert len(set(colors)) == NUM_CLASSES
    img = write_image(tmp_path / "in" / "c.png", 24, 32, seed=10)
    written = predict(model, img, tmp_path / "out", None)
    _, palette, _ = read_pred(written[0])
    assert [tuple(palette[3 * i:3 * i + 3]) for i in range(NUM_CLASSES)] == colors
    rgb = np.array([[[100, 0, 255]]], dtype=np.uint8)
    mask = colorize(np.array([[2]]), np.array(PALETTE, dtype=np.uint8))
    assert mask.tolist() == [[[0, 0, 255]]]
    assert overlay(rgb, mask, 0.25).tolist() == [[[75, 0, 255]]]


def test_normalize_image_matches_reference_preprocessing() -> None:
    rgb = np.array([[[0, 128, 255]]], dtype=np.uint8)
    x = normalize_image(rgb)
    assert x.shape == (1, 3, 1, 1)
    want = [(v - m) / s for v, m, s in zip((0, 128, 255), MEAN_RGB, STD_RGB, strict=False)]
    torch.testing.assert_close(x.flatten(), torch.tensor(want), rtol=0, atol=1e-6)


def test_errors(model: torch.nn.Module, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images")
    with pytest.raises(UserError, match="no images"):
        predict(model, empty, tmp_path / "out", PALETTE)
    with pytest.raises(UserError, match="does not exist"):
        collect_images(tmp_path / "missing")
    with pytest.raises(UserError, match="not an image file"):
        collect_images(empty / "readme.txt")

    broken = tmp_path / "broken" / "bad.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(UserError, match="bad.png"):
        predict(model, broken, tmp_path / "out2", PALETTE)

    src = tmp_path / "src"
    img = write_image(src / "d.png", 16, 16, seed=11)
    before = img.read_bytes()
    with pytest.raises(UserError, match="contains the input"):
        predict(model, src, src, PALETTE)
    with pytest.raises(UserError, match="contains the input"):
        predict(model, img, tmp_path, PALETTE)
    assert img.read_bytes() == before and sorted(src.iterdir()) == [img]

    write_image(src / "d.jpg", 16, 16, seed=12)
    with pytest.raises(UserError, match="both be written"):
        predict(model, src, tmp_path / "out3", PALETTE)
    with pytest.raises(UserError, match="5 classes"):
        predict(model, img, tmp_path / "out4", PALETTE[:3])
    with pytest.raises(UserError, match="opacity"):
        predict(model, img, tmp_path / "out5", PALETTE, opacity=1.5)
    assert not (tmp_path / "out3").exists() and not (tmp_path / "out4").exists()
