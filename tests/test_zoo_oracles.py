"""Every zoo model is mmseg 1.2.2's function: keys, shapes, every output and the training losses.

The oracles in ``../shared/reference/mmseg/zoo/`` were computed by the real mmseg with weights in
which every layer matters (``reference_weights.py``: a pure function of each key and shape). Here
each model is built by our builder, loaded with the same weights (strict), and run on the same input.

To add a model: one line in :data:`ORACLES` (our name -> the oracle's file prefix).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from segdistill.models import build_segmentor

# our model name -> oracle file prefix in ../shared/reference/mmseg/zoo/
ORACLES: dict[str, str] = {
    "pspnet_r18-d8": "pspnet_r18",
    "pspnet_r101-d8": "pspnet_r101",
    "deeplabv3_r18-d8": "deeplabv3_r18",
    "deeplabv3_r101-d8": "deeplabv3_r101",
    "deeplabv3plus_m-v2-d8": "mobilenet_v2_deeplabv3plus",
    "deeplabv3_m-v2-d8": "mobilenet_v2_deeplabv3",
    "pspnet_m-v2-d8": "mobilenet_v2_pspnet",
    "fcn_m-v2-d8": "mobilenet_v2_fcn",
    "deeplabv3plus_r18-d8": "deeplabv3plus_r18",
    "segformer_mit-b0": "segformer_mit-b0",
    "segformer_mit-b1": "segformer_mit-b1",
    "bisenetv2": "bisenetv2",
    "stdc1": "stdc1",
}

RTOL = 1e-5  # relative to each output's scale (its max abs value), float32


def _zoo(reference_dir: Path) -> Path:
    return reference_dir / "mmseg" / "zoo"


def _weights_module(reference_dir: Path) -> ModuleType:
    path = _zoo(reference_dir) / "reference_weights.py"
    spec = importlib.util.spec_from_file_location("reference_weights", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entries(reference_dir: Path, oracle: str) -> list[tuple[str, tuple[int, ...]]]:
    return _weights_module(reference_dir).read_entries(_zoo(reference_dir) / f"{oracle}_state_dict.txt")


def reference_model(name: str, reference_dir: Path) -> torch.nn.Module:
    """Our ``name`` (19 classes) with the oracle's weights loaded strictly, in eval mode."""
    oracle = ORACLES[name]
    weights = _weights_module(reference_dir).reference_weights(_entries(reference_dir, oracle))
    model = build_segmentor(name, 19)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def assert_close_rel(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> float:
    """``max|ours - theirs| <= RTOL * max|theirs|``; returns the measured relative difference."""
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != mmseg's {tuple(theirs.shape)}"
    scale = theirs.abs().max().clamp_min(1e-12)
    rel = float((ours.float() - theirs.float()).abs().max() / scale)
    assert rel <= RTOL, f"{what}: relative difference {rel:.3g} > {RTOL}"
    return rel


def mmseg_loss_key(key: str, parts_per_head: dict[str, int]) -> str:
    """mmseg's ``decode.loss_ce`` / ``aux_2.loss_dice`` -> our ``loss_decode`` / ``loss_aux_2_dice``."""
    head, loss = key.split(".", 1)
    part = loss.removeprefix("loss_")
    return f"loss_{head}" if parts_per_head[head] == 1 else f"loss_{head}_{part}"


@pytest.fixture(scope="module")
def outputs_cache() -> dict[str, dict]:
    return {}


def _outputs(name: str, reference_dir: Path, cache: dict[str, dict]) -> dict:
    if name not in cache:
        cache[name] = torch.load(_zoo(reference_dir) / f"{ORACLES[name]}_outputs.pt", weights_only=False)
    return cache[name]


@pytest.mark.parametrize("name", list(ORACLES))
def test_state_dict_keys_and_shapes_equal_mmseg(name: str, reference_dir: Path) -> None:
    want = dict(_entries(reference_dir, ORACLES[name]))
    got = {k: tuple(v.shape) for k, v in build_segmentor(name, 19).state_dict().items()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not unexpected, f"missing {missing[:5]}, unexpected {unexpected[:5]}"
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, f"shapes differ: {dict(list(wrong.items())[:5])}"


@pytest.mark.parametrize("name", list(ORACLES))
def test_outputs_equal_mmseg(name: str, reference_dir: Path, outputs_cache: dict[str, dict]) -> None:
    ref = _outputs(name, reference_dir, outputs_cache)
    model = reference_model(name, reference_dir)
    x = ref["input"]
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
        resized = model.inference(x)
    assert len(feats) == len(ref["backbone_outs"])
    for i, (ours, theirs) in enumerate(zip(feats, ref["backbone_outs"], strict=True)):
        assert_close_rel(ours, theirs, f"backbone output {i}")
    assert_close_rel(out["decode"], ref["decode_out"], "decode head")
    aux_names = list(model.aux_heads())
    assert len(aux_names) == len(ref["aux_outs"])
    for aux_name, theirs in zip(aux_names, ref["aux_outs"], strict=True):
        assert_close_rel(out[aux_name], theirs, aux_name)
    assert_close_rel(resized, ref["seg_logits_resized"], "logits resized to the input")


@pytest.mark.parametrize("name", list(ORACLES))
def test_training_losses_equal_mmseg(name: str, reference_dir: Path, outputs_cache: dict[str, dict]) -> None:
    ref = _outputs(name, reference_dir, outputs_cache)
    if not ref.get("eval_mode_losses"):
        pytest.skip(f"{ORACLES[name]} has no loss oracle")
    model = reference_model(name, reference_dir)
    label = ref["labels"][:, 0].long()
    with torch.no_grad():
        losses = model.loss(model(ref["input"]), label)
    want = {k: float(v) for k, v in ref["eval_mode_losses"].items() if ".loss_" in k}
    parts: dict[str, int] = {}
    for key in want:
        parts[key.split(".")[0]] = parts.get(key.split(".")[0], 0) + 1
    expected = {mmseg_loss_key(k, parts): v for k, v in want.items()}
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert abs(float(losses[key]) - value) <= RTOL * abs(value), f"{key}: {float(losses[key])} != {value}"
