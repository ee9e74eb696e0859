"""SegFormer beyond the B0/B1 oracles (those are in test_zoo_oracles.py): the B2-B5 structure, parameter
counts against the paper, a training step of the tiny variant, ImageNet MiT checkpoints, the frozen
teacher's fast paths and the ONNX export.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from segdistill.distill import FrozenTeacher
from segdistill.errors import UserError
from segdistill.models import build_segmentor, load_backbone_checkpoint
from segdistill.models.backbones.mit import DropPath, MixVisionTransformer
from segdistill.models.heads.segformer import SegformerHead

TINY = "segformer_mit-b0-tiny"
TAP = "decode_head.conv_seg"
# mmseg's configs: blocks per stage of each MiT size (B0 and B1 have the same depths).
DEPTHS = {"b1": (2, 2, 2, 2), "b2": (3, 4, 6, 3), "b3": (3, 4, 18, 3), "b4": (3, 8, 27, 3), "b5": (3, 6, 40, 3)}
BLOCK_KEY = re.compile(r"^backbone\.layers\.(\d)\.1\.(\d+)\.(.*)$")


def _read_entries(reference_dir: Path, oracle: str) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for line in (reference_dir / "mmseg" / "zoo" / f"{oracle}_state_dict.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        out.append((key, tuple(int(v) for v in shape.strip("()").split(",") if v.strip())))
    return out


def _on_meta(name: str, num_classes: int = 19) -> nn.Module:
    with torch.device("meta"):  # no memory, no init cost: only names and shapes matter here
        return build_segmentor(name, num_classes)


@pytest.mark.parametrize("size", ["b2", "b3", "b4", "b5"])
def test_larger_sizes_are_b1_with_more_blocks(size: str, reference_dir: Path) -> None:
    """mmseg's B2-B5 configs change only the depths of B1: every key and shape follows from B1's oracle."""
    b1 = _read_entries(reference_dir, "segformer_mit-b1")
    # Block 0 of each stage is the template of every block of that stage.
    template: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
    for key, shape in b1:
        if (block := BLOCK_KEY.match(key)) and block.group(2) == "0":
            template.setdefault(int(block.group(1)), []).append((block.group(3), shape))
    want: list[tuple[str, tuple[int, ...]]] = []
    for key, shape in b1:  # mmseg's order: patch embedding, block 0, block 1, ..., stage norm
        if (block := BLOCK_KEY.match(key)) is None:
            want.append((key, shape))
        elif key == f"backbone.layers.{block.group(1)}.1.0.norm1.weight":
            stage = int(block.group(1))
            want += [(f"backbone.layers.{stage}.1.{j}.{rest}", s)
                     for j in range(DEPTHS[size][stage]) for rest, s in template[stage]]
    got = [(k, tuple(v.shape)) for k, v in _on_meta(f"segformer_mit-{size}").state_dict().items()]
    assert got == want
    blocks = {int(m.group(1)): int(m.group(2)) + 1 for k, _ in got if (m := BLOCK_KEY.match(k))}
    assert tuple(blocks[i] for i in range(4)) == DEPTHS[size]


def test_b0_b1_parameter_counts_equal_mmseg(reference_dir: Path) -> None:
    import json

    for name in ("segformer_mit-b0", "segformer_mit-b1"):
        summary = json.loads((reference_dir / "mmseg" / "zoo" / f"{name}_summary.json").read_text())
        model = _on_meta(name)
        assert sum(p.numel() for p in model.backbone.parameters()) == summary["params"]["backbone"]
        assert sum(p.numel() for p in model.decode_head.parameters()) == summary["params"]["decode_head"]


# The SegFormer paper's parameter counts (M) of the whole model on ADE20K (150 classes), Table 2. Its B0/B1
# decoders have 256 channels, its B2-B5 decoders 768; mmseg's configs (and our builders) use 256 for all.
PAPER_PARAMS_M = {"b0": (3.8, 256), "b1": (13.7, 256), "b2": (27.5, 768), "b3": (47.3, 768), "b4": (64.1, 768),
                  "b5": (84.7, 768)}


@pytest.mark.parametrize("size", list(PAPER_PARAMS_M))
def test_parameter_counts_match_the_paper(size: str) -> None:
    paper, decoder_channels = PAPER_PARAMS_M[size]
    model = _on_meta(f"segformer_mit-{size}", 150)
    with torch.device("meta"):
        head = SegformerHead(model.backbone.out_channels, decoder_channels, 150)
    total = sum(p.numel() for p in model.backbone.parameters()) + sum(p.numel() for p in head.parameters())
    assert round(total / 1e6, 1) == paper, f"{total / 1e6:.3f}M, paper {paper}M"
    assert model.decode_head.channels == 256  # mmseg's configs, every size


def test_tiny_trains_one_step() -> None:
    torch.manual_seed(0)
    model = build_segmentor(TINY, 5).train()
    assert model.backbone.out_channels == [8, 16, 40, 64] and model.decode_head.channels == 64
    x = torch.randn(2, 3, 64, 64)
    label = torch.randint(0, 5, (2, 64, 64))
    label[:, :4] = 255
    feats = model.backbone(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 16, 16), (16, 8, 8), (40, 4, 4), (64, 2, 2)]
    out = model(x)
    assert set(out) == {"decode"} and out["decode"].shape == (2, 5, 16, 16)  # stride 4, no auxiliary head
    losses = model.loss(out, label)
    assert set(losses) == {"loss_decode"} and torch.isfinite(losses["loss_decode"])
    losses["loss_decode"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"no (finite) gradient for {no_grad[:5]}"


def test_drop_path_schedule_and_eval_identity() -> None:
    backbone = MixVisionTransformer(embed_dims=8, num_layers=(2, 2, 2, 2), num_heads=(1, 2, 5, 8),
                                    drop_path_rate=0.1)
    rates = [m.drop_prob for m in backbone.modules() if isinstance(m, DropPath)]
    # attn and ffn of each of the 8 blocks, linear from 0 to 0.1 over the blocks (mmseg's rule)
    expected = torch.linspace(0, 0.1, 8).tolist()
    assert rates == [r for r in expected for _ in range(2)]
    drop = DropPath(0.5)
    x = torch.ones(4000, 3)
    assert torch.equal(drop.eval()(x), x)
    y = drop.train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}  # whole samples dropped, survivors scaled by 1/keep
    assert abs(float((y[:, 0] == 0).float().mean()) - 0.5) < 0.05
    assert torch.equal(y[:, 0], y[:, 1])


# ----------------------------------------------------------------------------- ImageNet MiT checkpoints


def test_imagenet_mit_checkpoints_load(tmp_path: Path) -> None:
    """mmseg's ``mit_bX.pth`` (mit2mmseg.py output: a bare backbone state dict) and a full segmentor file."""
    torch.manual_seed(1)
    source = build_segmentor(TINY, 19).backbone
    sd = source.state_dict()
    torch.save(dict(sd), tmp_path / "mit_tiny.pth")
    torch.save({"meta": {}, "state_dict": {f"backbone.{k}": v for k, v in sd.items()}
                | {"decode_head.conv_seg.bias": torch.zeros(19)}}, tmp_path / "segformer_tiny.pth")
    for name in ("mit_tiny.pth", "segformer_tiny.pth"):
        torch.manual_seed(2)
        target = build_segmentor(TINY, 19).backbone
        assert not load_backbone_checkpoint(target, tmp_path / name)
        for k, v in target.state_dict().items():
            assert torch.equal(v, sd[k]), (name, k)

    broken = dict(sd)
    del broken["layers.0.1.0.attn.attn.in_proj_bias"]
    broken["head.weight"] = torch.zeros(10, 64)  # the ImageNet classifier, had it not been converted
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(UserError) as err:
        load_backbone_checkpoint(build_segmentor(TINY, 19).backbone, tmp_path / "broken.pth")
    message = str(err.value)
    assert "\n" not in message
    assert "1 missing [layers.0.1.0.attn.attn.in_proj_bias]" in message and "1 unexpected [head.weight]" in message


def test_mmseg_named_mit_b0_loads(reference_dir: Path, tmp_path: Path) -> None:
    """A ``mit_b0.pth`` with mmseg's key names and shapes (the B0 oracle's ``backbone.*`` keys) loads strictly."""
    entries = [(k.removeprefix("backbone."), s) for k, s in _read_entries(reference_dir, "segformer_mit-b0")
               if k.startswith("backbone.")]
    sd = {k: torch.randn(s) for k, s in entries}
    torch.save(sd, tmp_path / "mit_b0.pth")
    backbone = build_segmentor("segformer_mit-b0", 19).backbone
    assert not load_backbone_checkpoint(backbone, tmp_path / "mit_b0.pth")
    assert list(backbone.state_dict()) == [k for k, _ in entries]


# ----------------------------------------------------------------------------- frozen teacher fast paths


def _teacher_model(seed: int = 3) -> nn.Module:
    """SegFormer-B0 (full width: the tiny one's 8-channel stages are needlessly bfloat16-sensitive) with BN
    statistics and affine terms away from identity, and logits of scale ~10."""
    torch.manual_seed(seed)
    model = build_segmentor("segformer_mit-b0", 7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.decode_head.conv_seg.weight.mul_(100)
    return model.eval()


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def test_frozen_teacher_fast_paths() -> None:
    model = _teacher_model()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(x)["decode"]
    assert float(ref.abs().max()) > 1.0

    def count(m: nn.Module, kind: type) -> int:
        return sum(isinstance(c, kind) for c in m.modules())

    fast = FrozenTeacher(copy.deepcopy(model), [TAP], fold_bn=True, channels_last=True)
    assert count(model, nn.BatchNorm2d) == 5 and count(fast.model, nn.BatchNorm2d) == 0  # the head's ConvModules
    assert count(fast.model, nn.LayerNorm) == count(model, nn.LayerNorm) == 30  # the backbone's, untouched
    assert _rel(fast(x)[TAP], ref) <= 1e-5

    bf16 = FrozenTeacher(copy.deepcopy(model), [TAP], fold_bn=True, channels_last=True, bf16=True)
    got = bf16(x)[TAP]
    assert got.dtype == torch.float32
    # bfloat16 keeps 8 significant bits (unit roundoff 3.9e-3) through ~40 matmuls, convs and norms:
    # measured 1.0-1.9e-2 of the logit scale over three seeds, as much as plain autocast loses.
    assert _rel(got, ref) <= 0.04
    assert float((got.argmax(1) == ref.argmax(1)).float().mean()) >= 0.95


# ----------------------------------------------------------------------------- ONNX


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    for name in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(name)
    from segdistill.models.export import ONNX_RTOL, ExportCheckError, check_onnx, export_onnx

    torch.manual_seed(5)
    model = build_segmentor(TINY, 3)
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(100)  # logits of scale ~10
    size = (72, 40)  # not a multiple of 32: every stage rounds its size up
    out = export_onnx(model, tmp_path / "segformer.onnx", size)  # checks against onnxruntime itself
    model.eval()
    with torch.no_grad():
        scale = float(model.inference(torch.randn(1, 3, *size)).abs().max())
    assert scale > 1.0
    assert check_onnx(out, model, size) <= ONNX_RTOL * scale
    with torch.no_grad():  # the graph no longer computes the model: the check must say so
        model.backbone.layers[2][1][0].attn.attn.out_proj.weight.mul_(1.1)
    with pytest.raises(ExportCheckError):
        check_onnx(out, model, size)
