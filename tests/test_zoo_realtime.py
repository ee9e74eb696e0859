"""Real-time students (BiSeNetV2, STDC1, STDC2) beyond the mmseg oracles of ``test_zoo_oracles.py``.

STDC2 has no oracle: its structure is checked against STDC1's (same code, more STDC modules). mmseg's
OHEM pixel sampler and the STDC detail targets are checked on small hand-made cases, where the
oracle input (8192 pixels, fewer than ``min_kept``) cannot tell OHEM from plain CE. Then one training
step per model, STDC's ImageNet weights, and the ONNX export.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segdistill.errors import UserError
from segdistill.models import build_segmentor, load_backbone_checkpoint, seg_cross_entropy
from segdistill.models.export import ONNX_RTOL, export_onnx
from segdistill.models.heads import FCNHead, STDCHead
from segdistill.models.losses import OHEMSampler, ohem_cross_entropy, ohem_pixel_weights

REALTIME = ("bisenetv2", "stdc1", "stdc2")


def _on_meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):  # allocates nothing: structure only
        return build_segmentor(name, 19)


def _shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in _on_meta(name).state_dict().items()}


# ------------------------------------------------------------------------------------------ structure


def test_stdc2_is_stdc1_with_the_stdcnet2_stages() -> None:
    """mmseg's STDCNet2: 4, 5, 3 STDC modules per stage (STDCNet1: 2, 2, 2); everything else as STDC1."""
    one, two = _shapes("stdc1"), _shapes("stdc2")
    assert set(one) <= set(two)
    assert all(two[k] == shape for k, shape in one.items())
    modules: dict[int, set[int]] = {2: set(), 3: set(), 4: set()}
    for key, shape in two.items():
        m = re.fullmatch(r"backbone\.backbone\.stages\.(\d)\.(\d)\.(.+)", key)
        if m is None:
            assert key in one, key  # stems, context path and heads are shared
            continue
        stage, index, rest = int(m[1]), int(m[2]), m[3]
        modules[stage].add(index)
        if key not in one:  # an added module: a stride-1 copy of the stage's second module
            assert index >= 2 and two[f"backbone.backbone.stages.{stage}.1.{rest}"] == shape, key
    assert {s: len(i) for s, i in modules.items()} == {2: 4, 3: 5, 4: 3}
    added = sum(math.prod(s) for k, s in two.items() if k not in one and k.endswith((".weight", ".bias")))
    n_params = {name: sum(p.numel() for p in _on_meta(name).parameters()) for name in ("stdc1", "stdc2")}
    assert n_params["stdc2"] == n_params["stdc1"] + added


def test_stdc1_parameter_count_near_the_published_one() -> None:
    """Hailo's model zoo lists STDC1 (mmseg's Cityscapes model, inference graph) at 8.27M parameters."""
    model = _on_meta("stdc1")
    inference = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.auxiliary_head.parameters())
    assert abs(inference / 1e6 - 8.27) < 0.01


def test_heads_carry_the_configs_loss_settings() -> None:
    bisenet, stdc = _on_meta("bisenetv2"), _on_meta("stdc1")
    assert all(h.loss_weight == 1.0 and h.sampler is None for h in bisenet.heads().values())  # type: ignore[attr-defined]
    assert [h.in_index for h in bisenet.heads().values()] == [0, 1, 2, 3, 4]
    heads = stdc.heads()
    assert [h.in_index for h in heads.values()] == [3, 2, 1, 0]
    assert [h.align_corners for h in heads.values()] == [True, False, False, True]
    for name in ("decode", "aux_0", "aux_1"):
        assert heads[name].sampler == OHEMSampler(thresh=0.7, min_kept=10000)  # type: ignore[attr-defined]
    assert isinstance(heads["aux_2"], STDCHead) and heads["aux_2"].sampler is None
    assert heads["aux_2"].num_classes == 2


# ------------------------------------------------------------------------------------------------ OHEM


def _logits_for(probs: list[float]) -> torch.Tensor:
    """Two-class logits (1, 2, 1, W) whose softmax gives class 0 the probabilities ``probs``."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([torch.log(p / (1 - p)), torch.zeros_like(p)]).float().reshape(1, 2, 1, -1)


# True-class probabilities 0.1 ... 0.95 on six labelled pixels and 0.05 on an ignored one.
PROBS = [0.65, 0.1, 0.95, 0.05, 0.3, 0.8, 0.5]
LABEL = torch.tensor([[[0, 0, 0, 255, 0, 0, 0]]])


@pytest.mark.parametrize("min_kept,kept", [
    (2, [0.65, 0.1, 0.3, 0.5]),          # the threshold 0.7 decides: everything below it
    (4, [0.65, 0.1, 0.3, 0.5]),          # 5th smallest is 0.8: kept are those strictly below it
    (5, [0.65, 0.1, 0.3, 0.8, 0.5]),     # 6th smallest is 0.95: five kept
    (100, [0.65, 0.1, 0.3, 0.8, 0.5]),   # more than there are: the largest labelled one is still dropped
])
def test_ohem_threshold_and_min_kept(min_kept: int, kept: list[float]) -> None:
    weight = ohem_pixel_weights(_logits_for(PROBS), LABEL, thresh=0.7, min_kept=min_kept)
    assert weight.shape == LABEL.shape
    got = [p for p, w in zip(PROBS, weight.flatten().tolist(), strict=True) if w == 1.0]
    assert got == pytest.approx(kept)
    assert weight[0, 0, 3] == 0  # the ignored pixel has the lowest probability but is never kept


def test_ohem_min_kept_counts_per_image() -> None:
    logits, label = _logits_for(PROBS).repeat(2, 1, 1, 1), LABEL.repeat(2, 1, 1)
    # 12 labelled pixels, min_kept 5 per image: the 11th smallest (0.95) is the threshold, 10 are kept
    weight = ohem_pixel_weights(logits, label, thresh=0.7, min_kept=5)
    assert weight.sum() == 10


def test_ohem_without_thresh_keeps_the_largest_losses() -> None:
    weight = ohem_pixel_weights(_logits_for(PROBS), LABEL, thresh=None, min_kept=2)
    assert weight.flatten().tolist() == [0, 1, 0, 0, 1, 0, 0]


def test_ohem_cross_entropy_averages_kept_losses_over_all_pixels() -> None:
    logits = _logits_for(PROBS).requires_grad_()
    loss = ohem_cross_entropy(logits, LABEL, thresh=0.7, min_kept=2)
    kept = [p for p in PROBS if p < 0.7 and p != 0.05]
    assert float(loss.detach()) == pytest.approx(-sum(math.log(p) for p in kept) / 7, rel=1e-6)
    valid_mean = ohem_cross_entropy(logits, LABEL, thresh=0.7, min_kept=2, avg_non_ignore=True)
    assert float(valid_mean.detach()) == pytest.approx(float(loss.detach()) * 7 / 6, rel=1e-6)
    loss.backward()
    dropped = torch.tensor([False, False, True, True, False, True, False])
    assert logits.grad is not None
    assert torch.all(logits.grad[0, :, 0, dropped] == 0) and torch.all(logits.grad[0, :, 0, ~dropped] != 0)


def test_fcn_head_sampler_option() -> None:
    torch.manual_seed(0)
    logits, label = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 8, 8))
    label[0, :2] = 255
    plain = FCNHead(4, 4, 3)
    ohem = FCNHead(4, 4, 3, sampler=OHEMSampler(thresh=0.7, min_kept=5), loss_weight=0.5, align_corners=True)
    assert plain.loss(logits, label)[""] == seg_cross_entropy(logits, label, avg_non_ignore=False)
    want = 0.5 * ohem_cross_entropy(logits, label, 0.7, 5, align_corners=True)
    assert ohem.loss(logits, label)[""] == want


# ----------------------------------------------------------------------------------- STDC detail head


def test_stdc_boundary_targets_of_a_step_edge() -> None:
    """Default kernels, label 0 left / 1 right of column 4 on an 8x8 map (zero padding at the border).

    Stride 1 marks the class-1 pixels touching class 0 or the border (columns 4 and 7, rows 0 and 7 of
    the right half); stride 2 marks the 2x2 cells centred on column 4 (columns 4-5) and the top cell of
    column 6 (rows 0-1, columns 6-7). Stride 4 alone (weight 0.1, not above the 0.1 threshold) adds nothing.
    """
    head = STDCHead(8, 4, 2)
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[:, :, 4:] = 1
    want = torch.zeros(8, 8, dtype=torch.long)
    want[:, 4:6] = 1
    want[:, 7] = 1
    want[[0, 1, 7], 6] = 1
    assert torch.equal(head.boundary_targets(label)[0], want)
    assert not head.boundary_targets(torch.zeros(2, 8, 8, dtype=torch.long)).any()
    # Each level alone, through a one-hot fusion kernel (the oracle's random kernels cannot see stride 4).
    levels = {0: torch.zeros(8, 8, dtype=torch.long), 1: torch.zeros(8, 8, dtype=torch.long)}
    levels[0][:, [4, 7]] = 1
    levels[0][[0, 7], 4:] = 1
    levels[1][:, 4:6] = 1
    levels[1][:2, 6:] = 1
    levels[2] = torch.zeros(8, 8, dtype=torch.long)
    levels[2][:, 4:] = 1  # the stride-4 cell centred on column 4 covers columns 4-7
    for level, expected in levels.items():
        with torch.no_grad():
            head.fusion_kernel.copy_(F.one_hot(torch.tensor(level), 3).float().reshape(1, 3, 1, 1))
        assert torch.equal(head.boundary_targets(label)[0], expected), f"level {level}"


def test_stdc_detail_loss_parts_and_weights() -> None:
    torch.manual_seed(0)
    head = STDCHead(8, 4, 2, ce_weight=2.0, dice_weight=3.0)
    logits, label = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 8, 8))
    target = head.boundary_targets(label)
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    onehot = F.one_hot(target, 2).permute(0, 3, 1, 2).float()
    ce = F.binary_cross_entropy_with_logits(up, onehot)
    p = up.sigmoid()
    dice = 1 - 2 * (p * onehot).sum() / ((p * p).sum() + 1e-3 + (onehot * onehot).sum() + 1e-3)
    losses = head.loss(logits, label)
    assert set(losses) == {"ce", "dice"}
    torch.testing.assert_close(losses["ce"], 2.0 * ce)
    torch.testing.assert_close(losses["dice"], 3.0 * dice)


# ----------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", REALTIME)
def test_training_step(name: str) -> None:
    torch.manual_seed(0)
    model = build_segmentor(name, 5).train()
    x = torch.randn(2, 3, 64, 64)
    label = torch.randint(0, 5, (2, 64, 64))
    label[:, :8] = 255
    losses = model.loss(model(x), label)
    want = ({"loss_decode", *[f"loss_aux_{i}" for i in range(4)]} if name == "bisenetv2" else
            {"loss_decode", "loss_aux_0", "loss_aux_1", "loss_aux_2_ce", "loss_aux_2_dice"})
    assert set(losses) == want
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()  # type: ignore[union-attr]
    for key, param in model.named_parameters():
        if param.requires_grad:  # every layer takes part in the loss
            assert param.grad is not None and torch.isfinite(param.grad).all(), key
            # (a BN bias right before conv + train-mode BN, as in BiSeNetV2's CE block, rightly gets 0)
            assert param.ndim < 4 or param.grad.abs().sum() > 0, key
        else:
            assert key == "auxiliary_head.2.fusion_kernel"


# ------------------------------------------------------------------------------------ ImageNet weights


def test_stdc_imagenet_weights_load_into_the_stdcnet(tmp_path: Path) -> None:
    """mmseg's converted STDCNet files are bare state dicts keyed ``stages.*`` (no prefix)."""
    torch.manual_seed(1)
    src = build_segmentor("stdc1", 19).backbone
    torch.save(dict(src.backbone.state_dict()), tmp_path / "stdc1_imagenet.pth")
    torch.manual_seed(2)
    dst = build_segmentor("stdc1", 19).backbone
    context_before = {k: v.clone() for k, v in dst.state_dict().items() if not k.startswith("backbone.")}
    assert not load_backbone_checkpoint(dst, tmp_path / "stdc1_imagenet.pth")
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(dst.backbone.state_dict()[k], v), k
    for k, v in dst.state_dict().items():  # the context path keeps its init, as in mmseg
        if not k.startswith("backbone."):
            assert torch.equal(v, context_before[k]), k
    # a full segmentor checkpoint loads the whole context path net
    torch.save({"state_dict": build_segmentor("stdc1", 19).state_dict()}, tmp_path / "full.pth")
    assert not load_backbone_checkpoint(dst, tmp_path / "full.pth")


def test_stdc_imagenet_mismatch_is_one_line(tmp_path: Path) -> None:
    sd = dict(build_segmentor("stdc1", 19).backbone.backbone.state_dict())
    sd["final_conv.conv.weight"] = torch.zeros(1024, 1024, 1, 1)  # the classifier's conv: dropped silently
    del sd["stages.0.conv.weight"]
    sd["stages.9.conv.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserError) as info:
        load_backbone_checkpoint(build_segmentor("stdc1", 19).backbone, tmp_path / "bad.pth")
    msg = str(info.value)
    assert "\n" not in msg
    assert "1 missing [stages.0.conv.weight]" in msg and "1 unexpected [stages.9.conv.weight]" in msg


# ---------------------------------------------------------------------------------------------- ONNX


@pytest.mark.slow  # about 10 s each: torch.export tracing
@pytest.mark.parametrize("name", ["bisenetv2", "stdc1"])
def test_onnx_export_matches_inference(name: str, tmp_path: Path) -> None:
    for dep in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(dep)
    import onnxruntime as ort

    torch.manual_seed(3)
    size = (64, 96)
    model = build_segmentor(name, 4)
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(100)  # logits of realistic magnitude
    out = export_onnx(model, tmp_path / "m.onnx", size)
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model.eval().inference(image)  # the decode head's own align_corners (True for STDC)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"image": image.numpy()})[0])
    assert got.shape == ref.shape == (1, 4, *size)
    scale = max(1.0, float(ref.abs().max()))
    assert float((got - ref).abs().max()) <= ONNX_RTOL * scale
