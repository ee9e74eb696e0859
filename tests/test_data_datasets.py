"""Datasets on real files in tmp_path: layouts, decoding, label checks, one-line errors, torch wrappers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segdistill.data.datasets import (
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    CamVidDataset,
    CityscapesDataset,
    EvalSet,
    FolderDataset,
    TrainSet,
    build_dataset,
)
from segdistill.data.sampler import InfiniteSampler
from segdistill.data.transforms import TrainSample, build_eval_pipeline, build_train_pipeline
from segdistill.errors import UserError


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_label(path: Path, label: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label)
    if mode == "P":
        img = img.convert("P")  # from L: palette is the grey ramp, indices equal the values
    img.save(path)


def sample(h: int = 12, w: int = 16, seed: int = 0,
           values: tuple[int, ...] = (0, 1, 2, 255)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.choice(np.array(values, dtype=np.uint8), size=(h, w))
    return image, label


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------------------------- Cityscapes


def make_cityscapes(root: Path, split: str = "train", n: int = 3,
                    label_kind: str = "labelTrainIds") -> list[tuple[np.ndarray, np.ndarray]]:
    samples = []
    for i in range(n):
        city = ["aachen", "bonn"][i % 2]
        stem = f"{city}_000000_{i:06d}"
        image, label = sample(seed=i, values=(0, 5, 18, 255))
        write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
        if label_kind == "labelTrainIds":
            write_label(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", label)
        else:
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city / f"{stem}_gtFine_polygons.json").write_text("{}")
        samples.append((image, label))
    return samples


def test_cityscapes_loads_rgb_images_and_train_id_labels(tmp_path: Path) -> None:
    written = make_cityscapes(tmp_path)
    ds = CityscapesDataset(tmp_path, "train")
    assert len(ds) == 3 and ds.num_classes == 19 and ds.classes == CITYSCAPES_CLASSES
    assert ds.palette == CITYSCAPES_PALETTE and ds.ignore_index == 255
    assert ds.names == ["aachen/aachen_000000_000000", "aachen/aachen_000000_000002", "bonn/bonn_000000_000001"]
    image, label = ds.load(2)
    np.testing.assert_array_equal(image, written[1][0])  # RGB, not BGR
    np.testing.assert_array_equal(label, written[1][1])
    assert image.dtype == np.uint8 and label.dtype == np.uint8
    assert ds.image_path(0).name == "aachen_000000_000000_leftImg8bit.png"
    assert "split='train'" in repr(ds)


def test_cityscapes_layout_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        CityscapesDataset(tmp_path / "nowhere", "train")
    assert "nowhere" in one_line(err)
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        CityscapesDataset(tmp_path, "train")
    assert "gtFine/" in one_line(err)
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        CityscapesDataset(tmp_path, "val")
    assert "'val'" in one_line(err) and "train" in one_line(err)


def test_cityscapes_missing_train_ids_but_polygons_says_run_prepare(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, label_kind="polygons")
    with pytest.raises(UserError) as err:
        CityscapesDataset(tmp_path, "train")
    assert f"segdistill prepare cityscapes {tmp_path}" in one_line(err)


def test_cityscapes_image_without_label_and_label_without_image(tmp_path: Path) -> None:
    make_cityscapes(tmp_path)
    write_rgb(tmp_path / "leftImg8bit/train/bonn/bonn_000000_000009_leftImg8bit.png", sample()[0])
    with pytest.raises(UserError) as err:
        CityscapesDataset(tmp_path, "train")
    assert "bonn_000000_000009_leftImg8bit.png" in one_line(err)
    (tmp_path / "leftImg8bit/train/bonn/bonn_000000_000009_leftImg8bit.png").unlink()
    write_label(tmp_path / "gtFine/train/bonn/bonn_000000_000007_gtFine_labelTrainIds.png", sample()[1])
    with pytest.raises(UserError) as err:
        CityscapesDataset(tmp_path, "train")
    assert "bonn_000000_000007_gtFine_labelTrainIds.png" in one_line(err)


def test_label_values_outside_the_classes_are_named(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, n=1)
    bad = sample(values=(0, 19, 200))[1]
    label_path = tmp_path / "gtFine/train/aachen/aachen_000000_000000_gtFine_labelTrainIds.png"
    write_label(label_path, bad)
    with pytest.raises(UserError) as err:
        CityscapesDataset(tmp_path, "train").load(0)
    msg = one_line(err)
    assert str(label_path) in msg and "19, 200" in msg and "[0, 19)" in msg


def test_size_mismatch_is_named(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, n=1)
    label_path = tmp_path / "gtFine/train/aachen/aachen_000000_000000_gtFine_labelTrainIds.png"
    write_label(label_path, np.zeros((10, 16), dtype=np.uint8))
    with pytest.raises(UserError) as err:
        CityscapesDataset(tmp_path, "train").load(0)
    assert str(label_path) in one_line(err) and "16x10" in one_line(err)


def test_truncated_and_garbage_files_are_named(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, n=2)
    ds = CityscapesDataset(tmp_path, "train")
    img_path = ds.image_path(0)
    img_path.write_bytes(img_path.read_bytes()[:60])
    with pytest.raises(UserError) as err:
        ds.load(0)
    assert str(img_path) in one_line(err)
    lbl_path = ds.label_path(1)
    lbl_path.write_bytes(lbl_path.read_bytes()[:50])
    with pytest.raises(UserError) as err:
        ds.load(1)
    assert str(lbl_path) in one_line(err)


def test_truncated_jpeg_is_caught(tmp_path: Path) -> None:
    image, label = sample(64, 64)
    write_rgb(tmp_path / "train" / "a.jpg", image)
    write_label(tmp_path / "trainannot" / "a.png", np.zeros((64, 64), np.uint8))
    data = (tmp_path / "train" / "a.jpg").read_bytes()
    (tmp_path / "train" / "a.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UserError) as err:
        CamVidDataset(tmp_path, "train").load(0)
    assert "a.jpg" in one_line(err) and "truncated" in one_line(err)


def test_colour_label_for_an_index_dataset_is_refused(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, n=1)
    label_path = tmp_path / "gtFine/train/aachen/aachen_000000_000000_gtFine_labelTrainIds.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(label_path)
    with pytest.raises(UserError) as err:
        CityscapesDataset(tmp_path, "train").load(0)
    assert "colour image" in one_line(err)


# --------------------------------------------------------------------------------------------- CamVid


def test_camvid_maps_unlabelled_to_ignore_and_rejects_unknown(tmp_path: Path) -> None:
    image, _ = sample(8, 10)
    label = np.array([[0, 10, 11, 3]] * 8, dtype=np.uint8).repeat(3, axis=1)[:, :10].copy()
    write_rgb(tmp_path / "val" / "f1.png", image)
    write_label(tmp_path / "valannot" / "f1.png", label)
    ds = CamVidDataset(tmp_path, "val")
    assert ds.classes == CAMVID_CLASSES and ds.num_classes == 11 and ds.names == ["f1"]
    _, out = ds.load(0)
    expected = label.copy()
    expected[label == 11] = 255
    np.testing.assert_array_equal(out, expected)
    write_label(tmp_path / "valannot" / "f1.png", np.full((8, 10), 12, np.uint8))
    with pytest.raises(UserError) as err:
        ds.load(0)
    assert "12" in one_line(err)


def test_camvid_wrong_split_lists_the_ones_there(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "trainannot").mkdir()
    with pytest.raises(UserError) as err:
        CamVidDataset(tmp_path, "test")
    assert "'test'" in one_line(err) and "train" in one_line(err)


def test_real_camvid(camvid_root: Path) -> None:
    train, val = CamVidDataset(camvid_root, "train"), CamVidDataset(camvid_root, "val")
    assert len(train) == 367 and len(val) == 101
    image, label = val.load(0)
    assert image.shape == (360, 480, 3) and label.shape == (360, 480)
    assert set(np.unique(label).tolist()) <= set(range(11)) | {255}
    assert (label == 255).any()  # this frame has unlabelled pixels (raw 11)


# --------------------------------------------------------------------------------------------- folder


def make_folder(root: Path,
                classes: str = "road 128 64 128\nsky 70 130 180\n# a comment\ncar 0 0 142  # trailing\n") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(classes)


def test_folder_index_masks_l_and_p(tmp_path: Path) -> None:
    make_folder(tmp_path)
    image, label = sample(values=(0, 1, 2, 255))
    write_rgb(tmp_path / "images" / "a.jpg", image)
    write_label(tmp_path / "masks" / "a.png", label)
    write_rgb(tmp_path / "images" / "sub" / "b.png", image)
    write_label(tmp_path / "masks" / "sub" / "b.png", label, mode="P")
    ds = FolderDataset(tmp_path)
    assert ds.classes == ("road", "sky", "car") and ds.palette == ((128, 64, 128), (70, 130, 180), (0, 0, 142))
    assert ds.names == ["a", "sub/b"]
    assert Image.open(ds.label_path(1)).mode == "P"
    for i in range(2):
        np.testing.assert_array_equal(ds.load(i)[1], label)
    write_label(tmp_path / "masks" / "a.png", np.full(label.shape, 3, np.uint8))
    with pytest.raises(UserError) as err:
        ds.load(0)
    assert "a.png" in one_line(err) and "3" in one_line(err)


def test_folder_rgb_masks_map_through_the_palette(tmp_path: Path) -> None:
    make_folder(tmp_path, "road 128 64 128\nsky 70 130 180\ncar 0 0 142\n__ignore__ 0 0 0\n")
    index = np.array([[0, 1, 2, 255]] * 3, dtype=np.uint8)
    colors = np.array([(128, 64, 128), (70, 130, 180), (0, 0, 142)] + [(0, 0, 0)] * 253, dtype=np.uint8)
    write_rgb(tmp_path / "images" / "x.png", np.zeros((3, 4, 3), np.uint8))
    write_label(tmp_path / "masks" / "x.png", colors[index])
    ds = FolderDataset(tmp_path)
    assert ds.ignore_color == (0, 0, 0)
    np.testing.assert_array_equal(ds.load(0)[1], index)


def test_folder_unknown_colour_is_named(tmp_path: Path) -> None:
    make_folder(tmp_path)
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, 0] = (128, 64, 128)
    rgb[1, 1] = (1, 2, 3)
    write_rgb(tmp_path / "images" / "x.png", rgb)
    write_label(tmp_path / "masks" / "x.png", rgb)
    with pytest.raises(UserError) as err:
        FolderDataset(tmp_path).load(0)
    msg = one_line(err)
    assert "x.png" in msg and "(1, 2, 3)" in msg and "(0, 0, 0)" in msg and "__ignore__ 0 0 0" in msg


def test_folder_yaml_classes_and_splits(tmp_path: Path) -> None:
    (tmp_path / "classes.yaml").write_text(
        "classes:\n  - {name: background, color: [0, 0, 0]}\n  - {name: cell, color: [255, 255, 255]}\n"
        "ignore_color: [255, 0, 0]\n"
    )
    image, _ = sample(values=(0, 1))
    rgb_mask = np.zeros((12, 16, 3), np.uint8)
    rgb_mask[:6] = 255
    rgb_mask[0, :4] = (255, 0, 0)
    for split in ("train", "val"):
        write_rgb(tmp_path / "images" / split / f"{split}1.png", image)
        write_label(tmp_path / "masks" / split / f"{split}1.png", rgb_mask)
    ds = build_dataset("folder", tmp_path, "val")
    assert ds.names == ["val1"] and ds.classes == ("background", "cell")
    label = ds.load(0)[1]
    assert (label[0, :4] == 255).all() and (label[1:6] == 1).all() and (label[6:] == 0).all()
    with pytest.raises(UserError) as err:
        FolderDataset(tmp_path, "test")
    assert "'test'" in one_line(err)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("road 128 64\n", "classes.txt:1"),
        ("road 128 64 300\n", "0-255"),
        ("road 1 2 3\nroad 4 5 6\n", "appears twice"),
        ("road 1 2 3\ncar 1 2 3\n", "used by both"),
        ("road 1 2 3\n__ignore__ 1 2 3\n", "ignore colour"),
        ("# nothing\n", "no classes"),
    ],
)
def test_folder_class_file_errors(tmp_path: Path, text: str, expected: str) -> None:
    make_folder(tmp_path, text)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(UserError) as err:
        FolderDataset(tmp_path)
    assert expected in one_line(err)


def test_folder_layout_errors(tmp_path: Path) -> None:
    tmp_path.joinpath("images").mkdir()
    with pytest.raises(UserError) as err:
        FolderDataset(tmp_path)
    assert "classes.txt" in one_line(err)
    make_folder(tmp_path)
    with pytest.raises(UserError) as err:
        FolderDataset(tmp_path)
    assert "masks/" in one_line(err)
    write_rgb(tmp_path / "images" / "lonely.png", sample()[0])
    (tmp_path / "masks").mkdir()
    with pytest.raises(UserError) as err:
        FolderDataset(tmp_path)
    assert "lonely.png" in one_line(err)
    (tmp_path / "classes.yaml").write_text("classes: []\n")
    with pytest.raises(UserError) as err:
        FolderDataset(tmp_path)
    assert "keep only one" in one_line(err)


def test_build_dataset_unknown_kind_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        build_dataset("ade20k", tmp_path, "train")
    assert "camvid, cityscapes, folder" in one_line(err)


# --------------------------------------------------------------------------------------------- torch wrappers


def test_train_set_is_a_function_of_seed_and_sample_seed(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, n=2)
    ds = CityscapesDataset(tmp_path, "train")
    pipe = build_train_pipeline(crop_size=(8, 8), scale=(16, 12))
    a, b = TrainSet(ds, pipe, seed=1), TrainSet(ds, pipe, seed=1)
    img1, lbl1, valid1 = a[(1, 17)]
    img2, lbl2, valid2 = b[(1, 17)]
    assert torch.equal(img1, img2) and torch.equal(lbl1, lbl2) and torch.equal(valid1, valid2)
    # Workers ship uint8: the training device normalises (segdistill.data.preprocess).
    assert img1.shape == (3, 8, 8) and img1.dtype == torch.uint8 and lbl1.dtype == torch.uint8
    others = [a[(1, s)][0] for s in range(18, 24)] + [TrainSet(ds, pipe, seed=2)[(1, 17)][0]]
    assert not any(torch.equal(img1, o) for o in others)
    with pytest.raises(TypeError):
        a[0]  # type: ignore[index]


def test_train_batches_do_not_depend_on_worker_count(tmp_path: Path) -> None:
    make_cityscapes(tmp_path, n=4)
    ds = TrainSet(CityscapesDataset(tmp_path, "train"), build_train_pipeline(crop_size=(8, 8), scale=(16, 12)), seed=0)

    def batches(workers: int) -> list[TrainSample]:
        loader = torch.utils.data.DataLoader(
            ds, batch_size=2, sampler=InfiniteSampler(len(ds), seed=0), num_workers=workers
        )
        it = iter(loader)
        return [next(it) for _ in range(3)]

    for (i0, l0, v0), (i2, l2, v2) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(i0, i2) and torch.equal(l0, l2) and torch.equal(v0, v2)
        assert i0.dtype == torch.uint8 and i0.shape == (2, 3, 8, 8) and v0.shape == (2, 2)


def test_eval_set_returns_full_resolution_label_and_index(tmp_path: Path) -> None:
    written = make_cityscapes(tmp_path, n=2)
    ev = EvalSet(CityscapesDataset(tmp_path, "train"), build_eval_pipeline(scale=(32, 24)))
    image, label, index = ev[1]
    assert index == 1 and image.shape == (3, 24, 32) and label.shape == (12, 16)
    assert torch.equal(label, torch.from_numpy(written[1][1].astype(np.int64)))  # names[1] is bonn_..._000001
