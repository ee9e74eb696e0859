"""The models are mmseg's functions: same keys and shapes, same outputs to the last bit, same losses."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from segdistill.errors import UserError
from segdistill.models import MODELS, build_segmentor, model_info, seg_cross_entropy

REFERENCE_MODELS = {
    "pspnet_r18-d8": "pspnet_r18",
    "pspnet_r101-d8": "pspnet_r101",
    "deeplabv3_r18-d8": "deeplabv3_r18",
    "deeplabv3_r101-d8": "deeplabv3_r101",
}


def _reference_keys(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype, _kind = line.split("\t")
        out[key] = (tuple(ast.literal_eval(shape)), dtype)
    return out


@pytest.mark.parametrize("name", list(REFERENCE_MODELS))
def test_state_dict_keys_and_shapes_equal_mmseg(name: str, reference_dir: Path) -> None:
    want = _reference_keys(reference_dir / "mmseg" / f"{REFERENCE_MODELS[name]}_state_dict.txt")
    got = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
           for k, v in build_segmentor(name, 19).state_dict().items()}
    assert list(got) == list(want)  # same order too: mmseg's printouts and ours line up
    assert got == want


def _reference_pspnet_r18(reference_dir: Path) -> torch.nn.Module:
    model = build_segmentor("pspnet_r18-d8", 19).eval()
    sd = torch.load(reference_dir / "mmseg" / "pspnet_r18_random_init_state_dict.pt")
    model.load_state_dict(sd, strict=True)  # copies float16-exact values into float32 parameters
    return model


@pytest.fixture(scope="module")
def reference_outputs(reference_dir: Path) -> dict:
    return torch.load(reference_dir / "mmseg" / "pspnet_r18_outputs.pt", weights_only=False)


@pytest.mark.parametrize("size", ["64x128", "512x1024"])
def test_outputs_equal_mmseg(size: str, reference_dir: Path, reference_outputs: dict) -> None:
    model = _reference_pspnet_r18(reference_dir)
    ref = reference_outputs[size]
    with torch.no_grad():
        out = model(ref["input"])
    assert out["decode"].shape == ref["decode_logits"].shape
    assert (out["decode"] - ref["decode_logits"]).abs().max() <= 1e-5
    assert (out["aux"] - ref["aux_logits"]).abs().max() <= 1e-5
    if "backbone_outs" in ref:
        with torch.no_grad():
            feats = model.backbone(ref["input"])
        for ours, theirs in zip(feats, ref["backbone_outs"], strict=True):
            assert ours.shape == theirs.shape
            assert (ours - theirs).abs().max() <= 1e-5
        resized = model.inference(ref["input"])
        assert (resized - ref["seg_logits_resized"]).abs().max() <= 1e-5


def test_eval_mode_losses_equal_mmseg(reference_dir: Path, reference_outputs: dict) -> None:
    model = _reference_pspnet_r18(reference_dir)
    ref = reference_outputs["64x128"]
    label = ref["labels"][:, 0].long()
    assert (label == 255).any(), "the case must contain ignored pixels to tell the two averagings apart"
    with torch.no_grad():
        losses = model.loss(model(ref["input"]), label)
    want = ref["eval_mode_losses"]
    torch.testing.assert_close(losses["loss_decode"], want["decode.loss_ce"].reshape(()), rtol=1e-5, atol=0)
    torch.testing.assert_close(losses["loss_aux"], want["aux.loss_ce"].reshape(()), rtol=1e-5, atol=0)


def test_ce_averaging_options_differ_by_the_ignored_share() -> None:
    logits = torch.randn(2, 5, 4, 4)
    label = torch.randint(0, 5, (2, 8, 8))
    label[:, :4] = 255  # half the pixels ignored
    mean_valid = seg_cross_entropy(logits, label, avg_non_ignore=True)
    mean_all = seg_cross_entropy(logits, label, avg_non_ignore=False)
    torch.testing.assert_close(mean_all, mean_valid / 2)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_builder_gives_stride8_logits(name: str) -> None:
    model = build_segmentor(name, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    if name.startswith(("deeplabv3plus", "segformer")):  # they fuse the stride-4 map: logits at stride 4
        assert out["decode"].shape == (1, 7, 16, 24)
    else:
        assert out["decode"].shape == (1, 7, 8, 12)
    if name.startswith("segformer"):  # no auxiliary head
        assert out.keys() == {"decode"}
    elif name == "bisenetv2":  # four booster heads on the semantic stages (strides 4, 8, 16, 32)
        assert [tuple(out[f"aux_{i}"].shape) for i in range(4)] == [(1, 7, 16 // 2**i, 24 // 2**i) for i in range(4)]
    elif name.startswith("stdc"):  # two FCN heads on the context path (strides 8, 16) and the 2-class detail head
        assert [tuple(out[f"aux_{i}"].shape) for i in range(3)] == [(1, 7, 8, 12), (1, 7, 4, 6), (1, 2, 8, 12)]
    else:
        assert out["aux"].shape == (1, 7, 8, 12)
    assert model(torch.randn(1, 3, 64, 96), with_aux=False).keys() == {"decode"}


def test_unknown_model_name_suggests_the_nearest() -> None:
    with pytest.raises(UserError, match="did you mean 'pspnet_r18-d8'"):
        build_segmentor("pspnet_r18_d8", 19)


def test_slide_inference_with_one_window_equals_whole() -> None:
    torch.manual_seed(0)
    model = build_segmentor("pspnet_r18-d8-tiny", 5).eval()
    x = torch.randn(1, 3, 48, 64)
    whole = model.inference(x)
    slide = model.inference(x, mode="slide", crop_size=(48, 64), stride=(32, 32))
    torch.testing.assert_close(slide, whole)


def test_slide_inference_averages_overlapping_windows() -> None:
    torch.manual_seed(0)
    model = build_segmentor("pspnet_r18-d8-tiny", 5).eval()
    x = torch.randn(1, 3, 64, 96)
    slide = model.inference(x, mode="slide", crop_size=(64, 64), stride=(64, 32))
    # Windows start at x=0 and x=32 (the last one shifted back to end at the border).
    left, right = model.inference(x[..., :64]), model.inference(x[..., 32:])
    expected = torch.zeros_like(slide)
    count = torch.zeros(1, 1, 64, 96)
    expected[..., :64] += left
    expected[..., 32:] += right
    count[..., :64] += 1
    count[..., 32:] += 1
    torch.testing.assert_close(slide, expected / count)


def test_flip_tta_averages_probabilities_of_both_views() -> None:
    torch.manual_seed(0)
    model = build_segmentor("pspnet_r18-d8-tiny", 5).eval()
    x = torch.randn(1, 3, 48, 64)
    tta = model.inference(x, flip=True)
    expected = (model.inference(x).softmax(1) + model.inference(x.flip(-1)).flip(-1).softmax(1)) / 2
    torch.testing.assert_close(tta, expected)
    torch.testing.assert_close(tta.sum(1), torch.ones(1, 48, 64))


def test_info_counts_parameters_per_part(reference_dir: Path) -> None:
    import json
    summary = json.loads((reference_dir / "mmseg" / "pspnet_r18_summary.json").read_text())
    info = model_info(build_segmentor("pspnet_r18-d8", 19), "pspnet_r18-d8", (64, 128))
    assert info.params == summary["params"]
    assert info.flops["total"] == sum(v for k, v in info.flops.items() if k != "total")
    assert info.flops["backbone"] > info.flops["decode_head"] > 0
