"""A checkpoint written by the real mmengine loads in segdistill without mmengine.

``tests/test_reliability.py`` imitates what mmengine's Runner writes (hand-written stand-ins pickled under
mmengine's module names). This test uses the real library where it can run: mmengine's own
``save_checkpoint`` with its real ``MessageHub`` (``HistoryBuffer`` objects holding numpy arrays),
``ConfigDict`` and the keys ``Runner.save_checkpoint`` writes. The file is written in a child process that
can import mmengine; segdistill reads it here, where mmengine cannot be imported, and exports the student,
which mmengine's real ``load_checkpoint`` (what mmseg's ``init_model`` calls) then loads strictly.

mmengine requires ``opencv-python``, which would replace the environment's ``opencv-python-headless``, so it
is not a dev dependency. It runs from a separate folder, installed without dependencies::

    pip install --no-deps --target /tmp/mmengine-target mmengine addict termcolor rich yapf \\
        markdown-it-py mdurl pygments platformdirs
    SEGDISTILL_MMENGINE_PATH=/tmp/mmengine-target pytest tests/test_mmengine_real.py

(mmengine imports ``cv2``, which the headless OpenCV provides.) Without it the test is skipped, saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segdistill.models import build_segmentor, extract_state_dict, read_checkpoint
from segdistill.models.export import export_student

STUDENT, TEACHER = "pspnet_r18-d8-tiny", "pspnet_r50-d8-tiny"

#: Run in a child process that imports mmengine: what mmseg 1.x / mmrazor 1.x's Runner.save_checkpoint writes.
_WRITER = textwrap.dedent("""
    import sys
    from collections import OrderedDict
    import numpy as np
    import torch
    from mmengine.config import ConfigDict
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    weights, out = sys.argv[1], sys.argv[2]
    state_dict = OrderedDict(torch.load(weights, weights_only=True))
    hub = MessageHub.get_instance("segdistill-test")
    for it in range(1, 4):
        hub.update_scalar("train/loss", 1.0 / it)
        hub.update_scalar("train/lr", np.float64(0.01 / it))
    meta = {"classes": ("road", "car", "sky"), "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}
    hub.update_info("dataset_meta", meta)
    cfg = ConfigDict(model=ConfigDict(type="SingleTeacherDistill"), optim_wrapper=ConfigDict(lr=0.01))
    hub.update_info("cfg", cfg)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    checkpoint = {
        "meta": {"cfg": cfg.to_dict().__repr__(), "seed": 0, "experiment_name": "cwd", "epoch": 0, "iter": 3,
                 "mmengine_version": __import__("mmengine").__version__, "dataset_meta": meta},
        "state_dict": weights_to_cpu(state_dict),
        "message_hub": hub.state_dict(),
        "optimizer": optimizer.state_dict(),
        "param_schedulers": [{"by_epoch": False, "base_values": [0.01], "last_step": 3, "eta_min": 1e-4,
                              "power": 0.9, "_last_lr": [np.float64(1e-4)]}],
    }
    save_checkpoint(checkpoint, out)
""")


def _mmengine_env() -> dict[str, str] | None:
    """The environment of a child process that can import mmengine, or None when there is none."""
    extra = os.environ.get("SEGDISTILL_MMENGINE_PATH", "")
    env = dict(os.environ)
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH", "")) if p)
    probe = subprocess.run([sys.executable, "-c", "import mmengine.runner.checkpoint"], env=env,
                           capture_output=True, text=True, timeout=120)
    return env if probe.returncode == 0 else None


def test_a_checkpoint_saved_by_the_real_mmengine_loads_without_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env = _mmengine_env()
    if env is None:
        pytest.skip("mmengine is not importable (it needs opencv-python; install it with --no-deps into a separate "
                    "folder and set SEGDISTILL_MMENGINE_PATH, see this file's docstring); the imitation in "
                    "test_reliability.py covers the layout meanwhile")
    torch.manual_seed(3)
    student, teacher = build_segmentor(STUDENT, 3), build_segmentor(TEACHER, 3)
    weights = {f"architecture.{k}": v for k, v in student.state_dict().items()}
    weights.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    torch.save(weights, tmp_path / "weights.pth")
    ckpt = tmp_path / "mmrazor_iter_3.pth"
    subprocess.run([sys.executable, "-c", _WRITER, str(tmp_path / "weights.pth"), str(ckpt)], env=env, check=True,
                   timeout=300)

    for name in ("mmengine", "mmcv"):  # not importable here, even where installed
        monkeypatch.setitem(sys.modules, name, None)
    raw = read_checkpoint(ckpt)
    for part, model in (("student", student), ("teacher", teacher)):
        loaded = extract_state_dict(raw, part=part)
        assert loaded.keys() == model.state_dict().keys()
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert list(raw["meta"]["dataset_meta"]["classes"]) == ["road", "car", "sky"]
    out = export_student(ckpt, tmp_path / "student.pth", STUDENT, 3)
    exported = torch.load(out, weights_only=True)
    assert list(exported["meta"]["dataset_meta"]["classes"]) == ["road", "car", "sky"]
    assert all(torch.equal(exported["state_dict"][k], v) for k, v in student.state_dict().items())

    # The export back through mmengine's own loader (what mmseg's init_model calls), strictly.
    reader = textwrap.dedent(f"""
        import torch
        from mmengine.runner.checkpoint import load_checkpoint
        from segdistill.models import build_segmentor
        model = build_segmentor({STUDENT!r}, 3)
        ckpt = load_checkpoint(model, {str(out)!r}, map_location="cpu", strict=True)
        assert list(ckpt["meta"]["dataset_meta"]["classes"]) == ["road", "car", "sky"]
        torch.save(model.state_dict(), {str(tmp_path / "reloaded.pth")!r})
    """)
    subprocess.run([sys.executable, "-c", reader], env=env, check=True, timeout=300)
    reloaded = torch.load(tmp_path / "reloaded.pth", weights_only=True)
    assert all(torch.equal(reloaded[k], v) for k, v in student.state_dict().items())


class _GetattrOnATrustedClass:
    """Pickles as ``getattr(pathlib.Path, "home")``: getattr on anything but an OpenMMLab stand-in."""

    def __reduce__(self) -> tuple:
        import pathlib

        return getattr, (pathlib.Path, "home")


def test_getattr_is_allowed_on_openmmlab_stand_ins_only(tmp_path: Path) -> None:
    from segdistill.models.safe_load import UntrustedGlobal, load_untrusted

    torch.save({"x": _GetattrOnATrustedClass()}, tmp_path / "g.pth")
    with pytest.raises(UntrustedGlobal, match="builtins.getattr"):
        load_untrusted(tmp_path / "g.pth")
