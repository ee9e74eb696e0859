"""The libspng fast path for PNG images and labels (`segdistill[fastpng]`): the same pixels as OpenCV and
Pillow for every PNG flavour, and a damaged file is still an error, never wrong pixels."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segdistill.data import datasets
from segdistill.data.datasets import read_image, read_label_array
from segdistill.errors import UserError

pyspng = pytest.importorskip("pyspng")  # the fastpng extra; CI has it (tests/skip_policy.py)


def _scene(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Gradients, edges and noise, so that libpng's adaptive filters use several filter types."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.int32)
    rgb[h // 3:h // 2] = rng.integers(0, 256, (h // 2 - h // 3, w, 3))
    rgb += rng.integers(-6, 7, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _opencv_rgb(path: Path) -> np.ndarray:
    """The reference's decode: mmseg's LoadImageFromFile (cv2, BGR) and a BGR->RGB conversion."""
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """``png`` with one ancillary chunk inserted right after IHDR (valid CRC)."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[:33] + chunk + png[33:]


def _flavours(tmp: Path) -> dict[str, Path]:
    rgb = _scene()
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = tmp / f"{name}.png"
        files[name].write_bytes(data)

    for level in (1, 9):
        ok, buf = cv2.imencode(".png", rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, level])
        assert ok
        put(f"rgb8_opencv_level{level}", buf.tobytes())
    Image.fromarray(rgb).save(tmp / "rgb8_pillow.png")
    files["rgb8_pillow"] = tmp / "rgb8_pillow.png"
    put("rgb8_with_gamma", _with_chunk(files["rgb8_pillow"].read_bytes(), b"gAMA", struct.pack(">I", 100000)))
    Image.fromarray(rgb[..., 0]).save(tmp / "grey8.png")
    files["grey8"] = tmp / "grey8.png"
    Image.fromarray(rgb).convert("P").save(tmp / "palette.png")
    files["palette"] = tmp / "palette.png"
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp / "rgba8.png")
    files["rgba8"] = tmp / "rgba8.png"
    ok, buf = cv2.imencode(".png", (rgb[..., ::-1].astype(np.uint16) * 257 + 3))
    put("rgb16", buf.tobytes())
    return files


def test_every_png_flavour_decodes_to_opencvs_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_load = pyspng.load

    def counting_load(data: bytes, *args: object) -> np.ndarray:
        calls.append(len(data))
        return real_load(data, *args)

    monkeypatch.setattr(datasets.pyspng, "load", counting_load)
    for name, path in _flavours(tmp_path).items():
        before = len(calls)
        image = read_image(path)
        assert image.dtype == np.uint8 and image.shape == (48, 64, 3), name
        assert np.array_equal(image, _opencv_rgb(path)), name
        # The fast path takes exactly the 8-bit RGB files; the others go to OpenCV as before.
        assert (len(calls) > before) == name.startswith("rgb8"), name


def test_grey_label_pngs_decode_to_pillows_indices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_load = pyspng.load
    monkeypatch.setattr(datasets.pyspng, "load", lambda data, *a: calls.append(1) or real_load(data, *a))
    labels = np.random.default_rng(1).integers(0, 20, (40, 56)).astype(np.uint8)
    labels[:10] = 255
    Image.fromarray(labels).save(tmp_path / "grey.png")
    cv2.imwrite(str(tmp_path / "grey_opencv.png"), labels)
    Image.fromarray(labels).convert("P").save(tmp_path / "palette.png")  # indices, not the palette's colours
    for name in ("grey.png", "grey_opencv.png", "palette.png"):
        path = tmp_path / name
        assert np.array_equal(read_label_array(path), np.array(Image.open(path))), name
    assert len(calls) == 2  # the two greyscale files


@pytest.mark.parametrize("damage", ["flip_idat_byte", "cut_before_iend"])
def test_a_damaged_png_is_an_error_not_wrong_pixels(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "rgb8_pillow.png"
    Image.fromarray(_scene()).save(path, compress_level=0)  # stored deflate blocks: the bytes are the pixels
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    if damage == "flip_idat_byte":
        # One pixel byte: libspng, told by pyspng to use data whatever its CRC says (and not checking
        # zlib's Adler-32 either), would decode a wrong image; the CRC check sends the file to OpenCV,
        # which refuses it.
        data[idat + 4 + 200] ^= 0x01
    else:
        data = data[:data.index(b"IEND") - 4]
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"image .*rgb8_pillow.png is unreadable or truncated"):
        read_image(path)
    label = tmp_path / "label.png"
    Image.fromarray(np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)).save(label, compress_level=0)
    raw = bytearray(label.read_bytes())
    raw[raw.index(b"IDAT") + 4 + 200] ^= 0x01
    label.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"label .*label.png is unreadable or truncated"):
        read_label_array(label)


def test_without_pyspng_opencv_decodes_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _flavours(tmp_path)
    fast = {name: read_image(path) for name, path in files.items()}
    monkeypatch.setattr(datasets, "pyspng", None)
    for name, path in files.items():
        assert np.array_equal(read_image(path), fast[name]), name
