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
    lines: int = 1  # lines on stderr
    in_doc: bool = True
    env: dict[str, str] = field(default_factory=dict)
    stop: signal.Signals | None = None  # sent once ``wait_for`` exists
    wait_for: Path | None = None
    group: bool = False  # send ``stop`` to the whole process group (as a terminal or SLURM does)
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

    def tree(self, data: Path | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
        tree = tiny_config_tree(data or self.data)
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

    def train(self, name: str) -> list[str]:
        """``train CONFIG --work-dir DIR`` on the good dataset."""
        return ["train", self.config(name), "--work-dir", str(self.path("run"))]

    def finished_run(self, name: str, **train_options: Any) -> tuple[str, Path]:
        cfg = self.config(name, self.tree(train=train_options))
        run = self.path("run")
        torch.set_num_threads(1)
        train(config_from_dict(yaml.safe_load(Path(cfg).read_text())), run)
        return cfg, run


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


# ---- data ---------------------------------------------------------------------------------------------


def _root_missing(lab: Lab) -> list[Cmd]:
    tree = lab.tree(data={"kind": "cityscapes", "root": str(lab.root / "no_such_cityscapes")})
    return [Cmd(["train", lab.config("cs", tree)],
                "does not exist or is not a folder; expected ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png")]


def _wrong_layout(lab: Lab) -> list[Cmd]:
    cs = lab.path("cs")
    (cs / "leftImg8bit" / "train").mkdir(parents=True)
    folder = lab.dataset("nomasks")
    shutil.rmtree(folder / "masks")
    return [Cmd(["train", lab.config("cs", lab.tree(data={"kind": "cityscapes", "root": str(cs)}))],
                "has no gtFine/ folder; expected ROOT/leftImg8bit/"),
            Cmd(["train", lab.config("f", lab.tree(folder))], "has no masks/ folder; expected ROOT/images/")]


def _split_missing(lab: Lab) -> list[Cmd]:
    camvid = lab.path("camvid")
    camvid.mkdir()
    return [Cmd(["train", lab.config("cv", lab.tree(data={"kind": "camvid", "root": str(camvid)}))],
                "split 'train' not found")]


def _labels_not_prepared(lab: Lab) -> list[Cmd]:
    cs = lab.path("cs")
    for split in ("train", "val"):
        (cs / "leftImg8bit" / split / "aachen").mkdir(parents=True)
        (cs / "gtFine" / split / "aachen").mkdir(parents=True)
        _png(cs / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png",
             np.zeros((64, 96, 3), np.uint8))
        (cs / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_polygons.json").write_text("{}")
    return [Cmd(["train", lab.config("cs", lab.tree(data={"kind": "cityscapes", "root": str(cs)}))],
                "segdistill prepare cityscapes")]


def _image_without_label(lab: Lab) -> list[Cmd]:
    d = lab.dataset("d")
    (d / "masks" / "train" / "f000.png").unlink()
    return [Cmd(["train", lab.config("f", lab.tree(d))], "add it or remove the image")]


def _label_without_image(lab: Lab) -> list[Cmd]:
    d = lab.dataset("d")
    (d / "images" / "train" / "f001.png").unlink()
    return [Cmd(["train", lab.config("f", lab.tree(d))],
                "has no image with the same name; add the image or remove the label")]


def _label_values(lab: Lab) -> list[Cmd]:
    d = lab.dataset("d")
    mask = np.array(Image.open(d / "masks" / "train" / "f002.png"))
    mask[10, 10] = 7
    _png(d / "masks" / "train" / "f002.png", mask)
    return [Cmd(["train", lab.config("f", lab.tree(d)), "--work-dir", str(lab.path("run"))],
                "has values 7 outside [0, 3) and not 255 (ignore); fix the label file or the dataset's class list")]


def _sizes(lab: Lab) -> list[Cmd]:
    d = lab.dataset("d")
    _png(d / "masks" / "train" / "f003.png", np.zeros((60, 96), np.uint8))
    return [Cmd(["train", lab.config("f", lab.tree(d)), "--work-dir", str(lab.path("run"))],
                "is 96x60 but its image f003.png is 96x64 (WxH); they must be the same size")]


def _truncated(lab: Lab) -> list[Cmd]:
    d = lab.dataset("d")
    image = d / "images" / "train" / "f004.png"
    image.write_bytes(image.read_bytes()[:200])
    return [Cmd(["train", lab.config("f", lab.tree(d)), "--work-dir", str(lab.path("run"))],
                "is unreadable or truncated (OpenCV cannot decode it); re-copy or re-export the file")]


def _unknown_colour(lab: Lab) -> list[Cmd]:
    d = lab.dataset("d")
    colours = np.array([[128, 64, 128], [220, 220, 0], [0, 0, 142]], np.uint8)
    for mask in (d / "masks" / "train").glob("*.png"):
        index = np.array(Image.open(mask))
        rgb = np.zeros((*index.shape, 3), np.uint8)  # the ignored border stays black: a colour of no class
        rgb[index != 255] = colours[index[index != 255]]
        _png(mask, rgb)
    return [Cmd(["train", lab.config("f", lab.tree(d)), "--work-dir", str(lab.path("run"))],
                "that are not in the class file")]


def _no_cityscapesscripts(lab: Lab) -> list[Cmd]:
    shadow = lab.path("shadow") / "cityscapesscripts"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'cityscapesscripts'\", name='cityscapesscripts')\n")
    cs = lab.path("cs")
    (cs / "gtFine" / "train" / "aachen").mkdir(parents=True)
    (cs / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_polygons.json").write_text("{}")
    return [Cmd(["prepare", "cityscapes", str(cs), "--no-progress"], 'pip install "segdistill[cityscapes]"',
                env={"PYTHONPATH": str(shadow.parent)})]


# ---- configs ------------------------------------------------------------------------------------------


def _override(fragment: str, *overrides: str) -> Callable[[Lab], list[Cmd]]:
    def make(lab: Lab) -> list[Cmd]:
        return [Cmd([*lab.train("c"), *overrides], fragment)]
    return make


def _tau_and_lr(lab: Lab) -> list[Cmd]:
    return [Cmd(["train", lab.distill("d", tau=0.0)], "config key 'distill.losses.0.tau': must be > 0, got 0.0"),
            Cmd([*lab.train("c"), "optim.lr=0"], "config key 'optim.lr': must be > 0, got 0.0")]


def _no_teacher(lab: Lab) -> list[Cmd]:
    tree = lab.tree(distill={"losses": [{"name": "cwd_logits"}]})
    return [Cmd(["train", lab.config("c", tree)], "config key 'distill.losses': distillation losses need a teacher")]


# ---- teacher and distillation -------------------------------------------------------------------------


def _teacher_missing(lab: Lab) -> list[Cmd]:
    return [Cmd(["train", lab.distill("d", checkpoint=lab.root / "teacher_missing.pth")],
                "does not exist; check the path (or give an http(s) URL)")]


def _teacher_unreadable(lab: Lab) -> list[Cmd]:
    bad = lab.path("bad.pth")
    bad.write_bytes(lab.teacher.read_bytes()[:1000])
    return [Cmd(["train", lab.distill("d", checkpoint=bad)], "it may be truncated: re-download or re-save it")]


def _teacher_misfit(lab: Lab) -> list[Cmd]:
    r18 = save_checkpoint(lab.path("r18.pth"), build_segmentor("pspnet_r18-d8-tiny", 3).state_dict())
    return [Cmd(["train", lab.distill("d", checkpoint=r18)], "does not fit the model")]


def _teacher_classes(lab: Lab) -> list[Cmd]:
    seven = save_checkpoint(lab.path("t7.pth"), build_segmentor("pspnet_r50-d8-tiny", 7).state_dict())
    return [Cmd(["train", lab.distill("d", checkpoint=seven)], "predicts 7 classes but the dataset (folder at")]


class _Server(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # quiet
        pass


def _download(lab: Lab) -> list[Cmd]:
    """A refused connection, and a file whose bytes do not match the sha256 prefix in its name."""
    served = lab.path("www")
    served.mkdir()
    (served / "teacher-deadbeef.pth").write_bytes(b"not the released file")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Server, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/teacher-deadbeef.pth"
    cache = {"SEGDISTILL_CACHE": str(lab.path("cache"))}
    return [Cmd(["train", lab.distill("d", checkpoint="http://127.0.0.1:1/teacher.pth")],
                "; check the URL or pass a local file instead", env=cache),
            Cmd(["train", lab.distill("d", checkpoint=url)], "is corrupt: sha256", env=cache)]


def _tap_missing(lab: Lab) -> list[Cmd]:
    cfg = lab.distill("d", name="cwd_feat", student="decode_head.bottleneck", teacher="decode_head.bottelneck")
    return [Cmd(["train", cfg], "has no module named 'decode_head.bottelneck' to tap; nearest: decode_head.bottleneck")]


def _channels(lab: Lab) -> list[Cmd]:
    cfg = lab.distill("d", name="cwd_feat", student="decode_head.bottleneck", teacher="decode_head.bottleneck")
    return [Cmd(["train", cfg], "has 32 channels, teacher decode_head.bottleneck has 128; "
                                "set connector: convbn for this term")]


def _map_sizes(lab: Lab) -> list[Cmd]:
    # backbone.layer1 is stride 4, the teacher's bottleneck stride 8: caught at the first step.
    cfg = lab.distill("d", name="cwd_feat", student="backbone.layer1", teacher="decode_head.bottleneck",
                      connector="convbn")
    return [Cmd(["train", cfg, "--work-dir", str(lab.path("run"))], "differ in spatial size")]


# ---- runs ---------------------------------------------------------------------------------------------


def _unwritable(lab: Lab) -> list[Cmd]:
    blocker = lab.path("file")
    blocker.write_text("not a folder")
    return [Cmd(["train", lab.config("c"), "--work-dir", str(blocker / "run")],
                "cannot write to the run folder")]


def _no_resume(lab: Lab) -> list[Cmd]:
    run = lab.path("run")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "iter_0000002.pth").write_bytes(b"")
    return [Cmd(["train", lab.config("c"), "--work-dir", str(run), "--no-resume"],
                "already holds checkpoints of a run; drop --no-resume to continue it")]


def _finished(lab: Lab) -> list[Cmd]:
    cfg, run = lab.finished_run("c", iters=2)
    return [Cmd(["train", cfg, "--work-dir", str(run)], "is already at iteration 2 of 2")]


def _all_ignored(lab: Lab) -> Path:
    """A dataset whose training labels are all 255: with avg_non_ignore, every CE loss is 0/0 = NaN."""
    d = lab.dataset("ignored")
    for mask in (d / "masks" / "train").glob("*.png"):
        _png(mask, np.full((64, 96), 255, np.uint8))
    return d


def _nonfinite_skipped(lab: Lab) -> list[Cmd]:
    run = lab.path("run")
    tree = lab.tree(_all_ignored(lab), student={"avg_non_ignore": True}, train={"iters": 2})

    def check() -> None:
        text = (run / "metrics.jsonl").read_text()
        assert text.count('"kind": "nonfinite"') == 2, text

    return [Cmd(["train", lab.config("c", tree), "--work-dir", str(run)], None, code=0, lines=0, check=check)]


def _nonfinite_stop(lab: Lab) -> list[Cmd]:
    tree = lab.tree(_all_ignored(lab), student={"avg_non_ignore": True},
                    train={"iters": 5, "max_nonfinite_steps": 2})
    return [Cmd(["train", lab.config("c", tree), "--work-dir", str(lab.path("run"))],
                "non-finite losses in a row at iteration 2; the last good checkpoint is in")]


def _stopped(sig: signal.Signals, group: bool = False) -> Callable[[Lab], list[Cmd]]:
    def make(lab: Lab) -> list[Cmd]:
        run = lab.path("run")
        tree = lab.tree(train={"iters": 500, "checkpoint_interval": 1})
        extra = ["data.workers=2", "data.persistent_workers=true"] if group else []
        return [Cmd(["train", lab.config("c", tree), "--work-dir", str(run), *extra],
                    f"segdistill train: stopped by signal {sig.name} at iteration", code=128 + sig,
                    in_doc=sig == signal.SIGTERM and not group, stop=sig, group=group,
                    wait_for=run / "checkpoints" / "iter_0000001.pth")]
    return make


def _signals(lab: Lab) -> list[Cmd]:
    return _stopped(signal.SIGTERM)(lab) + _stopped(signal.SIGINT)(lab)


def _corrupt_newest(lab: Lab) -> list[Cmd]:
    cfg, run = lab.finished_run("c", iters=4, checkpoint_interval=2)
    newest = run / "checkpoints" / "iter_0000004.pth"
    newest.write_bytes(newest.read_bytes()[:1000])
    return [Cmd(["train", cfg, "--work-dir", str(run)], "; trying the previous one", code=0)]


def _usage(lab: Lab) -> list[Cmd]:
    return [Cmd(["train"], "segdistill train: error: the following arguments are required: config; "
                           "see segdistill train --help"),
            Cmd(["train", lab.config("c"), "--no-such-option"], "unrecognized arguments: --no-such-option",
                in_doc=False)]


#: docs/errors.md row -> the commands that show it.
CASES: dict[str, Callable[[Lab], list[Cmd]]] = {
    "dataset root missing": _root_missing,
    "wrong layout": _wrong_layout,
    "split missing": _split_missing,
    "labels not prepared": _labels_not_prepared,
    "image without its label": _image_without_label,
    "label without its image": _label_without_image,
    "label values outside the classes": _label_values,
    "image and label of different sizes": _sizes,
    "unreadable or truncated image": _truncated,
    "unknown colour in an RGB mask": _unknown_colour,
    "Cityscapes preparation without cityscapesscripts": _no_cityscapesscripts,
    "unknown key": _override("unknown config key 'optim.lrr' (did you mean 'lr'?)", "optim.lrr=0.1"),
    "wrong type": _override("train.iters: expected an integer, got 'many'", "train.iters=many"),
    "value out of range": _tau_and_lr,
    "crop larger than the pipeline can give": _override("is larger than what the pipeline can give",
                                                        "data.crop_size=[4096,4096]"),
    "unknown model": _override("config key 'student.model': unknown model 'pspnet_r34-d8'",
                               "student.model=pspnet_r34-d8"),
    "distillation without a teacher": _no_teacher,
    "malformed override": _override("override 'optim' is not of the form key.sub=value", "optim"),
    "checkpoint missing": _teacher_missing,
    "checkpoint unreadable": _teacher_unreadable,
    "checkpoint does not fit the model (for a zoo model, it names what the weights are and what the model is)":
        _teacher_misfit,
    "teacher and dataset (student) with different classes": _teacher_classes,
    "download failed or corrupt": _download,
    "tapped module missing": _tap_missing,
    "channel mismatch without a connector": _channels,
    "student and teacher maps of different sizes": _map_sizes,
    "output folder cannot be written": _unwritable,
    "`--no-resume` on a folder that holds a run": _no_resume,
    "`train.batch_size=1` with a PSP or ASPP head": _override(
        "the student's BatchNorm after its 1x1 pooling needs at least 2 samples per batch", "train.batch_size=1"),
    "resuming a finished run": _finished,
    "a non-finite loss": _nonfinite_skipped,
    "`train.max_nonfinite_steps` non-finite losses in a row": _nonfinite_stop,
    "SIGTERM / SIGINT (preemption, Ctrl-C)": _signals,
    "SIGTERM / SIGINT to the whole process group (Ctrl-C in a terminal, `kill -TERM -PGID`, `scancel`)":
        _stopped(signal.SIGTERM, group=True),
    "newest checkpoint truncated or corrupt": _corrupt_newest,
    "a mistake on the command line (a missing argument, an unknown option or subcommand)": _usage,
}

#: Rows whose behaviour needs torchrun's restarts or a SIGKILL: covered by these CLI-level tests.
ELSEWHERE: dict[str, str] = {
    "a rank dies under `torchrun --max-restarts N`":
        "tests/test_distributed.py::test_torchrun_elastic_restart_resumes_from_the_last_checkpoint",
    "a rank waits for its peers longer than `train.dist_timeout_min`":
        "tests/test_distributed.py::test_torchrun_elastic_restart_resumes_from_the_last_checkpoint",
    "SIGKILL, power loss":
        "tests/test_distributed.py::test_sigkill_mid_run_then_resume_ends_where_an_uninterrupted_run_ends",
}


def _run(cmd: Cmd) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "segdistill.cli", *cmd.argv]
    env = {**ENV, **cmd.env}
    if cmd.stop is None:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=cmd.group)
    try:
        assert cmd.wait_for is not None
        deadline = time.monotonic() + 240
        while not cmd.wait_for.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, cmd.stop) if cmd.group else proc.send_signal(cmd.stop)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(argv, proc.returncode, "", err)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Cmd, subprocess.CompletedProcess[str]]]]:
    lab = Lab(tmp_path_factory.mktemp("errors"))
    commands = {row: make(lab) for row, make in CASES.items()}
    flat = [(row, cmd) for row, cmds in commands.items() for cmd in cmds]
    with ThreadPoolExecutor(max_workers=6) as pool:
        done = list(pool.map(lambda rc: _run(rc[1]), flat))
    out: dict[str, list[tuple[Cmd, subprocess.CompletedProcess[str]]]] = {row: [] for row in CASES}
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


@pytest.mark.parametrize("row", list(CASES))
def test_a_user_sees_one_line_and_the_documented_exit_code(row: str, outcomes: dict) -> None:
    doc = doc_rows().get(row, "")
    for cmd, out in outcomes[row]:
        shown = f"{' '.join(cmd.argv[:2])} ... -> exit {out.returncode}, stderr:\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr, shown
        assert out.returncode == cmd.code, shown
        assert len(out.stderr.splitlines()) == cmd.lines, shown
        if cmd.fragment is not None:
            assert cmd.fragment in out.stderr, shown
            if cmd.in_doc:
                assert cmd.fragment in doc, f"docs/errors.md's row {row!r} does not say {cmd.fragment!r}"
        if cmd.check is not None:
            cmd.check()


@pytest.mark.xfail(strict=True, reason="a UserError raised in a DataLoader worker (data.workers > 0, the configs' "
                                       "default) reaches the user as torch's 'Caught UserError in DataLoader worker "
                                       "process 0' with the worker's traceback: about 27 lines")
def test_a_data_error_inside_a_loader_worker_is_one_line_too(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    (cmd,) = _label_values(lab)
    out = _run(Cmd([*cmd.argv, "data.workers=2"], cmd.fragment))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
