"""export_student (any checkpoint -> student-only .pth that mmseg's loaders read) and export_onnx."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from segdistill.errors import UserError
from segdistill.models import build_segmentor, load_checkpoint
from segdistill.models import export as export_mod
from segdistill.models.export import ExportCheckError, check_onnx, export_onnx, export_student

TINY = "pspnet_r18-d8-tiny"


class OpaqueMeta:
    """Stands for the custom objects mmengine metas may carry (picklable, but not by the safe loader).

    It is pickled under an mmengine module name (see the test), as mmengine's own objects are.
    """


def tiny(seed: int, num_classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_segmentor(TINY, num_classes)
    with torch.no_grad():  # non-default BN statistics, so buffers are really carried over
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.num_batches_tracked.fill_(7)
    return m.eval()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def mmengine_style_load(path: Path, num_classes: int = 4) -> torch.nn.Module:
    """What mmengine's load_checkpoint does on torch >= 2.6: the safe loader, then ckpt['state_dict']."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build_segmentor(TINY, num_classes)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model


def check_exported(path: Path, student: torch.nn.Module) -> dict:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"meta", "state_dict"}
    assert_same_weights(raw["state_dict"], student.state_dict())
    ours = build_segmentor(TINY, 4)
    assert not load_checkpoint(ours, path, strict=True)
    assert_same_weights(ours.state_dict(), student.state_dict())
    assert_same_weights(mmengine_style_load(path).state_dict(), student.state_dict())
    assert raw["meta"]["model"] == TINY and raw["meta"]["num_classes"] == 4
    return raw["meta"]


def test_training_checkpoint(tmp_path: Path) -> None:
    student = tiny(0)
    src = tmp_path / "iter_100.pth"
    torch.save({"meta": {"iteration": 100, "config": {"name": "demo"}, "model": TINY},
                "state_dict": student.state_dict(),
                "connectors": {"cwd.weight": torch.ones(3)}, "optimizer": {"state": {}, "param_groups": []},
                "rng": {"torch": torch.get_rng_state()}}, src)
    out = export_student(src, tmp_path / "student.pth", classes=list("abcd"), palette=[(1, 2, 3)] * 4)
    meta = check_exported(out, student)
    assert meta["source_meta"] == {"iteration": 100, "config": {"name": "demo"}, "model": TINY}
    assert meta["dataset_meta"] == {"classes": ["a", "b", "c", "d"], "palette": [[1, 2, 3]] * 4}
    assert meta["exported_from"] == str(src)
    assert out.stat().st_size < src.stat().st_size


def test_mmrazor_checkpoint_keeps_student_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("mmengine", "mmengine.fake_meta"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(sys.modules["mmengine.fake_meta"], "OpaqueMeta", OpaqueMeta, raising=False)
    monkeypatch.setattr(OpaqueMeta, "__module__", "mmengine.fake_meta")
    student, teacher = tiny(1), tiny(2)
    sd = {f"architecture.{k}": v for k, v in student.state_dict().items()}
    sd.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    sd["distiller.connectors.loss_s4.weight"] = torch.zeros(2)
    # mmengine metas hold numpy values, which the safe loader rejects; export must drop or convert them.
    meta = {"dataset_meta": {"classes": ("a", "b", "c", "d"), "palette": [[0, 0, 0]] * 4},
            "iter": np.int64(80000), "hist": np.arange(3), "obj": OpaqueMeta()}
    src = tmp_path / "mmrazor.pth"
    torch.save({"meta": meta, "state_dict": sd, "message_hub": {"x": 1}}, src)
    out = export_student(src, tmp_path / "student.pth")  # model and classes found from the weights
    meta_out = check_exported(out, student)
    assert meta_out["dataset_meta"] == {"classes": ["a", "b", "c", "d"], "palette": [[0, 0, 0]] * 4}
    assert meta_out["source_meta"] == {"iter": 80000, "hist": [0, 1, 2]}


def test_plain_mmseg_and_bare_state_dict(tmp_path: Path) -> None:
    student = tiny(3)
    (tmp_path / "mmseg.pth").parent.mkdir(exist_ok=True)
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": student.state_dict()}, tmp_path / "mmseg.pth")
    check_exported(export_student(tmp_path / "mmseg.pth", tmp_path / "a.pth"), student)
    torch.save({f"module.{k}": v for k, v in student.state_dict().items()}, tmp_path / "bare.pth")
    meta = check_exported(export_student(tmp_path / "bare.pth", tmp_path / "b.pth", TINY), student)
    assert "source_meta" not in meta and "dataset_meta" not in meta


def test_export_student_errors(tmp_path: Path) -> None:
    src = tmp_path / "ckpt.pth"
    torch.save({"state_dict": tiny(4).state_dict()}, src)
    with pytest.raises(UserError, match="does not fit pspnet_r18-d8"):
        export_student(src, tmp_path / "x.pth", "pspnet_r18-d8")
    with pytest.raises(UserError, match="predicts 4 classes, not 19"):
        export_student(src, tmp_path / "x.pth", TINY, 19)
    with pytest.raises(UserError, match="3 classes given for a model of 4"):
        export_student(src, tmp_path / "x.pth", classes=["a", "b", "c"])
    with pytest.raises(UserError, match="input checkpoint itself"):
        export_student(src, src)
    with pytest.raises(UserError, match="unknown model"):
        export_student(src, tmp_path / "x.pth", "pspnet_r18")
    torch.save({"state_dict": {"backbone.stem.0.weight": torch.zeros(1)}}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="conv_seg"):
        export_student(tmp_path / "odd.pth", tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


# ---------------------------------------------------------------------------------------------- ONNX


def onnx_deps() -> None:
    for name in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(name)


def run_onnx(path: Path, image: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": image.numpy()})[0]


@pytest.mark.parametrize("name,size", [
    (TINY, (48, 48)),         # stride-8 map 6x6: every PSP pool size (1, 2, 3, 6) divides it
    (TINY, (64, 72)),         # 8x9: pools of 3 and 6 do not divide evenly
    ("deeplabv3_r18-d8", (56, 40)),  # full-width DeepLabV3 (ASPP image pooling), uneven size
])
def test_onnx_matches_pytorch(name: str, size: tuple[int, int], tmp_path: Path) -> None:
    onnx_deps()
    import onnx

    torch.manual_seed(5)
    model = build_segmentor(name, 3)
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(100)  # realistic logit magnitudes (~10)
    model.train()
    out = export_onnx(model, tmp_path / "m.onnx", size)
    assert model.training  # mode restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # one self-contained file, no temp left
    proto = onnx.load(str(out))
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in proto.graph.input] == [("image", [1, 3, *size])]
    assert [(o.name, dims(o)) for o in proto.graph.output] == [("logits", [1, 3, *size])]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["mean_rgb"] == "123.675 116.28 103.53" and props["std_rgb"] == "58.395 57.12 57.375"

    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(model(image)["decode"], size=size, mode="bilinear",
                                              align_corners=False)
    got = torch.from_numpy(run_onnx(out, image))
    scale = float(ref.abs().max())
    assert scale > 1.0
    assert float((got - ref).abs().max()) <= 1e-5 * scale
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert check_onnx(out, model, size) <= 1e-5 * scale
    with torch.no_grad():  # the graph no longer computes the model: the check must say so
        model.decode_head.conv_seg.bias.add_(0.01)
    with pytest.raises(ExportCheckError, match="differs from PyTorch"):
        check_onnx(out, model, size)


def test_legacy_exporter_needs_divisible_pooling(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = tiny(7)
    with pytest.raises(UserError, match=r"cannot pool to 3x3.*--size 48 48 \(multiples of 48\)"):
        export_onnx(model, tmp_path / "m.onnx", (64, 64), dynamo=False)
    assert not (tmp_path / "m.onnx").exists()
    out = export_onnx(model, tmp_path / "m.onnx", (48, 96), dynamo=False)
    image = torch.randn(1, 3, 48, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(model(image)["decode"], size=(48, 96), mode="bilinear",
                                              align_corners=False)
    np.testing.assert_allclose(run_onnx(out, image), ref.numpy(), rtol=0, atol=1e-5)


def test_missing_onnx_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(export_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in ("onnx", "onnxscript") else real(name, *a))
    with pytest.raises(UserError, match=r'pip install "segdistill\[export\]"'):
        export_onnx(tiny(8), tmp_path / "m.onnx", (32, 32))
    with pytest.raises(UserError, match="at least 8"):
        export_mod._check_size((4, 32))


def test_reference_mmseg_weights_round_trip(reference_dir: Path, tmp_path: Path) -> None:
    """mmseg's own PSPNet-R18-D8 state dict (172 entries) is recognised and exported loadable both ways."""
    sd = torch.load(reference_dir / "mmseg" / "pspnet_r18_random_init_state_dict.pt", map_location="cpu",
                    weights_only=True)
    src = tmp_path / "mmseg_pspnet_r18.pth"
    torch.save({"meta": {"dataset_meta": {"classes": ["c"] * 19}}, "state_dict": sd}, src)
    out = export_student(src, tmp_path / "student.pth")
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert raw["meta"]["model"] == "pspnet_r18-d8" and len(raw["state_dict"]) == 172
    model = build_segmentor("pspnet_r18-d8", 19)
    load_checkpoint(model, out, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k].to(v.dtype)), k
