"""prepare_cityscapes: polygons -> labelTrainIds with cityscapesscripts, split lists, resumability, errors, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdistill import cli
from segdistill.data.datasets import CityscapesDataset
from segdistill.data.demo_scenes import DEMO_LABELS, generate_demo_scenes
from segdistill.data.prepare import prepare_cityscapes
from segdistill.errors import UserError

pytest.importorskip("cityscapesscripts")


@pytest.fixture()
def scenes(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    generate_demo_scenes(root, num_train=4, num_val=2, size=(48, 96), seed=5, cities=("aa", "bb"))
    return root


def train_ids_of(label_ids: np.ndarray) -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in DEMO_LABELS.values():
        lut[label_id] = train_id
    return lut[label_ids]


@pytest.mark.parametrize("nproc", [1, 2])
def test_round_trip_writes_train_ids_and_split_lists(scenes: Path, nproc: int) -> None:
    report = prepare_cityscapes(scenes, nproc=nproc, progress=False)
    assert (report.converted, report.skipped, report.total) == (6, 0, 6)
    assert report.split_counts == {"train": 4, "val": 2}
    polygons = sorted(scenes.glob("gtFine/*/*/*_gtFine_polygons.json"))
    assert len(polygons) == 6
    for poly in polygons:
        ids = np.array(Image.open(str(poly).replace("_polygons.json", "_labelIds.png")))
        train_ids = np.array(Image.open(str(poly).replace("_polygons.json", "_labelTrainIds.png")))
        np.testing.assert_array_equal(train_ids, train_ids_of(ids))
    assert (scenes / "train.txt").read_text().splitlines() == [
        "aa/aa_000000_000000", "aa/aa_000000_000002", "bb/bb_000000_000001", "bb/bb_000000_000003",
    ]  # fmt: skip
    assert (scenes / "val.txt").read_text() == "aa/aa_000000_000000\nbb/bb_000000_000001\n"
    assert not (scenes / "test.txt").exists()  # no gtFine/test in this tree
    assert not [p for p in scenes.rglob(".*")]  # no temporary files left behind
    ds = CityscapesDataset(scenes, "val")
    image, label = ds.load(1)
    assert image.shape == (48, 96, 3) and label.shape == (48, 96)


def test_second_run_skips_and_force_rewrites(scenes: Path) -> None:
    prepare_cityscapes(scenes, nproc=1, progress=False)
    target = next(scenes.glob("gtFine/train/*/*_labelTrainIds.png"))
    target.write_bytes(b"stale")
    again = prepare_cityscapes(scenes, nproc=1, progress=False)
    assert (again.converted, again.skipped) == (0, 6)
    assert target.read_bytes() == b"stale"
    forced = prepare_cityscapes(scenes, nproc=1, force=True, progress=False)
    assert (forced.converted, forced.skipped) == (6, 0)
    assert np.array(Image.open(target)).shape == (48, 96)


def test_progress_bar_goes_to_stderr(scenes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare_cityscapes(scenes, nproc=1, progress=True)
    captured = capsys.readouterr()
    assert "6/6" in captured.err and "100%" in captured.err
    assert "labelTrainIds" not in captured.out


def test_layout_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        prepare_cityscapes(tmp_path / "nope")
    (tmp_path / "leftImg8bit").mkdir()
    with pytest.raises(UserError) as err:
        prepare_cityscapes(tmp_path)
    assert "gtFine/" in str(err.value) and "leftImg8bit/" not in str(err.value).split(";")[0]
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="no \\*_gtFine_polygons.json"):
        prepare_cityscapes(tmp_path)


def test_unknown_label_name_names_the_json(scenes: Path) -> None:
    poly = next(scenes.glob("gtFine/val/*/*_polygons.json"))
    doc = json.loads(poly.read_text())
    doc["objects"].append({"label": "dragon", "polygon": [[0, 0], [5, 0], [5, 5]]})
    poly.write_text(json.dumps(doc))
    with pytest.raises(UserError) as err:
        prepare_cityscapes(scenes, nproc=1, progress=False)
    assert poly.name in str(err.value) and "\n" not in str(err.value)
    assert not list(poly.parent.glob(".*"))  # the failed output's temp file was removed


def test_missing_cityscapesscripts_says_how_to_install(scenes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cityscapesscripts.preparation.json2labelImg", None)
    with pytest.raises(UserError) as err:
        prepare_cityscapes(scenes, nproc=1)
    assert 'pip install "segdistill[cityscapes]"' in str(err.value)


def test_cli_parser_and_handler(scenes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["prepare", "cityscapes", str(scenes), "--nproc", "1", "--force",
                                          "--no-progress"])
    assert (args.data_root, args.nproc, args.force, args.no_progress) == (str(scenes), 1, True, True)
    assert args.func(args) == 0
    assert "6 labelTrainIds written" in capsys.readouterr().out
    assert len(list(scenes.glob("gtFine/*/*/*_labelTrainIds.png"))) == 6
