"""Configs: typed, validated, overridable, and the saved config reads back to the same thing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segdistill.config import Config, config_from_dict, dump_config, load_config
from segdistill.errors import UserError

REPO = Path(__file__).resolve().parents[1]

TEACHER = {"model": "pspnet_r101-d8", "checkpoint": "t.pth"}
CWD = {"name": "cwd_logits", "type": "cwd", "student": "decode_head.conv_seg",
       "teacher": "decode_head.conv_seg", "tau": 1.0, "weight": 5.0}


def test_defaults_are_the_reference_recipe() -> None:
    cfg = config_from_dict({})
    assert cfg.optim.lr == 0.01 and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 0.0005
    assert cfg.optim.power == 0.9 and cfg.optim.min_lr == 1e-4
    assert cfg.train.iters == 80000 and cfg.train.batch_size == 2
    assert cfg.data.crop_size == (512, 1024) and cfg.student.aux_weight is None  # the model's own weights
    from segdistill.models import build_segmentor
    assert build_segmentor(cfg.student.model, 19).auxiliary_head.loss_weight == 0.4


def test_overrides_reach_nested_and_list_items() -> None:
    cfg = config_from_dict({"teacher": TEACHER, "distill": {"losses": [CWD]}},
                           ["optim.lr=1e-3", "train.amp=bf16", "data.crop_size=[256,512]",
                            "distill.losses.0.tau=4", "teacher.mode=reference"])
    assert cfg.optim.lr == 1e-3 and cfg.train.amp == "bf16"
    assert cfg.data.crop_size == (256, 512)
    assert cfg.distill.losses[0].tau == 4.0 and isinstance(cfg.distill.losses[0].tau, float)
    assert cfg.teacher is not None and cfg.teacher.mode == "reference"
    assert config_from_dict({"teacher": TEACHER}, ["teacher=null"]).teacher is None


@pytest.mark.parametrize("tree, overrides, message", [
    ({"optim": {"lrr": 0.1}}, [], r"unknown config key 'optim.lrr' \(did you mean 'lr'\?\)"),
    ({"trian": {}}, [], r"unknown config key 'trian' \(did you mean 'train'\?\)"),
    ({}, ["optim.lr=fast"], r"optim.lr: expected a number, got 'fast'"),
    ({}, ["train.iters=1.5"], r"train.iters: expected an integer"),
    ({}, ["train.amp=fp8"], r"train.amp: 'fp8' is not one of 'none', 'bf16', 'fp16'"),
    ({}, ["data.crop_size=[1,2,3]"], r"data.crop_size: expected 2 values"),
    ({}, ["optim.lr=0"], r"'optim.lr': must be > 0"),
    ({}, ["optim.lr=-1"], r"'optim.lr': must be > 0"),
    ({"teacher": TEACHER, "distill": {"losses": [{**CWD, "tau": 0}]}}, [], r"'distill.losses.0.tau': must be > 0"),
    ({}, ["data.crop_size=[4096,4096]"], r"'data.crop_size': \[4096, 4096\] is larger than what the pipeline"),
    ({}, ["student.model=pspnet_r19-d8"], r"unknown model 'pspnet_r19-d8' \(did you mean 'pspnet_r18-d8'\?\)"),
    ({"distill": {"losses": [CWD]}}, [], r"distillation losses need a teacher"),
    ({}, ["optim"], r"not of the form key.sub=value"),
    ({"teacher": TEACHER, "distill": {"losses": [CWD]}}, ["distill.losses.3.tau=1"], r"not an index below 1"),
])
def test_mistakes_are_one_line_errors(tree: dict, overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        config_from_dict(tree, overrides)
    assert "\n" not in str(err.value)


def test_dump_reads_back_to_the_same_config(tmp_path: Path) -> None:
    cfg = config_from_dict({"teacher": TEACHER, "distill": {"losses": [CWD]}}, ["eval.scales=[0.5,1.0]"])
    (tmp_path / "resolved.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("optim: {lr: [}\n")
    with pytest.raises(UserError, match="bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"optim": {"momentun": 0.9}}))
    with pytest.raises(UserError, match=r"typo.yaml: unknown config key 'optim.momentun'"):
        load_config(tmp_path / "typo.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    assert isinstance(load_config(path), Config)
