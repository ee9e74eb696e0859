"""Checkpoints: every layout users bring, URLs through a loopback server, readable mismatches."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from segdistill.errors import UserError
from segdistill.models import (
    build_segmentor,
    load_backbone_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


def _model(num_classes: int = 5) -> torch.nn.Module:
    return build_segmentor("pspnet_r18-d8-tiny", num_classes)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("layout", ["bare", "mmseg", "ddp", "mmrazor"])
def test_loads_every_checkpoint_layout(layout: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    src, dst = _model(), _model()
    assert not _same(src, dst)
    sd = src.state_dict()
    obj = {
        "bare": sd,
        "mmseg": {"meta": {"mmseg_version": "1.2.2", "CLASSES": ("a",) * 5}, "state_dict": sd, "optimizer": {}},
        "ddp": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "mmrazor": {"meta": {}, "state_dict": {
            **{f"architecture.{k}": v for k, v in sd.items()},
            **{f"teacher.{k}": torch.zeros_like(v) for k, v in sd.items()},
            "distiller.connectors.x.weight": torch.zeros(1),
        }},
    }[layout]
    torch.save(obj, tmp_path / "ckpt.pth")
    assert not load_checkpoint(dst, tmp_path / "ckpt.pth")
    assert _same(src, dst)


def test_mmrazor_teacher_part(tmp_path: Path) -> None:
    src, dst = _model(), _model()
    torch.save({"state_dict": {f"teacher.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "c.pth")
    load_checkpoint(dst, tmp_path / "c.pth", part="teacher")
    assert _same(src, dst)


def test_mismatch_names_missing_unexpected_and_shape_keys(tmp_path: Path) -> None:
    sd = _model(num_classes=7).state_dict()
    del sd["backbone.stem.0.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "c.pth")
    with pytest.raises(UserError) as err:
        load_checkpoint(_model(num_classes=5), tmp_path / "c.pth")
    msg = str(err.value)
    assert "\n" not in msg
    assert "1 missing [backbone.stem.0.weight]" in msg
    assert "1 unexpected [extra.weight]" in msg
    assert "decode_head.conv_seg.weight: checkpoint (7, 32, 1, 1) vs model (5, 32, 1, 1)" in msg
    # Non-strict loading keeps going and reports the same mismatch.
    mismatch = load_checkpoint(_model(num_classes=5), tmp_path / "c.pth", strict=False)
    assert mismatch.missing == ["backbone.stem.0.weight"] and mismatch.unexpected == ["extra.weight"]
    assert {k for k, _, _ in mismatch.shape} == {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
                                                 "auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias"}


def test_missing_and_corrupt_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(_model(), tmp_path / "nope.pth")
    torch.save({"state_dict": _model().state_dict()}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(_model(), tmp_path / "cut.pth")


def test_imagenet_v1c_backbone_checkpoint(tmp_path: Path) -> None:
    src = _model().backbone
    sd = {**src.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save({"state_dict": sd}, tmp_path / "resnet18_v1c.pth")
    dst = _model()
    load_backbone_checkpoint(dst.backbone, tmp_path / "resnet18_v1c.pth")
    assert _same(src, dst.backbone)


def test_saved_checkpoint_has_mmseg_layout_and_round_trips(tmp_path: Path) -> None:
    src, dst = _model(), _model()
    path = save_checkpoint(tmp_path / "out" / "student.pth", src.state_dict(), meta={"iter": 3})
    raw = torch.load(path, weights_only=False)
    assert set(raw) == {"meta", "state_dict"}
    assert list(raw["state_dict"]) == list(src.state_dict())
    # mmengine's loader only needs a plain dict of tensors under "state_dict"; the safe loader reads it too.
    torch.load(path, weights_only=True)
    load_checkpoint(dst, path)
    assert _same(src, dst)
    assert [p.name for p in path.parent.iterdir()] == ["student.pth"]  # no temporary file left behind


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_load_from_url_uses_and_reuses_the_cache(http_root: tuple[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = http_root
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))
    src = _model()
    torch.save({"meta": {}, "state_dict": src.state_dict()}, root / "teacher.pth")
    digest = hashlib.sha256((root / "teacher.pth").read_bytes()).hexdigest()
    hashed = f"teacher_20200606-{digest[:8]}.pth"
    (root / hashed).write_bytes((root / "teacher.pth").read_bytes())
    dst = _model()
    load_checkpoint(dst, f"{url}/{hashed}")
    assert _same(src, dst)
    cached = tmp_path / "cache" / "checkpoints" / hashed
    assert cached.is_file()
    (root / hashed).unlink()  # a second load must not touch the network
    load_checkpoint(_model(), f"{url}/{hashed}")


def test_url_download_with_wrong_hash_is_rejected_and_not_cached(http_root: tuple[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = http_root
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))
    torch.save({"state_dict": _model().state_dict()}, root / "t-deadbeef.pth")
    with pytest.raises(UserError, match="corrupt"):
        read_checkpoint(f"{url}/t-deadbeef.pth")
    assert not any((tmp_path / "cache" / "checkpoints").iterdir())
    with pytest.raises(UserError, match="cannot download"):
        read_checkpoint(f"{url}/missing.pth")
