"""DeepLabV3+ R50/R101 (no output oracle), the MobileNetV2 tiny variant, ImageNet MobileNetV2 weights, export.

The outputs of the full-width MobileNetV2 models and of DeepLabV3+-R18 are checked against mmseg in
``test_zoo_oracles.py``. For DeepLabV3+-R50/R101 only the structure can be checked: their backbones
are the ResNet oracles' backbones, and their heads follow the rule that reproduces the R18 and
MobileNetV2 DeepLabV3+ oracles exactly, with the widths of mmseg's R50/R101 configs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from test_zoo_oracles import _entries

from segdistill.errors import UserError
from segdistill.models import build_segmentor, load_backbone_checkpoint, load_checkpoint
from segdistill.models.backbones import MobileNetV2
from segdistill.models.export import check_onnx, export_onnx, export_student

TINY = "deeplabv3plus_m-v2-d8-tiny"

Shapes = dict[str, tuple[int, ...]]


def deeplabv3plus_head_shapes(keys: list[str], in_channels: int, channels: int, c1_in: int, c1_channels: int,
                              aux_in: int, aux_channels: int, num_classes: int = 19) -> Shapes:
    """Shapes of a DeepLabV3+ decode head + FCN aux head's ``keys`` for the given widths.

    Each conv is (out, in per group, k); a BN entry has its conv's ``out`` channels.
    """
    fused = channels + c1_channels
    convs = {
        "decode_head.conv_seg": (num_classes, channels, 1),
        "decode_head.image_pool.1.conv": (channels, in_channels, 1),
        "decode_head.aspp_modules.0.conv": (channels, in_channels, 1),
        "decode_head.bottleneck.conv": (channels, 5 * channels, 3),
        "decode_head.c1_bottleneck.conv": (c1_channels, c1_in, 1),
        "decode_head.sep_bottleneck.0.depthwise_conv.conv": (fused, 1, 3),
        "decode_head.sep_bottleneck.0.pointwise_conv.conv": (channels, fused, 1),
        "decode_head.sep_bottleneck.1.depthwise_conv.conv": (channels, 1, 3),
        "decode_head.sep_bottleneck.1.pointwise_conv.conv": (channels, channels, 1),
        "auxiliary_head.conv_seg": (num_classes, aux_channels, 1),
        "auxiliary_head.convs.0.conv": (aux_channels, aux_in, 3),
    }
    for i in (1, 2, 3):  # dilations 12, 24, 36: depthwise separable
        convs[f"decode_head.aspp_modules.{i}.depthwise_conv.conv"] = (in_channels, 1, 3)
        convs[f"decode_head.aspp_modules.{i}.pointwise_conv.conv"] = (channels, in_channels, 1)
    shapes: Shapes = {}
    for key in keys:
        module, name = key.rsplit(".", 1)
        if module in convs:
            out, cin, k = convs[module]
            shapes[key] = (out, cin, k, k) if name == "weight" else (out,)
        else:  # "<path>.bn.<name>": the BN after "<path>.conv"
            assert module.endswith(".bn"), key
            shapes[key] = () if name == "num_batches_tracked" else (convs[module[: -len("bn")] + "conv"][0],)
    return shapes


def _part(entries: list[tuple[str, tuple[int, ...]]], *prefixes: str) -> Shapes:
    return {k: s for k, s in entries if k.startswith(prefixes)}


def _num_params(shapes: Shapes) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(int(torch.Size(s).numel()) for k, s in shapes.items() if not k.endswith(buffers))


def test_deeplabv3plus_head_rule_reproduces_the_oracles(reference_dir: Path) -> None:
    """The shape rule used below for R50/R101 gives exactly the R18 and MobileNetV2 DeepLabV3+ heads."""
    for oracle, widths in (("deeplabv3plus_r18", (512, 128, 64, 12, 256, 64)),
                           ("mobilenet_v2_deeplabv3plus", (320, 512, 24, 48, 96, 256))):
        heads = _part(_entries(reference_dir, oracle), "decode_head.", "auxiliary_head.")
        assert deeplabv3plus_head_shapes(list(heads), *widths) == heads, oracle


@pytest.mark.parametrize("name,depth", [("deeplabv3plus_r50-d8", 50), ("deeplabv3plus_r101-d8", 101)])
def test_deeplabv3plus_resnet_structure(name: str, depth: int, reference_dir: Path) -> None:
    """Keys (in mmseg's order) and shapes: the ResNet oracle's backbone + the R18 head at mmseg's R50/R101 widths."""
    backbone = _part(_entries(reference_dir, "pspnet_r101"), "backbone.")
    if depth == 50:  # ResNet-50 is ResNet-101 with 6 instead of 23 blocks in layer3
        backbone = {k: s for k, s in backbone.items()
                    if not (m := re.match(r"backbone\.layer3\.(\d+)\.", k)) or int(m.group(1)) < 6}
    head_keys = [k for k, _ in _entries(reference_dir, "deeplabv3plus_r18") if k.startswith(("decode_head.",
                                                                                              "auxiliary_head."))]
    # mmseg's deeplabv3plus_r50-d8 config (R101 only changes the depth): in 2048, channels 512,
    # c1 256 -> 48, FCN aux 1024 -> 256.
    want = {**backbone, **deeplabv3plus_head_shapes(head_keys, 2048, 512, 256, 48, 1024, 256)}
    with torch.device("meta"):
        model = build_segmentor(name, 19)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(want)
    assert got == want
    n = sum(p.numel() for p in model.parameters())
    assert n == _num_params(want)
    print(f"{name}: {n} parameters (backbone {sum(p.numel() for p in model.backbone.parameters())})")


@pytest.mark.parametrize("name,oracle", [
    ("deeplabv3plus_m-v2-d8", "mobilenet_v2_deeplabv3plus"), ("deeplabv3_m-v2-d8", "mobilenet_v2_deeplabv3"),
    ("pspnet_m-v2-d8", "mobilenet_v2_pspnet"), ("fcn_m-v2-d8", "mobilenet_v2_fcn"),
    ("deeplabv3plus_r18-d8", "deeplabv3plus_r18"),
])
def test_activations_match_mmseg_printout(name: str, oracle: str, reference_dir: Path) -> None:
    """As many ReLU6 and ReLU modules as mmseg's module printout.

    The oracle weights keep every activation below 6, so the output oracle cannot tell ReLU6 from ReLU.
    """
    text = (reference_dir / "mmseg" / "zoo" / f"{oracle}_model.txt").read_text()
    with torch.device("meta"):
        model = build_segmentor(name, 19)
    for kind in (torch.nn.ReLU, torch.nn.ReLU6):
        want = len(re.findall(rf"\): {kind.__name__}\(", text))
        assert sum(type(m) is kind for m in model.modules()) == want, kind.__name__


def test_tiny_forward_loss_backward() -> None:
    torch.manual_seed(0)
    model = build_segmentor(TINY, 5).train()
    assert model.backbone.out_channels == [8, 8, 24, 80]
    x = torch.randn(2, 3, 64, 64)
    label = torch.randint(0, 5, (2, 64, 64))
    label[:, :4] = 255
    out = model(x)
    assert out["decode"].shape == (2, 5, 16, 16)  # DeepLabV3+: stride 4
    assert out["aux"].shape == (2, 5, 8, 8)
    losses = model.loss(out, label)
    assert set(losses) == {"loss_decode", "loss_aux"}
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    model.eval()
    with torch.no_grad():
        assert model.inference(x[:1]).shape == (1, 5, 64, 64)


# ------------------------------------------------------------------------------------- ImageNet weights


def _mmcls_like(backbone: MobileNetV2) -> dict[str, torch.Tensor]:
    """The backbone's own weights plus the layers mmcls's ImageNet MobileNetV2 has and mmseg's has not."""
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    sd["conv2.conv.weight"] = torch.randn(1280, 320, 1, 1)
    sd.update({f"conv2.bn.{n}": torch.randn(1280) for n in ("weight", "bias", "running_mean", "running_var")})
    sd["conv2.bn.num_batches_tracked"] = torch.tensor(0)
    return sd


def _same(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_imagenet_mobilenet_v2_backbone_checkpoint(tmp_path: Path) -> None:
    sd = _mmcls_like(MobileNetV2())
    # mmcls's own layout: an ImageClassifier with backbone.* and head.fc.*
    mmcls = {f"backbone.{k}": v for k, v in sd.items()}
    mmcls.update({"head.fc.weight": torch.randn(1000, 1280), "head.fc.bias": torch.randn(1000)})
    torch.save({"meta": {}, "state_dict": mmcls}, tmp_path / "mobilenet_v2_batch256_imagenet.pth")
    torch.save(sd, tmp_path / "plain.pth")  # what mmcv's mmcls:// loader leaves: backbone keys, no prefix
    for name in ("mobilenet_v2_batch256_imagenet.pth", "plain.pth"):
        backbone = MobileNetV2()  # mmseg's mobilenet-v2-d8 settings (the builders' backbone)
        assert not load_backbone_checkpoint(backbone, tmp_path / name)
        assert _same(backbone, sd), name

    wrong = dict(sd)
    wrong["layer1.0.conv.0.conv.weights"] = wrong.pop("layer1.0.conv.0.conv.weight")
    torch.save({"state_dict": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(UserError) as err:
        load_backbone_checkpoint(MobileNetV2(), tmp_path / "wrong.pth")
    msg = str(err.value)
    assert "\n" not in msg
    assert "1 missing [layer1.0.conv.0.conv.weight]; 1 unexpected [layer1.0.conv.0.conv.weights]" in msg


# ---------------------------------------------------------------------------------------------- export


def test_export_student_and_onnx(tmp_path: Path) -> None:
    for name in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(name)
    import onnxruntime as ort

    torch.manual_seed(3)
    model = build_segmentor(TINY, 4)
    with torch.no_grad():  # trained-like BN statistics, so the exported buffers matter
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    torch.save({"meta": {"iter": 5}, "state_dict": model.state_dict()}, tmp_path / "ckpt.pth")
    out = export_student(tmp_path / "ckpt.pth", tmp_path / "student.pth")  # model found from the weights
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert raw["meta"]["model"] == TINY and raw["meta"]["num_classes"] == 4
    loaded = build_segmentor(TINY, 4)
    assert not load_checkpoint(loaded, out)
    assert _same(loaded, model.state_dict())

    size = (64, 80)  # stride-4 logits 16x20, stride-8 map 8x10
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        scale = float(model(image)["decode"].abs().max())
        model.decode_head.conv_seg.weight.mul_(10.0 / scale)  # realistic logit magnitudes (~10)
        ref = torch.nn.functional.interpolate(model(image)["decode"], size=size, mode="bilinear", align_corners=False)
    path = export_onnx(model, tmp_path / "m.onnx", size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"image": image.numpy()})[0])
    rel = float((got - ref).abs().max()) / float(ref.abs().max())
    print(f"{TINY} ONNX vs PyTorch: max relative difference {rel:.2e}")
    assert rel <= 1e-5
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert check_onnx(path, model, size) <= 1e-5 * float(ref.abs().max())
