"""Demo street scenes: Cityscapes layout, determinism, polygons == labelIds, variety, loadable after prepare."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdistill.data.datasets import CityscapesDataset
from segdistill.data.demo_scenes import DEMO_LABELS, generate_demo_scenes
from segdistill.errors import UserError

SIZE = (64, 128)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_names(tmp_path: Path) -> None:
    report = generate_demo_scenes(tmp_path, num_train=5, num_val=2, size=SIZE, cities=("ashford", "brookvale"))
    assert report.counts == {"train": 5, "val": 2}
    images = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("leftImg8bit/*/*/*.png"))
    assert images[:3] == [
        "leftImg8bit/train/ashford/ashford_000000_000000_leftImg8bit.png",
        "leftImg8bit/train/ashford/ashford_000000_000002_leftImg8bit.png",
        "leftImg8bit/train/ashford/ashford_000000_000004_leftImg8bit.png",
    ]
    assert len(images) == 7
    for img in images:
        stem = img.replace("leftImg8bit/", "gtFine/", 1).removesuffix("_leftImg8bit.png")
        assert (tmp_path / f"{stem}_gtFine_polygons.json").is_file()
        assert (tmp_path / f"{stem}_gtFine_labelIds.png").is_file()
        assert re.fullmatch(r"leftImg8bit/(train|val)/(\w+)/\2_000000_\d{6}_leftImg8bit\.png", img)
        rgb = Image.open(tmp_path / img)
        assert rgb.mode == "RGB" and rgb.size == (SIZE[1], SIZE[0])
    doc = json.loads(next(tmp_path.glob("gtFine/val/*/*.json")).read_text())
    assert doc["imgHeight"] == SIZE[0] and doc["imgWidth"] == SIZE[1]
    assert {o["label"] for o in doc["objects"]} <= set(DEMO_LABELS)
    assert all(len(o["polygon"]) >= 3 and all(len(p) == 2 for p in o["polygon"]) for o in doc["objects"])


def test_same_seed_same_bytes_other_seed_other_scenes(tmp_path: Path) -> None:
    generate_demo_scenes(tmp_path / "a", num_train=3, num_val=1, size=SIZE, seed=7)
    generate_demo_scenes(tmp_path / "b", num_train=3, num_val=1, size=SIZE, seed=7)
    generate_demo_scenes(tmp_path / "c", num_train=3, num_val=1, size=SIZE, seed=8)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith("_leftImg8bit.png"))


def test_val_scenes_do_not_depend_on_the_number_of_train_scenes(tmp_path: Path) -> None:
    generate_demo_scenes(tmp_path / "a", num_train=1, num_val=2, size=SIZE)
    generate_demo_scenes(tmp_path / "b", num_train=4, num_val=2, size=SIZE)
    val_a = {k: v for k, v in files(tmp_path / "a").items() if "/val/" in k}
    val_b = {k: v for k, v in files(tmp_path / "b").items() if "/val/" in k}
    assert val_a == val_b and len(val_a) == 6


def test_polygons_and_label_ids_agree_exactly(tmp_path: Path) -> None:
    json2label = pytest.importorskip("cityscapesscripts.preparation.json2labelImg").json2labelImg
    generate_demo_scenes(tmp_path / "d", num_train=3, num_val=1, size=SIZE, seed=2)
    for poly in sorted((tmp_path / "d").glob("gtFine/*/*/*_polygons.json")):
        json2label(str(poly), str(tmp_path / "ids.png"), "ids")
        expected = np.array(Image.open(tmp_path / "ids.png"))
        written = np.array(Image.open(str(poly).replace("_polygons.json", "_labelIds.png")))
        np.testing.assert_array_equal(written, expected)


def test_scenes_are_varied_and_image_follows_the_labels(tmp_path: Path) -> None:
    generate_demo_scenes(tmp_path, num_train=8, num_val=0, size=(96, 192), seed=0, prepare=True)
    ds = CityscapesDataset(tmp_path, "train")
    counts = np.zeros(256, dtype=np.int64)
    colour_sums: dict[int, list[np.ndarray]] = {}
    for i in range(len(ds)):
        image, label = ds.load(i)
        counts += np.bincount(label.ravel(), minlength=256)
        for c in (0, 2, 10):  # road, building, sky
            if (label == c).any():
                colour_sums.setdefault(c, []).append(image[label == c].mean(axis=0))
    present = {c for c in range(19) if counts[c] > 0}
    assert {0, 1, 2, 5, 8, 10, 11, 13} <= present  # road, sidewalk, building, pole, vegetation, sky, person, car
    assert len(present) >= 11
    shares = counts[:19] / counts.sum()
    assert shares.max() < 0.45  # no class swamps the rest
    # The picture is drawn from the regions: on average sky is bluer than road, and road darker than sky.
    sky, road = np.mean(colour_sums[10], axis=0), np.mean(colour_sums[0], axis=0)
    assert sky[2] > road[2] + 30 and sky.sum() > road.sum()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        generate_demo_scenes(tmp_path, size=(8, 8))
    with pytest.raises(UserError):
        generate_demo_scenes(tmp_path, num_train=0, num_val=0)
    with pytest.raises(UserError):
        generate_demo_scenes(tmp_path, cities=("new_york",))
