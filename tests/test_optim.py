"""The optimizer: SGD or AdamW, and mmengine's paramwise custom keys (SegFormer's head x10, no decay on norms)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config_tree

from segdistill.config import config_from_dict
from segdistill.engine.distributed import DistEnv
from segdistill.engine.run import build_run, lr_at
from segdistill.engine.step import train_step
from segdistill.errors import UserError


def _run(tmp_path: Path, **optim: object):  # noqa: ANN202
    tree = tiny_config_tree(tmp_path)
    tree["optim"] = {"type": "adamw", "lr": 6e-5, "weight_decay": 0.01, "min_lr": 0.0, "power": 1.0, **optim}
    return build_run(config_from_dict(tree), 3, DistEnv())


def test_adamw_with_mmengine_custom_keys(tmp_path: Path) -> None:
    # "head" (lr x10) and "decode_head.conv_seg" (a longer key: wins where both match) and "bn" (no decay).
    rules = [{"key": "head", "lr_mult": 10.0}, {"key": "bn", "decay_mult": 0.0},
             {"key": "decode_head.conv_seg", "lr_mult": 3.0, "decay_mult": 0.5}]
    run = _run(tmp_path, paramwise=rules, betas=[0.9, 0.99])
    assert isinstance(run.optimizer, torch.optim.AdamW)
    groups = {g["name"]: g for g in run.optimizer.param_groups}
    assert groups["decode_head.bottleneck.conv.weight"]["lr_mult"] == 10.0
    assert groups["decode_head.bottleneck.conv.weight"]["weight_decay"] == 0.01
    assert groups["decode_head.conv_seg.weight"]["lr_mult"] == 3.0
    assert groups["decode_head.conv_seg.weight"]["weight_decay"] == pytest.approx(0.005)
    assert groups["backbone.layer1.0.bn1.weight"]["lr_mult"] == 1.0
    assert groups["backbone.layer1.0.bn1.weight"]["weight_decay"] == 0.0
    # "decode_head.bottleneck.bn.weight" matches "head" and "bn": equal length 4 and 2 -> "head" (longer) wins.
    assert groups["decode_head.bottleneck.bn.weight"]["lr_mult"] == 10.0
    assert groups["decode_head.bottleneck.bn.weight"]["weight_decay"] == 0.01
    assert run.optimizer.defaults["betas"] == (0.9, 0.99)
    # Every trainable parameter is in exactly one group.
    assert sum(len(g["params"]) for g in run.optimizer.param_groups) == sum(
        1 for p in run.model.parameters() if p.requires_grad)

    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 3, (2, 32, 32), generator=g))
    train_step(run, iter([batch]), 5)
    base = lr_at(run.cfg, 5)
    assert groups["decode_head.bottleneck.conv.weight"]["lr"] == pytest.approx(10 * base)
    assert groups["backbone.layer1.0.bn1.weight"]["lr"] == pytest.approx(base)


def test_bad_paramwise_rules_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="optim.paramwise.0.key"):
        _run(tmp_path, paramwise=[{"key": ""}])
    with pytest.raises(UserError, match="optim.paramwise.0.lr_mult"):
        _run(tmp_path, paramwise=[{"key": "head", "lr_mult": -1}])
    with pytest.raises(UserError, match="did you mean 'lr_mult'"):
        _run(tmp_path, paramwise=[{"key": "head", "lr_mul": 10}])
