"""mmseg's released Cityscapes checkpoints of the zoo students load strictly, from a URL, through the
download-once cache; weights of another architecture are a one-line error saying what they are and what
the model is. The files are served from a loopback HTTP server in mmseg's released layout
(``{"meta", "state_dict"}``, the sha256 prefix in the file name), holding our own models' weights.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config_tree

from segdistill.cli import main
from segdistill.errors import UserError
from segdistill.models import build_segmentor, load_checkpoint
from segdistill.models.checkpoint import identify_weights

CITYSCAPES = Path(__file__).resolve().parents[1] / "configs" / "cityscapes"
# One model of each family, with the config whose "# released:" line names mmseg's checkpoint.
FAMILIES = [
    ("deeplabv3plus_m-v2-d8", "deeplabv3plus_m-v2-d8_80k.yaml"),
    ("segformer_mit-b0", "segformer_mit-b0_160k.yaml"),
    ("bisenetv2", "bisenetv2_160k.yaml"),
    ("stdc1", "stdc1_80k.yaml"),
]
_HASHED = re.compile(r"-[0-9a-f]{8}\.pth$")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server (port chosen by the OS) over a fresh folder; a fresh download cache."""
    monkeypatch.setenv("SEGDISTILL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def _released_url(config: str) -> str:
    return re.search(r"^# released: (\S+) ", (CITYSCAPES / config).read_text(), re.M).group(1)


def _publish(model: torch.nn.Module, name: str, config: str, base: str, root: Path) -> str:
    """Serve ``model``'s weights as mmseg releases them, at the released URL's path; returns the loopback URL.

    The file name keeps mmseg's, with the sha256 prefix of this file's bytes in place of the release's.
    """
    path = urllib.parse.urlparse(_released_url(config)).path.lstrip("/")
    meta = {"mmseg_version": "0.20.2", "exp_name": f"{name}.py", "iter": 80000,
            "CLASSES": tuple(f"c{i}" for i in range(model.num_classes))}
    tmp = root / "upload.pth"
    torch.save({"meta": meta, "state_dict": model.state_dict()}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    assert _HASHED.search(path), path  # mmseg's release names carry a sha256 prefix, which download() checks
    dest = root / _HASHED.sub(f"-{digest}.pth", path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(dest)
    return f"{base}/{dest.relative_to(root).as_posix()}"


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize(("name", "config"), FAMILIES, ids=[n for n, _ in FAMILIES])
def test_released_checkpoint_loads_strictly_through_the_cache(name: str, config: str,
                                                              server: tuple[str, Path], tmp_path: Path) -> None:
    base, root = server
    torch.manual_seed(0)
    src = build_segmentor(name, 19)
    url = _publish(src, name, config, base, root)
    dst = build_segmentor(name, 19)
    assert not _same(src, dst)
    assert not load_checkpoint(dst, url)  # strict: an empty mismatch
    assert _same(src, dst)
    cached = list((tmp_path / "cache" / "checkpoints").iterdir())
    assert [p.name for p in cached] == [Path(url).name]
    for served in root.rglob("*.pth"):
        served.unlink()  # a second load must come from the cache, not the network
    again = build_segmentor(name, 19)
    load_checkpoint(again, url)
    assert _same(src, again)


def test_other_architecture_is_one_line_naming_both(server: tuple[str, Path]) -> None:
    base, root = server
    url = _publish(build_segmentor("segformer_mit-b0", 19), "segformer_mit-b0", "segformer_mit-b0_160k.yaml",
                   base, root)
    with pytest.raises(UserError) as err:
        load_checkpoint(build_segmentor("stdc1", 19), url)
    msg = str(err.value)
    assert "\n" not in msg
    assert "it holds segformer_mit-b0 (19 classes) weights, the model is stdc1 (19 classes)" in msg
    assert "missing [backbone.backbone.stages.0.conv.weight" in msg  # stdc1's keys the checkpoint lacks
    assert "unexpected [backbone.layers.0.0.projection.weight" in msg  # SegFormer's keys stdc1 lacks


def test_weights_are_identified_by_keys_and_shapes() -> None:
    """The file name only orders the candidates: without it the zoo is searched; tiny and full are told apart."""
    dv3 = build_segmentor("deeplabv3_r18-d8", 7).state_dict()
    tiny = build_segmentor("pspnet_r18-d8-tiny", 7).state_dict()
    assert identify_weights(dv3) == "deeplabv3_r18-d8 (7 classes)"  # fourth in MODELS: the search goes on to it
    assert identify_weights(dv3, search_all=False) is None
    released = "deeplabv3_r18-d8_512x1024_80k_cityscapes_20201225_021506-23dffbe2.pth"
    assert identify_weights(dv3, hint=released, search_all=False) == "deeplabv3_r18-d8 (7 classes)"
    assert identify_weights(tiny, hint="pspnet_r18-d8_512x1024_80k.pth", search_all=False) is None
    own_run = "pspnet_r18-d8-tiny_run.pth"  # both pspnet_r18-d8 names begin it: the longer one is tried first
    assert identify_weights(tiny, hint=own_run, search_all=False) == "pspnet_r18-d8-tiny (7 classes)"


def test_cli_eval_from_a_url_and_its_mismatch(server: tuple[str, Path], tiny_dataset: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``segdistill eval`` reads a released-layout checkpoint from a URL; a wrong one exits 2 with one line."""
    base, root = server
    tree = tiny_config_tree(tiny_dataset)
    tree["student"]["model"] = "stdc1"
    cfg = tmp_path / "stdc1.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    torch.manual_seed(0)
    good = _publish(build_segmentor("stdc1", 3), "stdc1", "stdc1_80k.yaml", base, root)
    assert main(["eval", str(cfg), "--checkpoint", good, "--no-progress"]) == 0
    capsys.readouterr()
    wrong = _publish(build_segmentor("bisenetv2", 3), "bisenetv2", "bisenetv2_160k.yaml", base, root)
    assert main(["eval", str(cfg), "--checkpoint", wrong, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # before it: the download's progress
    assert "it holds bisenetv2 (3 classes) weights, the model is stdc1 (3 classes)" in last
