"""The decoded-image cache: exact pixels, resumable and atomic builds, staleness, fallback with a warning."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.data import cache as cache_mod
from segdistill.data.cache import CacheWarning, DecodedCache, build_decoded_cache, read_entry
from segdistill.data.datasets import CamVidDataset, CityscapesDataset, FolderDataset, TrainSet, read_image
from segdistill.data.sampler import InfiniteSampler
from segdistill.data.transforms import build_train_pipeline
from segdistill.errors import UserError


def textured(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    base = np.stack([xs * 255 // w, ys * 255 // h, (xs * ys) % 256], axis=2)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def make_cityscapes(root: Path, n: int = 4, h: int = 24, w: int = 40) -> None:
    for i in range(n):
        city = ("aachen", "bonn")[i % 2]
        stem = f"{city}_000000_{i:06d}"
        img_dir, gt_dir = root / "leftImg8bit" / "train" / city, root / "gtFine" / "train" / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_dir / f"{stem}_leftImg8bit.png"), textured(h, w, i))
        label = np.random.default_rng(100 + i).choice(np.array([0, 5, 18, 255], np.uint8), size=(h, w))
        Image.fromarray(label).save(gt_dir / f"{stem}_gtFine_labelTrainIds.png")


def bump(path: Path, seconds: float = 5.0) -> None:
    """Move a file's mtime, as a copy or an edit would (tests run faster than the clock's resolution)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


@pytest.fixture()
def city(tmp_path: Path) -> CityscapesDataset:
    make_cityscapes(tmp_path / "cs")
    return CityscapesDataset(tmp_path / "cs", "train")


def cache_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheWarning)]


# --------------------------------------------------------------------------------------------- exact pixels


def test_cached_pixels_are_exactly_what_cv2_imread_gives(city: CityscapesDataset, tmp_path: Path) -> None:
    report = build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    assert report.written == 4 and report.up_to_date == 0
    cache = DecodedCache(tmp_path / "cache", city.root)
    for i in range(len(city)):
        image, problem = cache.read(city.image_path(i), "image", city.image_key())
        assert problem is None and image is not None
        expected = cv2.cvtColor(cv2.imread(str(city.image_path(i)), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert image.dtype == np.uint8 and np.array_equal(image, expected)
        label, problem = cache.read(city.label_path(i), "label", city.label_key())
        assert problem is None and label is not None
        assert np.array_equal(label, cv2.imread(str(city.label_path(i)), cv2.IMREAD_UNCHANGED))
        assert np.array_equal(label, np.array(Image.open(city.label_path(i))))
    # The entry file itself is plain: header + raw bytes (read_entry checks its CRC-32).
    header, raw = read_entry(cache.entry_path(city.image_path(0)))
    assert header["kind"] == "image" and tuple(header["shape"]) == (24, 40, 3) and header["offset"] % 4096 == 0


def test_load_reads_the_cache_not_the_files(city: CityscapesDataset, tmp_path: Path, monkeypatch) -> None:
    build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    decoded = [city.decode(i) for i in range(len(city))]
    city.use_cache(tmp_path / "cache")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr("segdistill.data.datasets.read_image", no_decoding)
    monkeypatch.setattr(city, "_decode_label", no_decoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, (image, label) in enumerate(decoded):
            got_image, got_label = city.load(i)
            assert np.array_equal(got_image, image) and np.array_equal(got_label, label)
            assert not got_image.flags.writeable  # a view of the mapped file


def test_jpeg_and_palette_and_colour_masks_are_cached_exactly(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("road 128 64 128\nsky 70 130 180\n__ignore__ 0 0 0\n")
    colours = np.array([[128, 64, 128], [70, 130, 180], [0, 0, 0]], np.uint8)
    for i in range(3):
        cv2.imwrite(str(root / "images" / f"f{i}.jpg"), textured(20, 30, i), [cv2.IMWRITE_JPEG_QUALITY, 90])
        index = np.random.default_rng(i).integers(0, 3, (20, 30)).astype(np.uint8)
        if i == 0:  # an RGB colour mask
            Image.fromarray(colours[index]).save(root / "masks" / f"f{i}.png")
        else:  # a palette mask (indices 0, 1 and 255)
            palette = Image.fromarray(np.where(index == 2, 255, index).astype(np.uint8)).convert("P")
            palette.save(root / "masks" / f"f{i}.png")
    ds = FolderDataset(root)
    build_decoded_cache(ds, tmp_path / "cache", progress=False, log=None)
    reference = [ds.decode(i) for i in range(3)]
    ds.use_cache(tmp_path / "cache")
    for i in range(3):
        image, label = ds.load(i)
        jpeg = cv2.cvtColor(cv2.imread(str(ds.image_path(i)), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(image, jpeg) and np.array_equal(label, reference[i][1])
        assert not image.flags.writeable and set(np.unique(label).tolist()) <= {0, 1, 255}


def test_real_camvid_frames_decode_and_cache_exactly(camvid_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "camvid"
    for split in ("train", "trainannot"):
        (root / split).mkdir(parents=True)
    names = sorted(p.stem for p in (camvid_root / "train").glob("*.jpg"))[:3]
    for name in names:
        shutil.copy(camvid_root / "train" / f"{name}.jpg", root / "train")
        shutil.copy(camvid_root / "trainannot" / f"{name}.png", root / "trainannot")
    ds = CamVidDataset(root, "train")
    build_decoded_cache(ds, tmp_path / "cache", progress=False, log=None)
    ds.use_cache(tmp_path / "cache")
    for i in range(len(ds)):
        image, label = ds.load(i)
        assert not image.flags.writeable  # from the cache
        jpeg = cv2.cvtColor(cv2.imread(str(ds.image_path(i)), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(image, jpeg)
        raw = np.array(Image.open(ds.label_path(i)))
        assert np.array_equal(label, np.where(raw == 11, 255, raw))  # CamVid's "unlabelled" is ignored
        assert np.array_equal(read_image(ds.image_path(i)), jpeg)  # the direct-to-RGB decode, same pixels


def test_cached_training_samples_equal_decoded_ones_through_workers(city: CityscapesDataset, tmp_path: Path) -> None:
    pipe = build_train_pipeline(crop_size=(16, 16), scale=(40, 24))
    plain = TrainSet(city, pipe, seed=3)
    cached_ds = CityscapesDataset(city.root, "train")
    build_decoded_cache(cached_ds, tmp_path / "cache", nproc=2, progress=False, log=None)
    cached_ds.use_cache(tmp_path / "cache")
    cached = TrainSet(cached_ds, pipe, seed=3)

    def batches(ts: TrainSet, workers: int) -> list:
        it = iter(torch.utils.data.DataLoader(ts, batch_size=2, sampler=InfiniteSampler(len(ts), seed=0),
                                              num_workers=workers))
        return [next(it) for _ in range(3)]

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        for a, b in zip(batches(plain, 0), batches(cached, 2), strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------- building


def test_build_resumes_after_an_interruption_and_skips_what_is_up_to_date(city: CityscapesDataset, tmp_path: Path,
                                                                          monkeypatch) -> None:
    real = cache_mod._build_one
    calls = []

    def dies_on_the_third(job):
        calls.append(job[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user's Ctrl-C, half-way
        return real(job)

    monkeypatch.setattr(cache_mod, "_build_one", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    monkeypatch.setattr(cache_mod, "_build_one", real)
    lines: list[str] = []
    report = build_decoded_cache(city, tmp_path / "cache", progress=False, log=lines.append)
    assert (report.up_to_date, report.written) == (2, 2)
    assert len(lines) == 1 and "2 of 4 samples" in lines[0] and "MB on disk" in lines[0] and "free" in lines[0]
    again = build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    assert (again.up_to_date, again.written) == (4, 0)
    forced = build_decoded_cache(city, tmp_path / "cache", progress=False, log=None, force=True)
    assert forced.written == 4


def test_build_refuses_when_the_disk_is_too_small(city: CityscapesDataset, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    with pytest.raises(UserError, match="needs .* free") as err:
        build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "cache").rglob("*.sdc"))


def test_a_broken_source_stops_the_build_with_a_one_line_error(city: CityscapesDataset, tmp_path: Path) -> None:
    city.image_path(2).write_bytes(b"not a png")
    with pytest.raises(UserError) as err:
        build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    assert "\n" not in str(err.value) and city.image_path(2).name in str(err.value)
    assert len(list((tmp_path / "cache").rglob("*.sdc"))) == 6  # the other three samples were cached


def test_an_entry_is_written_atomically(city: CityscapesDataset, tmp_path: Path, monkeypatch) -> None:
    cache = DecodedCache(tmp_path / "cache", city.root)
    image, _ = city.decode(0)
    cache.write(city.image_path(0), image, "image", city.image_key())
    entry = cache.entry_path(city.image_path(0))
    before = entry.read_bytes()

    class DiskFull(OSError):
        pass

    real_replace = os.replace

    def crash_before_rename(src, dst):
        assert Path(src).stat().st_size > 0  # the new entry was (partly) written beside the old one
        raise DiskFull("simulated crash before the rename")

    monkeypatch.setattr(cache_mod.os, "replace", crash_before_rename)
    with pytest.raises(DiskFull):
        cache.write(city.image_path(0), np.zeros_like(image), "image", city.image_key())
    monkeypatch.setattr(cache_mod.os, "replace", real_replace)
    assert entry.read_bytes() == before  # the old entry is intact, never half new
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # and no temporary is left
    # A temporary left by a killed build is invisible to readers and removed once it is old.
    stale = entry.parent / f".{entry.name}.abc123.tmp"
    stale.write_bytes(b"half an entry")
    array, problem = cache.read(city.image_path(0), "image", city.image_key())
    assert problem is None and np.array_equal(array, image)
    assert cache.remove_stale_temporaries() == 0
    os.utime(stale, (1, 1))
    assert cache.remove_stale_temporaries() == 1 and not stale.exists()


# --------------------------------------------------------------------------------------------- staleness and fallback


def test_a_changed_source_is_stale_and_decoded_afresh(city: CityscapesDataset, tmp_path: Path) -> None:
    build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    city.use_cache(tmp_path / "cache")
    new = textured(24, 40, seed=99)
    cv2.imwrite(str(city.image_path(1)), cv2.cvtColor(new, cv2.COLOR_RGB2BGR))
    bump(city.image_path(1))
    with pytest.warns(CacheWarning, match="stale") as record:
        image, _ = city.load(1)
    assert np.array_equal(image, new)  # the new pixels, never the cached old ones
    assert len(cache_warnings(record)) == 1 and "\n" not in cache_warnings(record)[0]
    assert city.cache is not None and "stale" in str(city.cache.status(city.image_path(1), "image", city.image_key()))
    report = build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    assert (report.written, report.up_to_date) == (1, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert np.array_equal(city.load(1)[0], new)


def test_a_changed_class_list_makes_cached_labels_stale(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("a 10 10 10\nb 20 20 20\n")
    cv2.imwrite(str(root / "images" / "x.png"), textured(8, 8, 0))
    Image.fromarray(np.array([[10, 20] * 4] * 8, np.uint8).repeat(3).reshape(8, 8, 3)).save(root / "masks" / "x.png")
    ds = FolderDataset(root)
    build_decoded_cache(ds, tmp_path / "cache", progress=False, log=None)
    (root / "classes.txt").write_text("b 20 20 20\na 10 10 10\n")  # the same colours, swapped class ids
    swapped = FolderDataset(root)
    swapped.use_cache(tmp_path / "cache")
    with pytest.warns(CacheWarning, match="stale"):
        _, label = swapped.load(0)
    assert np.array_equal(label, swapped.decode(0)[1]) and label[0, 0] == 1


@pytest.mark.parametrize("damage, reason", [("truncate", "truncated"), ("flip a data byte", "CRC-32"),
                                            ("garbage header", "damaged header"), ("delete", "missing"),
                                            ("wrong magic", "bad magic")])
def test_a_bad_or_missing_entry_falls_back_to_decoding_with_one_warning(city: CityscapesDataset, tmp_path: Path,
                                                                        damage: str, reason: str) -> None:
    build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    city.use_cache(tmp_path / "cache")
    assert city.cache is not None
    entry = city.cache.entry_path(city.image_path(2))
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        entry.write_bytes(data[:-100])
    elif damage == "flip a data byte":
        data[-7] ^= 0x10
        entry.write_bytes(data)
    elif damage == "garbage header":
        data[12:40] = b"{" * 28
        entry.write_bytes(data)
    elif damage == "wrong magic":
        entry.write_bytes(b"NOTCACHE" + data[8:])
    else:
        entry.unlink()
    expected = city.decode(2)[0]
    fresh = CityscapesDataset(city.root, "train")  # a new process's view: nothing verified yet
    fresh.use_cache(tmp_path / "cache")
    with pytest.warns(CacheWarning) as record:
        image, label = fresh.load(2)
    messages = cache_warnings(record)
    assert len(messages) == 1 and "\n" not in messages[0] and city.image_path(2).name in messages[0]
    assert reason in messages[0]
    assert np.array_equal(image, expected) and image.flags.writeable  # decoded, not read from the entry
    assert np.array_equal(label, fresh.decode(2)[1])


def test_damage_after_the_first_check_is_caught_when_the_file_changes(city: CityscapesDataset, tmp_path: Path) -> None:
    build_decoded_cache(city, tmp_path / "cache", progress=False, log=None)
    city.use_cache(tmp_path / "cache")
    assert city.cache is not None
    city.load(0)  # checked once (CRC-32) in this process
    entry = city.cache.entry_path(city.image_path(0))
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    entry.write_bytes(data)  # a new write: new mtime, so the check runs again
    bump(entry)
    with pytest.warns(CacheWarning, match="CRC"):
        image, _ = city.load(0)
    assert np.array_equal(image, city.decode(0)[0])


def test_warnings_stop_after_a_few_per_process(city: CityscapesDataset, tmp_path: Path) -> None:
    city.use_cache(tmp_path / "never-built")
    with pytest.warns(CacheWarning) as record:
        for _ in range(4):
            for i in range(len(city)):
                city.load(i)
    messages = cache_warnings(record)
    assert len(messages) == 10 and "not shown" in messages[-1] and "missing" in messages[0]


def test_prepare_cache_command(city: CityscapesDataset, tmp_path: Path, capsys) -> None:
    from segdistill.cli import main

    config = tmp_path / "exp.yaml"
    config.write_text(f"data:\n  kind: cityscapes\n  root: {city.root}\n")
    assert main(["prepare", "cache", str(config), "--nproc", "1", "--no-progress"]) == 2  # no data.cache set
    assert "data.cache" in capsys.readouterr().err
    argv = ["prepare", "cache", str(config), f"data.cache={tmp_path / 'c'}", "--nproc", "2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert "4 of 4 samples to decode" in out[0] and "4 samples written" in out[-1]
    assert main(argv) == 0
    assert "4 already up to date" in capsys.readouterr().out


def test_training_with_the_cache_gives_the_same_weights_as_decoding(tiny_dataset: Path, tmp_path: Path) -> None:
    """The cache changes where pixels come from, never which: 3 iterations end with equal weights."""
    import torch
    from conftest import tiny_config_tree

    from segdistill.config import config_from_dict
    from segdistill.engine.trainer import train

    tree = tiny_config_tree(tiny_dataset)
    tree["train"].update(iters=3, eval_interval=3, checkpoint_interval=100)
    plain = train(config_from_dict(tree), tmp_path / "plain")
    tree["data"]["cache"] = str(tmp_path / "cache")
    cached = train(config_from_dict(tree), tmp_path / "cached")
    assert any((tmp_path / "cache").iterdir())  # built on first use
    a = torch.load(tmp_path / "plain" / "final.pth", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "cached" / "final.pth", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.metrics is not None and cached.metrics is not None
    assert plain.metrics.mIoU == cached.metrics.mIoU


def test_bench_data_mode_through_the_cli(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    import json

    import yaml
    from conftest import tiny_config_tree

    from segdistill import cli

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config_tree(tiny_dataset)))
    out = tmp_path / "b.json"
    assert cli.main(["bench", str(path), "--mode", "data", "--samples", "4", "--images", "4", "--workers", "0",
                     "--no-progress", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "data" and report["data"]
    assert cli.main(["bench", str(path), "--mode", "data", "--workers", "-1"]) == 2
