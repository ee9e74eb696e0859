"""Every row of docs/errors.md, run through the real command line: what a user sees.

Each row of the document's tables maps to one or more ``python -m segdistill.cli ...`` commands in
``CASES`` (or, for the few rows that need torchrun or a SIGKILL, to the CLI-level test that covers them
in ``ELSEWHERE``). For every command the test asserts the exit code, that stderr is exactly the
expected number of lines (one for an error) with no traceback, and that a fragment of the message is
both in stderr and in the document's row, so the document and the program cannot drift apart. A row
added to the document without a command here fails :func:`test_every_row_of_the_doc_is_covered`.

The commands run concurrently (each is a fresh process that imports torch).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config_tree, write_tiny_folder_dataset
from PIL import Image

from segdistill.config import config_from_dict
from segdistill.engine.trainer import train
from segdistill.models import build_segmentor, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "errors.md"
ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
ENV.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
#: A download's progress on stderr (``\rdownloading NAME: 40%``, then a newline): output, not part of the error.
DOWNLOAD_PROGRESS = re.compile(r"^downloading \S+: \d+%$")


def message_lines(stderr: str) -> list[str]:
    """stderr's lines without a download's progress (its ``\r`` updates and the newline that ends them)."""
    lines = stderr.splitlines()
    if any(DOWNLOAD_PROGRESS.match(line) for line in lines):
        lines = [line for line in lines if line and not DOWNLOAD_PROGRESS.match(line)]
    return lines


def doc_rows(text: str | None = None) -> dict[str, str]:
    """``case`` cell -> the whole row, for every table row of docs/errors.md (headers and rules excluded)."""
    rows: dict[str, str] = {}
    for line in (text if text is not None else DOC.read_text()).splitlines():
        if not line.startswith("|") or re.match(r"^\|\s*-", line):
            continue
        case = re.split(r"(?<!\\)\|", line)[1].strip()
        if case != "case":
            assert case not in rows, f"docs/errors.md has two rows named {case!r}"
            rows[case] = line
    return rows


# ---- what runs --------------------------------------------------------------------------------------


@dataclass
class Cmd:
    """One command line and what a user must see."""

    argv: list[str]  # after `python -m segdistill.cli`
    fragment: str | None  # must be in stderr (and, when ``in_doc``, in the document's row)
    code: int = 2
    lines: int = 1  # lines on stderr (besides a download's progress)
    in_doc: bool = True
    env: dict[str, str] = field(default_factory=dict)
    wait_for: Path | None = None  # a file the run writes: then ``during`` is done to it
    during: Callable[[subprocess.Popen], None] | None = None  # e.g. send a signal, move the run folder
    group: bool = False  # the command gets its own process group (as a terminal job or a SLURM step)
    background: list[str] | None = None  # another command that runs first until ``wait_for`` exists
    check: Callable[[], None] | None = None  # more to check once the command has run


class Lab:
    """Files for the commands, in one temporary folder: a good dataset, configs, teacher checkpoints."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = write_tiny_folder_dataset(root / "data")
        self._n = 0
        torch.manual_seed(0)
        self.teacher = save_checkpoint(root / "teacher.pth", build_segmentor("pspnet_r50-d8-tiny", 3).state_dict())

    def path(self, name: str) -> Path:
        self._n += 1
        return self.root / f"{self._n:02d}_{name}"

    def dataset(self, name: str) -> Path:
        """A private copy of the good dataset, to break."""
        return Path(shutil.copytree(self.data, self.path(name)))

    def tree(self, root: Path | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
        tree = tiny_config_tree(root or self.data)
        tree["train"].update(eval_interval=100, checkpoint_interval=100, eval_teacher=False)
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(tree.get(key), dict):
                tree[key].update(value)
            else:
                tree[key] = value
        return tree

    def config(self, name: str, tree: dict[str, Any] | None = None) -> str:
        path = self.path(name).with_suffix(".yaml")
        path.write_text(yaml.safe_dump(tree or self.tree()))
        return str(path)

    def distill(self, label: str, checkpoint: Path | str | None = None, **term: Any) -> str:
        """A distillation config: the tiny R50 teacher, one CWD term (logits unless ``term`` says otherwise)."""
        loss = {"name": "cwd_logits", "type": "cwd", "student": "decode_head.conv_seg",
                "teacher": "decode_head.conv_seg", **term}
        return self.config(label, self.tree(teacher={"model": "pspnet_r50-d8-tiny",
                                                     "checkpoint": str(checkpoint or self.teacher)},
                                            distill={"losses": [loss]}))

    def train(self, cfg: str, *extra: str) -> list[str]:
        """``train CONFIG EXTRA... --work-dir DIR`` in a fresh run folder (never the default runs/<name>)."""
        return ["train", cfg, *extra, "--work-dir", str(self.path("run"))]

    def finished_run(self, name: str, **train_options: Any) -> tuple[str, Path]:
        cfg = self.config(name, self.tree(train=train_options))
        run = self.path("run")
        torch.set_num_threads(1)  # the autouse fixture sets 2 again for the next test
        train(config_from_dict(yaml.safe_load(Path(cfg).read_text())), run)
        return cfg, run


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


# ---- command line -------------------------------------------------------------------------------------


def _usage(lab: Lab) -> list[Cmd]:
    return [Cmd(["train"], "segdistill train: error: the following arguments are required: config; "
                           "see segdistill train --help"),
            Cmd(lab.train(lab.config("c"), "--no-such-option"), "unrecognized arguments: --no-such-option",
                in_doc=False),
            Cmd(["trian"], "invalid choice: 'trian'", in_doc=False)]


# ---- data ---------------------------------------------------------------------------------------------


def _cityscapes_tree(lab: Lab, root: Path) -> dict[str, Any]:
    return lab.tree(data={"kind": "cityscapes", "root": str(root)})


def _root_missing(lab: Lab) -> list[Cmd]:
    cfg = lab.config("cs", _cityscapes_tree(lab, lab.root / "no_such_cityscapes"))
    return [Cmd(lab.train(cfg),
                "does not exist or is not a folder; expected ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png")]


def _wrong_layout(lab: Lab) -> list[Cmd]:
    cs = lab.path("cs")
    (cs / "leftImg8bit" / "train").mkdir(parents=True)
    folder = lab.dataset("nomasks")
    shutil.rmtree(folder / "masks")
    return [Cmd(lab.train(lab.config("cs", _cityscapes_tree(lab, cs))),
                "has no gtFine/ folder; expected ROOT/leftImg8bit/"),
            Cmd(lab.train(lab.config("f", lab.tree(folder))), "has no masks/ folder; expected ROOT/images/")]


def _split_missing(lab: Lab) -> list[Cmd]:
    camvid = lab.path("camvid")
    camvid.mkdir()
    return [Cmd(lab.train(lab.config("cv", lab.tree(data={"kind": "camvid", "root": str(camvid)}))),
                "split 'train' not found")]


def _labels_not_prepared(lab: Lab) -> list[Cmd]:
    cs = lab.path("cs")
    for split in ("train", "val"):
        (cs / "leftImg8bit" / split / "aachen").mkdir(parents=True)
        (cs / "gtFine" / split / "aachen").mkdir(parents=True)
        _png(cs / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png",
             np.zeros((64, 96, 3), np.uint8))
        (cs / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_polygons.json").write_text("{}")
    return [Cmd(lab.train(lab.config("cs", _cityscapes_tree(lab, cs))), "segdistill prepare cityscapes")]


def _broken(lab: Lab, fragment: str, breaks: Callable[[Path], None]) -> list[Cmd]:
    """The good dataset with one thing broken by ``breaks(root)``."""
    d = lab.dataset("d")
    breaks(d)
    return [Cmd(lab.train(lab.config("f", lab.tree(d))), fragment)]


def _label_value_7(d: Path) -> None:
    mask = np.array(Image.open(d / "masks" / "train" / "f002.png"))
    mask[10, 10] = 7
    _png(d / "masks" / "train" / "f002.png", mask)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _rgb_masks_with_black(d: Path) -> None:
    colours = np.array([[128, 64, 128], [220, 220, 0], [0, 0, 142]], np.uint8)
    for mask in (d / "masks" / "train").glob("*.png"):
        index = np.array(Image.open(mask))
        rgb = np.zeros((*index.shape, 3), np.uint8)  # the ignored border stays black: a colour of no class
        rgb[index != 255] = colours[index[index != 255]]
        _png(mask, rgb)


def _no_cityscapesscripts(lab: Lab) -> list[Cmd]:
    shadow = lab.path("shadow") / "cityscapesscripts"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'cityscapesscripts'\", name='cityscapesscripts')\n")
    cs = lab.path("cs")
    (cs / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    (cs / "gtFine" / "train" / "aachen").mkdir(parents=True)
    (cs / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_polygons.json").write_text("{}")
    return [Cmd(["prepare", "cityscapes", str(cs), "--no-progress"], 'pip install "segdistill[cityscapes]"',
                env={"PYTHONPATH": str(shadow.parent)})]


# ---- configs ------------------------------------------------------------------------------------------


def _override(fragment: str, *overrides: str) -> Callable[[Lab], list[Cmd]]:
    def make(lab: Lab) -> list[Cmd]:
        return [Cmd(lab.train(lab.config("c"), *overrides), fragment)]
    return make


def _tau_and_lr(lab: Lab) -> list[Cmd]:
    return [Cmd(lab.train(lab.distill("d", tau=0.0)), "config key 'distill.losses.0.tau': must be > 0, got 0.0"),
            Cmd(lab.train(lab.config("c"), "optim.lr=0"), "config key 'optim.lr': must be > 0, got 0.0")]


def _no_teacher(lab: Lab) -> list[Cmd]:
    tree = lab.tree(distill={"losses": [{"name": "cwd_logits"}]})
    return [Cmd(lab.train(lab.config("c", tree)), "config key 'distill.losses': distillation losses need a teacher")]


# ---- teacher and distillation -------------------------------------------------------------------------


def _teacher(fragment: str, make_checkpoint: Callable[[Lab], Path | str]) -> Callable[[Lab], list[Cmd]]:
    def make(lab: Lab) -> list[Cmd]:
        return [Cmd(lab.train(lab.distill("d", checkpoint=make_checkpoint(lab))), fragment)]
    return make


def _cut_teacher(lab: Lab) -> Path:
    bad = lab.path("bad.pth")
    bad.write_bytes(lab.teacher.read_bytes()[:1000])
    return bad


class _Payload:
    """Unpickling this runs ``exec``: a checkpoint that names code."""

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, ("raise SystemExit('the checkpoint ran code')",)


def _evil_teacher(lab: Lab) -> Path:
    path = lab.path("evil.pth")
    torch.save({"state_dict": torch.load(lab.teacher, weights_only=True)["state_dict"], "x": _Payload()}, path)
    return path


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _download(lab: Lab) -> list[Cmd]:
    """A refused connection, and a file whose bytes do not match the sha256 prefix in its name."""
    served = lab.path("www")
    served.mkdir()
    (served / "teacher-deadbeef.pth").write_bytes(b"not the released file")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/teacher-deadbeef.pth"
    cache = {"SEGDISTILL_CACHE": str(lab.path("cache"))}
    return [Cmd(lab.train(lab.distill("d", checkpoint="http://127.0.0.1:1/teacher.pth")),
                "; check the URL or pass a local file instead", env=cache),
            Cmd(lab.train(lab.distill("d", checkpoint=url)), "is corrupt: sha256", env=cache)]


def _term(fragment: str, **term: Any) -> Callable[[Lab], list[Cmd]]:
    def make(lab: Lab) -> list[Cmd]:
        return [Cmd(lab.train(lab.distill("d", name="cwd_feat", **term)), fragment)]
    return make


# ---- predict, export, info ----------------------------------------------------------------------------


def _headless(lab: Lab) -> list[Cmd]:
    """A checkpoint with no meta and no classifier, and a config whose dataset does not exist."""
    sd = {k: v for k, v in build_segmentor("pspnet_r18-d8-tiny", 3).state_dict().items()
          if not k.startswith("decode_head.conv_seg")}
    ckpt = save_checkpoint(lab.path("headless.pth"), sd)
    cfg = lab.config("c", lab.tree(lab.root / "no_such_data"))
    return [Cmd(["export", cfg, "--checkpoint", str(ckpt), "--out", str(lab.path("out.pth"))],
                "; pass --num-classes N")]


def _no_names(lab: Lab) -> list[Cmd]:
    ckpt = save_checkpoint(lab.path("bare.pth"), build_segmentor("pspnet_r18-d8-tiny", 5).state_dict())
    cfg = lab.config("c", lab.tree(lab.root / "no_such_data"))
    return [Cmd(["export", cfg, "--checkpoint", str(ckpt), "--out", str(lab.path("out.pth"))],
                "records no class names and the config's dataset", code=0)]


def _predict(lab: Lab, data: Path, out: Path, *source: str) -> list[str]:
    """``predict`` with a 3-class student on a private copy ``data`` of the dataset (a bug must not write
    into the dataset the other commands read)."""
    ckpt = save_checkpoint(lab.path("student.pth"), build_segmentor("pspnet_r18-d8-tiny", 3).state_dict())
    return ["predict", lab.config("c", lab.tree(data)), "--checkpoint", str(ckpt), "--out", str(out),
            "--no-progress", *(source or ("--input", str(data / "images" / "val")))]


def _out_in_data(lab: Lab) -> list[Cmd]:
    a, b = lab.dataset("d"), lab.dataset("d")
    return [Cmd(_predict(lab, a, a / "images" / "val" / "preds"), "is inside the input or dataset folder"),
            Cmd(_predict(lab, b, b / "masks" / "val", "--split", "val"), "is inside the input or dataset folder")]


def _out_exists(lab: Lab) -> list[Cmd]:
    out = lab.path("preds")
    out.mkdir()
    (out / "f000_pred.png").write_bytes(b"a prediction from before")
    return [Cmd(_predict(lab, lab.dataset("d"), out),
                "; pass --overwrite to replace them, or choose another --out folder")]


# ---- runs ---------------------------------------------------------------------------------------------


def _unwritable(lab: Lab) -> list[Cmd]:
    blocker = lab.path("file")
    blocker.write_text("not a folder")
    return [Cmd(["train", lab.config("c"), "--work-dir", str(blocker / "run")], "cannot write to the run folder")]


def _no_resume(lab: Lab) -> list[Cmd]:
    run = lab.path("run")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "iter_0000002.pth").write_bytes(b"")
    return [Cmd(["train", lab.config("c"), "--work-dir", str(run), "--no-resume"],
                "already holds checkpoints of a run; drop --no-resume to continue it")]


def _finished(lab: Lab) -> list[Cmd]:
    cfg, run = lab.finished_run("c", iters=4)
    return [Cmd(["train", cfg, "--work-dir", str(run)],
                "is already at iteration 4 of 4; to train longer, raise train.iters and pass --accept-config-change")]


def _long_run(lab: Lab, **train_options: Any) -> tuple[str, Path]:
    """A config of 500 iterations with a checkpoint at each, and its run folder (not yet started)."""
    tree = lab.tree(train={"iters": 500, "checkpoint_interval": 1, **train_options})
    return lab.config("long", tree), lab.path("run")


def _locked(lab: Lab) -> list[Cmd]:
    cfg, run = _long_run(lab)
    return [Cmd(["train", cfg, "--work-dir", str(run)], "is in use by another segdistill train (pid",
                background=["train", cfg, "--work-dir", str(run)], wait_for=run / "checkpoints" / "iter_0000001.pth")]


def _stale_temp(lab: Lab) -> list[Cmd]:
    run = lab.path("run")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".iter_0000002.a1b2c3d4.tmp.pth").write_bytes(b"half a checkpoint")
    cfg = lab.config("c", lab.tree(train={"iters": 1}))

    def check() -> None:
        assert not (run / "checkpoints" / ".iter_0000002.a1b2c3d4.tmp.pth").exists()

    return [Cmd(["train", cfg, "--work-dir", str(run)], None, code=0, lines=0, check=check)]


def _moved(lab: Lab) -> list[Cmd]:
    cfg, run = _long_run(lab)
    return [Cmd(["train", cfg, "--work-dir", str(run)], "was deleted or moved during the run (noticed at iteration",
                wait_for=run / "checkpoints" / "iter_0000001.pth", during=lambda _: run.rename(run.with_name("moved")))]


def _changed(lab: Lab) -> list[Cmd]:
    cfg, run = lab.finished_run("c", iters=2)
    return [Cmd(["train", cfg, "--work-dir", str(run), "train.iters=4", "optim.lr=0.01"],
                "; that is no longer the same run: resume with the original values, pass --accept-config-change")]


def _misfit_resume(lab: Lab) -> list[Cmd]:
    cfg, run = lab.finished_run("c", iters=2)
    return [Cmd(["train", cfg, "--work-dir", str(run), "train.iters=4", "student.model=pspnet_r50-d8-tiny",
                 "--accept-config-change"], "; resume with the config it was trained with, or use a new --work-dir")]


def _weights_only(lab: Lab) -> list[Cmd]:
    cfg, run = lab.finished_run("c", iters=2)
    return [Cmd(["train", cfg, "--work-dir", str(lab.path("run")), "--resume", str(run / "final.pth")],
                "is not a segdistill training checkpoint")]


def _all_ignored(lab: Lab) -> Path:
    """A dataset whose training labels are all 255: with avg_non_ignore, every CE loss is 0/0 = NaN."""
    d = lab.dataset("ignored")
    for mask in (d / "masks" / "train").glob("*.png"):
        _png(mask, np.full((64, 96), 255, np.uint8))
    return d


def _events(run: Path, kind: str, count: int) -> Callable[[], None]:
    def check() -> None:
        text = (run / "metrics.jsonl").read_text()
        assert text.count(f'"kind": "{kind}"') == count, text
    return check


def _nonfinite_skipped(lab: Lab) -> list[Cmd]:
    run = lab.path("run")
    tree = lab.tree(_all_ignored(lab), student={"avg_non_ignore": True}, train={"iters": 2})
    return [Cmd(["train", lab.config("c", tree), "--work-dir", str(run)], None, code=0, lines=0,
                check=_events(run, "nonfinite", 2))]


def _nonfinite_stop(lab: Lab) -> list[Cmd]:
    tree = lab.tree(_all_ignored(lab), student={"avg_non_ignore": True}, train={"iters": 5, "max_nonfinite_steps": 2})
    return [Cmd(lab.train(lab.config("c", tree)),
                "no good checkpoint was saved; lower optim.lr (or check the data) and start again")]


def _checkpoint_skipped(lab: Lab) -> list[Cmd]:
    run = lab.path("run")
    tree = lab.tree(_all_ignored(lab), student={"avg_non_ignore": True}, train={"iters": 2, "checkpoint_interval": 1})
    return [Cmd(["train", lab.config("c", tree), "--work-dir", str(run)], None, code=0, lines=0,
                check=_events(run, "checkpoint_skipped", 2))]


def _exploded(lab: Lab) -> list[Cmd]:
    return [Cmd(lab.train(lab.config("c"), "optim.lr=1e30", "train.iters=3", "train.max_nonfinite_steps=100"),
                "so final.pth was not written")]


def _stopped(sig: signal.Signals, group: bool = False) -> Callable[[Lab], list[Cmd]]:
    def make(lab: Lab) -> list[Cmd]:
        cfg, run = _long_run(lab)
        extra = ["data.workers=2", "data.persistent_workers=true"] if group else []
        send = (lambda p: os.killpg(p.pid, sig)) if group else (lambda p: p.send_signal(sig))
        return [Cmd(["train", cfg, "--work-dir", str(run), *extra],
                    f"segdistill train: stopped by signal {sig.name} at iteration", code=128 + sig,
                    in_doc=sig == signal.SIGTERM and not group, wait_for=run / "checkpoints" / "iter_0000001.pth",
                    during=send, group=group)]
    return make


def _signals(lab: Lab) -> list[Cmd]:
    return _stopped(signal.SIGTERM)(lab) + _stopped(signal.SIGINT)(lab)


def _corrupt_newest(lab: Lab) -> list[Cmd]:
    cfg, run = lab.finished_run("c", iters=4, checkpoint_interval=2)
    newest = run / "checkpoints" / "iter_0000004.pth"
    newest.write_bytes(newest.read_bytes()[:1000])
    return [Cmd(["train", cfg, "--work-dir", str(run)], "; trying the previous one", code=0)]


#: docs/errors.md row -> the commands that show it.
CASES: dict[str, Callable[[Lab], list[Cmd]]] = {
    "a mistake on the command line (a missing argument, an unknown option or subcommand)": _usage,
    # data
    "dataset root missing": _root_missing,
    "wrong layout": _wrong_layout,
    "split missing": _split_missing,
    "labels not prepared": _labels_not_prepared,
    "image without its label": lambda lab: _broken(
        lab, "add it or remove the image", lambda d: (d / "masks" / "train" / "f000.png").unlink()),
    "label without its image": lambda lab: _broken(
        lab, "has no image with the same name; add the image or remove the label",
        lambda d: (d / "images" / "train" / "f001.png").unlink()),
    "label values outside the classes": lambda lab: _broken(
        lab, "has values 7 outside [0, 3) and not 255 (ignore); fix the label file or the dataset's class list",
        _label_value_7),
    "image and label of different sizes": lambda lab: _broken(
        lab, "is 96x60 but its image f003.png is 96x64 (WxH); they must be the same size",
        lambda d: _png(d / "masks" / "train" / "f003.png", np.zeros((60, 96), np.uint8))),
    "unreadable or truncated image": lambda lab: _broken(
        lab, "is unreadable or truncated (OpenCV cannot decode it); re-copy or re-export the file",
        lambda d: _truncate(d / "images" / "train" / "f004.png")),
    "unknown colour in an RGB mask": lambda lab: _broken(lab, "that are not in the class file", _rgb_masks_with_black),
    "Cityscapes preparation without cityscapesscripts": _no_cityscapesscripts,
    # configs
    "unknown key": _override("unknown config key 'optim.lrr' (did you mean 'lr'?)", "optim.lrr=0.1"),
    "wrong type": _override("train.iters: expected an integer, got 'many'", "train.iters=many"),
    "value out of range": _tau_and_lr,
    "crop larger than the pipeline can give": _override("is larger than what the pipeline can give",
                                                        "data.crop_size=[4096,4096]"),
    "unknown model": _override("config key 'student.model': unknown model 'pspnet_r34-d8'",
                               "student.model=pspnet_r34-d8"),
    "distillation without a teacher": _no_teacher,
    "malformed override": _override("override 'optim' is not of the form key.sub=value", "optim"),
    # teacher and distillation
    "checkpoint missing": _teacher("does not exist; check the path (or give an http(s) URL)",
                                   lambda lab: lab.root / "teacher_missing.pth"),
    "checkpoint unreadable": _teacher("it may be truncated: re-download or re-save it", _cut_teacher),
    "checkpoint that names code other than tensors, plain Python data, numpy arrays and OpenMMLab objects "
    "(nothing of it runs)": _teacher("needs builtins.exec to load, which segdistill does not run", _evil_teacher),
    "checkpoint does not fit the model (for a zoo model, it names what the weights are and what the model is)":
        _teacher("does not fit the model", lambda lab: save_checkpoint(
            lab.path("r18.pth"), build_segmentor("pspnet_r18-d8-tiny", 3).state_dict())),
    "teacher and dataset (student) with different classes": _teacher(
        "predicts 7 classes but the dataset (folder at",
        lambda lab: save_checkpoint(lab.path("t7.pth"), build_segmentor("pspnet_r50-d8-tiny", 7).state_dict())),
    "download failed or corrupt": _download,
    "tapped module missing": _term("has no module named 'decode_head.bottelneck' to tap; nearest: "
                                   "decode_head.bottleneck", student="decode_head.bottleneck",
                                   teacher="decode_head.bottelneck"),
    "channel mismatch without a connector": _term(
        "has 32 channels, teacher decode_head.bottleneck has 128; set connector: convbn for this term",
        student="decode_head.bottleneck", teacher="decode_head.bottleneck"),
    # backbone.layer1 is stride 4, the teacher's bottleneck stride 8: refused at the first step.
    "student and teacher maps of different sizes": _term(
        "differ in spatial size", student="backbone.layer1", teacher="decode_head.bottleneck", connector="convbn"),
    # predict, export, info
    "nothing says the number of classes": _headless,
    "no class names anywhere": _no_names,
    "`--out` inside an input folder or a dataset's root, image or label folders": _out_in_data,
    "predictions already in `--out`": _out_exists,
    # runs
    "output folder cannot be written": _unwritable,
    "`--no-resume` on a folder that holds a run": _no_resume,
    "`train.batch_size=1` with a PSP or ASPP head": _override(
        "the student's BatchNorm after its 1x1 pooling needs at least 2 samples per batch", "train.batch_size=1"),
    "resuming a finished run": _finished,
    "a second `segdistill train` on a folder a live run holds (rank 0 holds an `fcntl.flock` on "
    "`<run>/.segdistill.lock`; the kernel drops it when the process dies, SIGKILL included)": _locked,
    "a checkpoint write killed half-way": _stale_temp,
    "the run folder deleted or moved during the run": _moved,
    "resuming with a config that changes the run (anything but `name`, `work_dir`, the log/eval/checkpoint "
    "intervals, `train.device`, `train.dist_timeout_min`, `train.eval_teacher`, `train.max_nonfinite_steps`, "
    "`data.workers`, `data.pin_memory`, `data.persistent_workers`)": _changed,
    "resuming into a model the checkpoint does not fit": _misfit_resume,
    "`--resume` with weights only (`final.pth`, `best.pth`, an export, an mmseg/mmrazor checkpoint)": _weights_only,
    "a non-finite loss": _nonfinite_skipped,
    "`train.max_nonfinite_steps` non-finite losses in a row": _nonfinite_stop,
    "weights or optimizer state not finite, or the step before not finite, at a checkpoint": _checkpoint_skipped,
    "weights not finite at the end of the run (e.g. `optim.lr=1e30` for fewer steps than `max_nonfinite_steps`)":
        _exploded,
    "SIGTERM / SIGINT (preemption, Ctrl-C)": _signals,
    "SIGTERM / SIGINT to the whole process group (Ctrl-C in a terminal, `kill -TERM -PGID`, `scancel`)":
        _stopped(signal.SIGTERM, group=True),
    "newest checkpoint truncated or corrupt": _corrupt_newest,
}

#: Rows that are not a one-line error and need more than one command line to show: torchrun's restarts,
#: a SIGKILL, an mmengine-written file without mmengine. The named tests cover them.
ELSEWHERE: dict[str, str] = {
    "a rank dies under `torchrun --max-restarts N`":
        "tests/test_distributed.py::test_torchrun_elastic_restart_resumes_from_the_last_checkpoint",
    "a rank waits for its peers longer than `train.dist_timeout_min`":
        "tests/test_distributed.py::test_torchrun_elastic_restart_resumes_from_the_last_checkpoint",
    "SIGKILL, power loss":
        "tests/test_distributed.py::test_sigkill_mid_run_then_resume_ends_where_an_uninterrupted_run_ends",
    "mmseg 1.x / mmrazor 1.x checkpoint written by mmengine's Runner (message hub, history buffers with numpy "
    "arrays, `ConfigDict`), mmengine and mmcv not installed":
        "tests/test_reliability.py::test_mmrazor_checkpoint_of_mmengines_runner_loads_without_mmengine",
}


def _wait(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _run(cmd: Cmd) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as a user would; with ``during``/``background``, around a file the run writes."""
    def argv(args: list[str]) -> list[str]:
        return [sys.executable, "-m", "segdistill.cli", *args]

    env = {**ENV, **cmd.env}
    background = None
    if cmd.background is not None:
        assert cmd.wait_for is not None
        background = subprocess.Popen(argv(cmd.background), env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, cwd=REPO)
        _wait(cmd.wait_for, background)
    try:
        if cmd.during is None:
            return subprocess.run(argv(cmd.argv), env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert cmd.wait_for is not None
        proc = subprocess.Popen(argv(cmd.argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, cwd=REPO, start_new_session=cmd.group)
        try:
            _wait(cmd.wait_for, proc)
            if proc.poll() is None:
                cmd.during(proc)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    finally:
        if background is not None:
            background.kill()
            background.wait()


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Cmd, subprocess.CompletedProcess[str]]]]:
    """Run the commands of every selected row, concurrently (``-k`` selects rows: only theirs run)."""
    selected = {item.callspec.params["row"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_a_user_sees_one_line_and_the_documented_exit_code"}
    lab = Lab(tmp_path_factory.mktemp("errors"))
    flat = [(row, cmd) for row, make in CASES.items() if row in selected for cmd in make(lab)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        done = list(pool.map(lambda rc: _run(rc[1]), flat))
    out: dict[str, list[tuple[Cmd, subprocess.CompletedProcess[str]]]] = {row: [] for row in selected}
    for (row, cmd), result in zip(flat, done, strict=True):
        out[row].append((cmd, result))
    return out


def test_every_row_of_the_doc_is_covered() -> None:
    rows = set(doc_rows())
    covered = set(CASES) | set(ELSEWHERE)
    assert not rows - covered, f"rows of docs/errors.md without a command in CASES: {sorted(rows - covered)}"
    assert not covered - rows, f"CASES/ELSEWHERE rows that docs/errors.md no longer has: {sorted(covered - rows)}"


def test_the_coverage_check_sees_a_new_row() -> None:
    text = DOC.read_text() + "\n| a brand-new mistake | `something` | none |\n"
    assert "a brand-new mistake" in set(doc_rows(text)) - set(CASES) - set(ELSEWHERE)


@pytest.mark.parametrize("row", sorted(ELSEWHERE))
def test_rows_covered_elsewhere_name_existing_cli_tests(row: str) -> None:
    path, name = ELSEWHERE[row].split("::")
    assert f"def {name}(" in (REPO / path).read_text(), ELSEWHERE[row]
    assert "segdistill.cli" in (REPO / path).read_text()


@pytest.mark.slow  # about 60 fresh processes that each import torch: 2 CPU-minutes
@pytest.mark.parametrize("row", list(CASES))
def test_a_user_sees_one_line_and_the_documented_exit_code(row: str, outcomes: dict) -> None:
    doc = doc_rows().get(row, "")
    for cmd, out in outcomes[row]:
        shown = f"{' '.join(cmd.argv[:2])} ... -> exit {out.returncode}, stderr:\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr, shown
        assert out.returncode == cmd.code, shown
        assert len(message_lines(out.stderr)) == cmd.lines, shown
        if cmd.fragment is not None:
            assert cmd.fragment in out.stderr, shown
            if cmd.in_doc:
                assert cmd.fragment in doc, f"docs/errors.md's row {row!r} does not say {cmd.fragment!r}"
        if cmd.check is not None:
            cmd.check()


@pytest.mark.slow
def test_a_data_error_inside_a_loader_worker_is_one_line_too(tmp_path: Path) -> None:
    (cmd,) = CASES["label values outside the classes"](Lab(tmp_path))
    out = _run(Cmd([*cmd.argv, "data.workers=2"], cmd.fragment))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
