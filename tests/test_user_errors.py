"""Every failure a user can cause or meet ends in one line and exit code 2: a table of inputs through the CLI.

Each case builds what it needs in a temporary folder (a config, a broken data file, an unwritable output,
a simulated full disk), runs ``segdistill.cli.main`` in this process, and asserts exit code 2, exactly one
line on stderr, no traceback, and a fragment of the message. The classes: numbers in configs, YAML files,
overrides, command-line sizes, data files the loader cannot use (also when a DataLoader worker meets them),
outputs that cannot be written, and the environment (a full disk, a read-only folder, out of memory).
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config_tree, write_tiny_folder_dataset
from PIL import Image

import segdistill.models
from segdistill import fileio
from segdistill.cli import main
from segdistill.config import DistillTerm, config_from_dict
from segdistill.errors import UserError, unwrap_worker_message
from segdistill.models import build_segmentor, save_checkpoint


class Lab:
    """A temporary folder with a tiny dataset, its config and a student checkpoint, for one case."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.data = write_tiny_folder_dataset(root / "data", n_train=4, n_val=2)
        self.tree = tiny_config_tree(self.data)
        self.tree["train"].update(iters=2, eval_interval=100, checkpoint_interval=2)

    def config(self, tree: dict[str, Any] | None = None, text: str | None = None, name: str = "c.yaml") -> str:
        path = self.root / name
        if text is not None:
            path.write_bytes(text.encode("latin-1"))
        else:
            path.write_text(yaml.safe_dump(tree if tree is not None else self.tree))
        return str(path)

    def checkpoint(self) -> str:
        return str(save_checkpoint(self.root / "s.pth", build_segmentor("pspnet_r18-d8-tiny", 3).state_dict()))

    def train(self, *extra: str) -> list[str]:
        return ["train", self.config(), "--work-dir", str(self.root / "run"), *extra]

    def eval(self, *extra: str) -> list[str]:
        return ["eval", self.config(), "--checkpoint", self.checkpoint(), "--no-progress", *extra]

    def mask(self, i: int = 0, split: str = "train") -> Path:
        return self.data / "masks" / split / f"f{i:03d}.png"

    def image(self, i: int = 0, split: str = "train") -> Path:
        return self.data / "images" / split / f"f{i:03d}.png"


@dataclass
class Case:
    argv: Callable[[Lab], list[str]]
    fragment: str


def _override(*overrides: str) -> Callable[[Lab], list[str]]:
    return lambda lab: ["train", lab.config(), "--work-dir", str(lab.root / "run"), *overrides]


def _duplicate_key(lab: Lab) -> list[str]:
    text = yaml.safe_dump(lab.tree) + "optim:\n  lr: 0.5\n"  # a second optim: block
    return ["train", lab.config(text=text), "--work-dir", str(lab.root / "run")]


def _latin1_config(lab: Lab) -> list[str]:
    return ["train", lab.config(text=yaml.safe_dump(lab.tree) + "# réglages\n"), "--work-dir", str(lab.root / "r")]


def _config_is_a_folder(lab: Lab) -> list[str]:
    (lab.root / "dir.yaml").mkdir()
    return ["train", str(lab.root / "dir.yaml")]


def _empty_image(lab: Lab) -> list[str]:
    for i in range(4):
        lab.image(i).write_bytes(b"")
    return lab.train()


def _float_mask(lab: Lab) -> list[str]:
    for i in range(4):
        lab.mask(i).unlink()
        Image.fromarray(np.full((64, 96), 1.5, np.float32), mode="F").save(lab.mask(i).with_suffix(".tif"))
    return lab.train()


def _jpeg_mask(lab: Lab) -> list[str]:
    Image.open(lab.mask(0)).convert("L").save(lab.mask(0).with_suffix(".jpg"))
    lab.mask(0).unlink()
    return lab.train()


def _folder_image(lab: Lab) -> list[str]:
    lab.image(1).unlink()
    lab.image(1).mkdir()
    return lab.train()


def _broken_link(lab: Lab) -> list[str]:
    lab.image(2).unlink()
    lab.image(2).symlink_to(lab.root / "gone.png")
    return lab.train()


def _bad_labels(lab: Lab) -> None:
    for i in range(4):
        label = np.array(Image.open(lab.mask(i)))
        label[10:20, 10:20] = 7
        Image.fromarray(label).save(lab.mask(i))


def _worker_error(lab: Lab) -> list[str]:
    _bad_labels(lab)
    return lab.train("data.workers=2", "data.persistent_workers=false")


def _classes(text: bytes, name: str = "classes.txt") -> Callable[[Lab], list[str]]:
    def make(lab: Lab) -> list[str]:
        (lab.data / "classes.txt").unlink()
        (lab.data / name).write_bytes(text)
        return lab.train()
    return make


def _under_a_file(lab: Lab) -> Path:
    (lab.root / "file").write_text("x")
    return lab.root / "file" / "m.json"


def _full_disk(lab: Lab) -> list[str]:
    checkpoint, real = lab.checkpoint(), torch.save
    # torch.save's writer fails as on a full disk (the real RuntimeError: "unexpected pos"), and the disk is full.
    lab.monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real(obj, "/dev/full"))
    lab.monkeypatch.setattr(fileio, "_free_bytes", lambda folder: 0)
    return ["export", lab.config(), "--checkpoint", checkpoint, "--out", str(lab.root / "e.pth")]


def _enospc_text(lab: Lab) -> list[str]:
    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
    args = lab.eval("--out", str(lab.root / "m.json"))
    lab.monkeypatch.setattr(Path, "write_bytes", full)
    return args


def _read_only(lab: Lab) -> list[str]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    args = ["export", lab.config(), "--checkpoint", lab.checkpoint(), "--out", str(lab.root / "e.pth")]
    lab.monkeypatch.setattr(tempfile, "mkstemp", refuse)
    return args


def _raises_in_info(err: BaseException) -> Callable[[Lab], list[str]]:
    def make(lab: Lab) -> list[str]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise err
        lab.monkeypatch.setattr(segdistill.models, "model_info", fail)
        return ["info", "pspnet_r18-d8-tiny", "--size", "64", "64", "--num-classes", "3"]
    return make


CASES: dict[str, Case] = {
    # numbers anywhere in a config
    "nan lr": Case(_override("optim.lr=.nan"), "optim.lr: expected a finite number, got nan"),
    "nan from a string": Case(_override("distill.losses=[]", "optim.warmup_ratio=nan"),
                              "optim.warmup_ratio: expected a finite number"),
    "inf in a ratio range": Case(_override("data.ratio_range=[0.5,.inf]"), "data.ratio_range.1: expected a finite"),
    "overflowing number": Case(_override("optim.momentum=1e999"), "optim.momentum: expected a finite number"),
    "momentum 1": Case(_override("optim.momentum=1.0"), "config key 'optim.momentum': must be in [0, 1)"),
    "negative seed": Case(_override("seed=-1"), "config key 'seed': must be an integer in [0, 2**32)"),
    "seed too large": Case(_override("seed=4294967296"), "config key 'seed'"),
    "unknown device": Case(_override("train.device=gpu"), "must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    "zero eval crop": Case(_override("eval.mode=slide", "eval.crop_size=[0,64]", "eval.stride=[8,8]"),
                           "config key 'eval.crop_size': must be positive"),
    "negative eval stride": Case(_override("eval.mode=slide", "eval.crop_size=[32,32]", "eval.stride=[-1,8]"),
                                 "config key 'eval.stride': must be positive"),
    "zero scale": Case(_override("data.scale=[0,64]"), "config key 'data.scale': must be positive"),
    "override into a scalar": Case(_override("optim.lr.0=1"), "'optim.lr' is a single value (0.02)"),
    "override with an empty key": Case(_override("optim..lr=1"), "has an empty key"),
    # config files
    "duplicate key": Case(_duplicate_key, "key 'optim' appears twice in one mapping"),
    "config not UTF-8": Case(_latin1_config, "is not UTF-8 text (byte 0xe9"),
    "config is a folder": Case(_config_is_a_folder, "does not exist (it is a folder)"),
    # command-line sizes
    "info size 0": Case(lambda lab: ["info", "pspnet_r18-d8-tiny", "--size", "0", "64"], "--size must be two positive"),
    "info classes 0": Case(lambda lab: ["info", "pspnet_r18-d8-tiny", "--num-classes", "0"],
                           "--num-classes must be a positive number"),
    "export size negative": Case(lambda lab: ["export", lab.config(), "--checkpoint", lab.checkpoint(), "--out",
                                              str(lab.root / "e.pth"), "--onnx", str(lab.root / "e.onnx"),
                                              "--size", "-8", "64"], "--size must be two positive"),
    "predict opacity": Case(lambda lab: ["predict", lab.config(), "--checkpoint", lab.checkpoint(), "--input",
                                         str(lab.image()), "--out", str(lab.root / "p"), "--opacity", "2"],
                            "--opacity must be in [0, 1]"),
    # data the loader cannot use, named at the file
    "empty image": Case(_empty_image, "is empty (0 bytes)"),
    "float mask": Case(_float_mask, "is a floating-point image with non-integer values (e.g. 1.5)"),
    "jpeg mask": Case(_jpeg_mask, "f000.jpg of image"),
    "folder named like an image": Case(_folder_image, "f001.png is a folder, not a file"),
    "broken link as an image": Case(_broken_link, "f002.png is a broken link"),
    "data error in a loader worker": Case(_worker_error, "has values 7 outside [0, 3)"),
    "class file not UTF-8": Case(_classes("floor 128 64 128\nbr\xe9 220 220 0\ndark 0 0 142\n".encode("latin-1")),
                                 "classes.txt is not UTF-8 text"),
    "class yaml duplicate key": Case(_classes(b"classes:\n- {name: a, color: [1, 2, 3]}\nclasses: []\n",
                                              "classes.yaml"), "key 'classes' appears twice"),
    # outputs that cannot be written, refused before the work
    "eval --out is a folder": Case(lambda lab: lab.eval("--out", str(lab.root)), "it is a folder; give a file name"),
    "eval --out under a file": Case(lambda lab: lab.eval("--out", str(_under_a_file(lab))), "is a file, not a folder"),
    "predict --out is a file": Case(lambda lab: ["predict", lab.config(), "--checkpoint", lab.checkpoint(),
                                                 "--input", str(lab.image()), "--out", str(lab.config())],
                                    "predict writes into a folder"),
    "run folder under a file": Case(lambda lab: lab.train("--work-dir", str(_under_a_file(lab))),
                                    "cannot write to the run folder"),
    # the environment
    "disk full under torch.save": Case(_full_disk, "e.pth: no space left on the device (0 MiB free)"),
    "disk full under a text write": Case(_enospc_text, "m.json: no space left on the device"),
    "read-only folder": Case(_read_only, "e.pth: the file system is read-only"),
    "out of memory": Case(_raises_in_info(MemoryError()), "out of memory (MemoryError); lower train.batch_size"),
    "torch cannot allocate": Case(_raises_in_info(RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")), "out of memory ([enforce fail"),
    "an OSError nobody foresaw": Case(_raises_in_info(PermissionError(errno.EACCES, "Permission denied", "/x/y")),
                                      "error: Permission denied: /x/y"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_user_sees_one_line_and_exit_2(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    case = CASES[name]
    argv = case.argv(Lab(tmp_path, monkeypatch))
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"segdistill {argv[0]}: error: "), err
    assert case.fragment in err, err


def test_a_bug_is_not_hidden_as_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only known causes become one line: another RuntimeError (a bug) keeps its traceback."""
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(_raises_in_info(RuntimeError("shape mismatch"))(Lab(tmp_path, monkeypatch)))


def test_worker_wrappers_are_undone_and_other_text_is_kept() -> None:
    wrapped = ("Caught UserError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 3, in f\n    raise UserError("a: b")\n'
               "segdistill.errors.UserError: label x: bad; fix\n")
    assert str(UserError(wrapped)) == "label x: bad; fix"
    assert unwrap_worker_message("Caught nothing here") == "Caught nothing here"
    assert str(UserError("plain")) == "plain"
    assert pickle.loads(pickle.dumps(UserError("one line"))).args == ("one line",)


def test_a_loss_option_error_names_the_config_key() -> None:
    from segdistill.distill.distiller import DistillStudent

    student = build_segmentor("pspnet_r18-d8-tiny", 3)
    with pytest.raises(UserError) as err:  # built through the API: validate() did not see it
        DistillStudent(student, [DistillTerm(name="a"), DistillTerm(name="b", tau=-1.0)])
    assert "distill.losses.1.tau must be > 0" in str(err.value) and "'tau' in the loss" not in str(err.value)


def test_every_float_field_is_checked_for_finiteness(tmp_path: Path) -> None:
    """The generic pass: each float field of every config dataclass refuses nan, whatever the section."""
    data = write_tiny_folder_dataset(tmp_path / "d", n_train=1, n_val=1)
    keys = ["optim.lr", "optim.min_lr", "optim.power", "optim.weight_decay", "optim.warmup_ratio", "optim.momentum",
            "optim.grad_clip", "optim.norm_weight_decay", "data.cat_max_ratio", "data.flip_prob", "student.aux_weight",
            "train.dist_timeout_min", "eval.scales.0", "optim.betas.0", "data.ratio_range.0"]
    for key in keys:
        tree = tiny_config_tree(data)
        tree["eval"] = {"scales": [1.0]}
        tree["optim"]["betas"] = [0.9, 0.999]
        tree["data"]["ratio_range"] = [0.5, 2.0]
        with pytest.raises(UserError, match="expected a finite number"):
            config_from_dict(tree, [f"{key}=.inf"])
