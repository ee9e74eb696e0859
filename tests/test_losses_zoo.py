"""DIST, MGD and logit standardization: mmrazor parity, independent references, seeded masks, wiring, CLI runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_config_tree

from segdistill.cli import main
from segdistill.config import DistillTerm, config_from_dict, dump_config
from segdistill.distill.connectors import MGDConnector, build_connector
from segdistill.distill.distiller import DistillStudent, tap_channels
from segdistill.distill.losses import (
    ChannelWiseDivergence,
    DISTLoss,
    MGDLoss,
    PixelWiseKD,
    build_loss,
    standardize_logits,
)
from segdistill.distill.teacher import FrozenTeacher
from segdistill.errors import UserError
from segdistill.models import build_segmentor, save_checkpoint

# --------------------------------------------------------------------------------------------
# oracle cases and helpers


@pytest.fixture(scope="module")
def zoo_cases(reference_dir: Path) -> dict[str, Any]:
    data = torch.load(reference_dir / "mmrazor" / "loss_zoo_cases.pt", weights_only=False)
    assert len(data["dist"]) >= 5 and len(data["mgd"]) >= 3
    return data


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _assert_grad_close(grad: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    grad, ref = grad.double(), ref.double()
    peak = float(ref.abs().max())
    assert peak > 0, name
    assert float((grad - ref).abs().max()) <= 1e-5 * peak, name
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6 * peak, msg=name)


def _dist_from_case(case: dict[str, Any]) -> DISTLoss:
    return DISTLoss(tau=case["tau"], inter_weight=case["inter_loss_weight"], intra_weight=case["intra_loss_weight"],
                    loss_weight=case["loss_weight"])


# --------------------------------------------------------------------------------------------
# DIST: parity with mmrazor and an explicit-loop reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dist_matches_mmrazor(zoo_cases: dict[str, Any], dtype: torch.dtype) -> None:
    for case in zoo_cases["dist"]:
        name = case["name"]
        s = case["preds_S"].to(dtype).clone().requires_grad_(True)
        t = case["preds_T"].to(dtype)
        loss = _dist_from_case(case)(s, t)
        assert loss.dtype == dtype and loss.dim() == 0
        loss.backward()
        assert s.grad is not None
        assert _rel(loss.item(), float(case["loss"])) <= 1e-5, name
        _assert_grad_close(s.grad, case["grad_preds_S"], name)


def _np_pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (math.sqrt((a * a).sum()) * math.sqrt((b * b).sum()) + 1e-8))


def _np_dist(s: np.ndarray, t: np.ndarray, tau: float, beta: float, gamma: float, w: float) -> float:
    """DIST with explicit loops over pixels and classes, in float64."""
    def probs(x: np.ndarray) -> np.ndarray:
        e = np.exp(x / tau - (x / tau).max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ps, pt = probs(s), probs(t)
    n, c, h, w_ = s.shape
    rows = [_np_pearson(ps[i, :, y, x], pt[i, :, y, x]) for i in range(n) for y in range(h) for x in range(w_)]
    cols = [_np_pearson(ps[:, k].ravel(), pt[:, k].ravel()) for k in range(c)]
    return w * tau**2 * (beta * (1 - sum(rows) / len(rows)) + gamma * (1 - sum(cols) / len(cols)))


def test_dist_matches_explicit_loops() -> None:
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 3, 4, generator=g) * 3, torch.randn(2, 5, 3, 4, generator=g) * 3
    for tau, beta, gamma, w in [(1.0, 1.0, 1.0, 1.0), (4.0, 2.0, 0.5, 3.0), (2.0, 0.0, 1.0, 1.0)]:
        want = _np_dist(s.double().numpy(), t.double().numpy(), tau, beta, gamma, w)
        got = DISTLoss(tau, beta, gamma, w)(s, t).item()
        assert _rel(got, want) <= 1e-6, (tau, beta, gamma, w)


def test_dist_detaches_the_teacher_and_is_differentiable() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    loss = DISTLoss(tau=2.0, inter_weight=1.5, intra_weight=0.5)
    loss(s, t).backward()
    assert t.grad is None and s.grad is not None  # mmrazor's teacher_detach=True
    assert torch.autograd.gradcheck(lambda a: loss(a, t), (s.detach().requires_grad_(True),))
    same = torch.randn(2, 4, 3, 3, generator=g)
    assert abs(DISTLoss()(same, same).item()) < 1e-6  # perfect correlation


# --------------------------------------------------------------------------------------------
# MGD: parity with mmrazor (connector output, loss, every gradient) with the stored mask


def _mgd_from_case(case: dict[str, Any]) -> MGDConnector:
    conn = MGDConnector(case["student_channels"], case["teacher_channels"], lambda_mgd=case["lambda_mgd"],
                        mask_on_channel=case["mask_on_channel"], seed=0)
    ref = case["connector_state_dict"]
    assert set(conn.state_dict()) == set(ref) | {"_extra_state"}  # mmrazor's names, plus our mask stream
    conn.load_state_dict({**ref, "_extra_state": conn.get_extra_state()})
    return conn


def test_mgd_matches_mmrazor(zoo_cases: dict[str, Any]) -> None:
    for case in zoo_cases["mgd"]:
        name = case["name"]
        conn = _mgd_from_case(case)
        s = case["preds_S"].clone().requires_grad_(True)
        generated = conn(s, mask=case["mask"])
        peak = float(case["generated"].abs().max())
        assert float((generated.detach() - case["generated"]).abs().max()) <= 1e-5 * peak, name
        loss = MGDLoss(alpha_mgd=case["alpha_mgd"])(generated, case["preds_T"])
        assert _rel(loss.item(), float(case["loss"])) <= 1e-5, name
        loss.backward()
        assert s.grad is not None
        _assert_grad_close(s.grad, case["grad_preds_S"], name)
        grads = dict(conn.named_parameters())
        assert set(grads) == set(case["grad_connector"]), name
        for key, ref in case["grad_connector"].items():
            got = grads[key].grad
            assert got is not None, (name, key)
            _assert_grad_close(got, ref, f"{name}: {key}")


def test_mgd_loss_is_the_batch_averaged_sum_of_squares() -> None:
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    want = float(((s.double() - t.double()) ** 2).sum()) / 3 * 2e-5 * 4.0
    assert _rel(MGDLoss(alpha_mgd=2e-5, loss_weight=4.0)(s, t).item(), want) <= 1e-6
    with pytest.raises(UserError, match="alpha_mgd must be > 0"):
        MGDLoss(alpha_mgd=0.0)


# --------------------------------------------------------------------------------------------
# MGD: the mask and its generator


def test_mgd_mask_follows_mmrazors_semantics() -> None:
    conn = MGDConnector(8, 8, lambda_mgd=0.65, seed=1)
    mask = conn.draw_mask(4, 8, 64, 64)
    assert mask.shape == (4, 1, 64, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(1 - mask.mean().item() - 0.65) < 0.02  # a position is dropped with probability lambda
    chan = MGDConnector(8, 8, lambda_mgd=0.3, mask_on_channel=True, seed=1).draw_mask(64, 8, 5, 5)
    assert chan.shape == (64, 8, 1, 1) and abs(1 - chan.mean().item() - 0.3) < 0.06
    assert MGDConnector(8, 8, lambda_mgd=0.0, seed=1).draw_mask(2, 8, 4, 4).eq(1).all()
    # the forward pass applies exactly the mask drawn next
    x = torch.randn(2, 8, 6, 7)
    a, b = MGDConnector(8, 8, seed=9), MGDConnector(8, 8, seed=9)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x, mask=b.draw_mask(2, 8, 6, 7)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        a(x, mask=torch.ones(2, 1, 3, 7))
    for bad in (1.0, -0.1, float("nan"), True):
        with pytest.raises(UserError, match="lambda_mgd"):
            MGDConnector(8, 8, lambda_mgd=bad)


def test_mgd_masks_are_seeded_and_leave_the_global_rng_alone() -> None:
    a, b, c = MGDConnector(4, 4, seed=7), MGDConnector(4, 4, seed=7), MGDConnector(4, 4, seed=8)
    before = torch.get_rng_state()  # after construction: the conv weights' init draws from it
    masks_a = [a.draw_mask(2, 4, 16, 16) for _ in range(3)]
    masks_b = [b.draw_mask(2, 4, 16, 16) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(masks_a, masks_b, strict=True))
    assert not torch.equal(masks_a[0], masks_a[1])  # a new mask every call
    assert not torch.equal(masks_a[0], c.draw_mask(2, 4, 16, 16))  # another seed, other masks
    a(torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(torch.get_rng_state(), before), "drawing masks consumed the global RNG"
    # seed=None takes its seed from the global RNG at construction: it follows torch.manual_seed(run seed)
    torch.manual_seed(5)
    s1 = MGDConnector(4, 4).seed
    torch.manual_seed(5)
    s2 = MGDConnector(4, 4).seed
    torch.manual_seed(6)
    assert s1 == s2 != MGDConnector(4, 4).seed


def test_mgd_mask_state_round_trips_through_state_dict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = MGDConnector(4, 6, seed=11)
    for _ in range(3):
        a.draw_mask(2, 6, 8, 8)
    torch.save(a.state_dict(), tmp_path / "conn.pth")
    sd = torch.load(tmp_path / "conn.pth", weights_only=True)
    assert sd["_extra_state"].tolist() == [11, 3]
    b = MGDConnector(4, 6, seed=99)
    b.load_state_dict(sd)
    assert (b.seed, b.draws) == (11, 3)
    for _ in range(2):  # the resumed stream continues exactly where the saved one stopped
        assert torch.equal(a.draw_mask(2, 6, 8, 8), b.draw_mask(2, 6, 8, 8))
    # every process draws its own masks from the same saved state
    state = b.get_extra_state()
    rank0 = b.draw_mask(2, 6, 8, 8)
    b.set_extra_state(state)
    monkeypatch.setattr(MGDConnector, "_rank", staticmethod(lambda: 1))
    assert not torch.equal(rank0, b.draw_mask(2, 6, 8, 8))
    with pytest.raises(RuntimeError, match="_extra_state"):
        MGDConnector(4, 6).load_state_dict({k: v for k, v in sd.items() if k != "_extra_state"})


def test_build_connector_mgd() -> None:
    conn = build_connector("mgd", 3, 5, lambda_mgd=0.4)
    assert isinstance(conn, MGDConnector) and conn.lambda_mgd == 0.4 and conn.align is not None
    same = build_connector("mgd", 5, 5)
    assert isinstance(same, MGDConnector) and same.align is None and same.lambda_mgd == 0.65
    assert same(torch.randn(2, 5, 4, 4)).shape == (2, 5, 4, 4)


# --------------------------------------------------------------------------------------------
# logit standardization


def test_standardize_logits_is_the_authors_z_score() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * 4 + 1
    for dim in (1, 2):
        a = x.numpy()
        want = (a - a.mean(axis=dim, keepdims=True)) / (a.std(axis=dim, ddof=1, keepdims=True) + 1e-7)
        np.testing.assert_allclose(standardize_logits(x, dim).numpy(), want, rtol=1e-12, atol=1e-12)
    assert standardize_logits(torch.full((2, 3, 4), 5.0), 1).eq(0).all()  # constant rows: 0, not NaN
    assert standardize_logits(torch.randn(2, 1, 4), 1).eq(0).all()  # a single class: 0, not NaN


LOGIT_LOSSES = [
    # name, builder, the shape of a per-row shift/scale along the loss's softmax axis
    ("cwd", lambda **kw: ChannelWiseDivergence(tau=2.0, loss_weight=3.0, **kw), (2, 4, 1, 1)),
    ("kd", lambda **kw: PixelWiseKD(tau=2.0, loss_weight=3.0, **kw), (2, 1, 5, 6)),
    ("dist", lambda **kw: DISTLoss(tau=2.0, inter_weight=1.0, intra_weight=2.0, loss_weight=3.0, **kw), (2, 1, 5, 6)),
]


@pytest.mark.parametrize(("name", "make", "row_shape"), LOGIT_LOSSES, ids=[c[0] for c in LOGIT_LOSSES])
def test_standardized_losses_ignore_shift_and_scale_along_their_axis(name: str, make: Any,
                                                                     row_shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g) * 2
    std, plain = make(standardize=True), make()

    def shift_scale(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(row_shape, generator=g) * 10 + torch.rand(row_shape, generator=g).mul(5).add(0.2) * x

    base = std(s, t).item()
    s2, t2 = shift_scale(s), shift_scale(t)
    assert _rel(std(s2, t2).item(), base) <= 1e-5, name
    assert _rel(plain(s2, t2).item(), plain(s, t).item()) > 1e-2, name  # the plain loss does see the change
    assert _rel(base, plain(s, t).item()) > 1e-2, name  # standardizing changes the loss
    # exactly the plain loss of the z-scored maps (along the loss's softmax axis)
    axis = 2 if name == "cwd" else 1
    z = [standardize_logits(x.flatten(2), axis).view_as(x) for x in (s, t)]
    assert _rel(base, plain(*z).item()) <= 1e-6, name
    # ... and not invariant along the other axis: shift/scale per pixel for CWD, per channel for KD/DIST
    other = (2, 1, 5, 6) if name == "cwd" else (2, 4, 1, 1)
    bias, gain = torch.randn(other, generator=g) * 3, torch.rand(other, generator=g) * 3 + 0.2
    assert _rel(std(s * gain + bias, t).item(), base) > 1e-3, name


@pytest.mark.parametrize(("name", "make", "row_shape"), LOGIT_LOSSES, ids=[c[0] for c in LOGIT_LOSSES])
def test_standardized_losses_gradcheck(name: str, make: Any, row_shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(8)
    s = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64)
    loss = make(standardize=True)
    assert torch.autograd.gradcheck(lambda a: loss(a, t), (s,)), name


@pytest.mark.parametrize("name", ["dist", "mgd", "cwd", "kd"])
def test_bf16_inputs_under_autocast_give_the_float32_loss(name: str) -> None:
    g = torch.Generator().manual_seed(9)
    s, t = (torch.randn(2, 4, 5, 6, generator=g).bfloat16() for _ in range(2))
    options = {"standardize": True} if name != "mgd" else {}
    loss = build_loss(name, **options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(s, t)
    assert got.dtype == torch.float32
    assert got.item() == loss(s.float(), t.float()).item()


def test_build_loss_options() -> None:
    dist = build_loss("dist", tau=4.0, inter_weight=2.0, intra_weight=0.5, loss_weight=3.0, standardize=True)
    assert isinstance(dist, DISTLoss) and (dist.tau, dist.inter_weight, dist.intra_weight) == (4.0, 2.0, 0.5)
    assert dist.standardize and build_loss("kd", standardize=True).standardize  # type: ignore[attr-defined]
    assert isinstance(build_loss("mgd", alpha_mgd=7e-5), MGDLoss)
    with pytest.raises(UserError, match="no option 'standardize'"):
        build_loss("mse", standardize=True)
    with pytest.raises(UserError, match="inter_weight must be a finite number"):
        DISTLoss(inter_weight=float("inf"))


# --------------------------------------------------------------------------------------------
# config


def _config(tmp_path: Path, term: dict[str, Any], **train: Any) -> dict[str, Any]:
    tree = tiny_config_tree(tmp_path / "data")
    tree["teacher"] = {"model": "pspnet_r50-d8-tiny", "checkpoint": str(tmp_path / "teacher.pth")}
    tree["distill"] = {"losses": [term]}
    tree["train"].update(train)
    return tree


DIST_TERM = {"name": "dist", "type": "dist", "tau": 1.0, "weight": 2.0, "inter_weight": 1.0, "intra_weight": 2.0}
MGD_TERM = {"name": "mgd_feat", "type": "mgd", "student": "decode_head.bottleneck",
            "teacher": "decode_head.bottleneck", "weight": 1.0, "connector": "mgd", "alpha_mgd": 2e-5,
            "lambda_mgd": 0.65}


def test_config_accepts_dist_and_mgd_terms(tmp_path: Path) -> None:
    cfg = config_from_dict(_config(tmp_path, {**DIST_TERM, "standardize": True}))
    term = cfg.distill.losses[0]
    assert (term.type, term.inter_weight, term.intra_weight, term.standardize) == ("dist", 1.0, 2.0, True)
    cfg = config_from_dict(_config(tmp_path, MGD_TERM))
    term = cfg.distill.losses[0]
    assert (term.type, term.connector, term.alpha_mgd, term.lambda_mgd) == ("mgd", "mgd", 2e-5, 0.65)
    assert config_from_dict(_config(tmp_path, MGD_TERM), ["distill.losses.0.alpha_mgd=1e-4"]).distill.losses[
        0].alpha_mgd == 1e-4


@pytest.mark.parametrize(("term", "message"), [
    ({**MGD_TERM, "lambda_mgd": 1.0}, "lambda_mgd': must be in \\[0, 1\\)"),
    ({**MGD_TERM, "lambda_mgd": -0.1}, "lambda_mgd': must be in \\[0, 1\\)"),
    ({**MGD_TERM, "alpha_mgd": 0.0}, "alpha_mgd': must be > 0"),
    ({**MGD_TERM, "alpha_mgd": float("nan")}, "losses.0.alpha_mgd: expected a finite number"),
    ({**MGD_TERM, "connector": None}, "type 'mgd' generates the teacher feature through 'connector: mgd'"),
    ({**MGD_TERM, "connector": "convbn"}, "through 'connector: mgd', got 'convbn'"),
    ({**DIST_TERM, "connector": "mgd"}, "'connector: mgd' belongs to terms of type 'mgd'"),
    ({**DIST_TERM, "inter_weight": -1.0}, "inter_weight': must be >= 0"),
    ({**DIST_TERM, "intra_weight": float("inf")}, "losses.0.intra_weight: expected a finite number"),
    ({**DIST_TERM, "tau": float("inf")}, "losses.0.tau: expected a finite number"),
    ({**MGD_TERM, "standardize": True}, "standardization applies to types cwd, kd and dist, not 'mgd'"),
])
def test_config_rejects_bad_dist_and_mgd_options(tmp_path: Path, term: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        config_from_dict(_config(tmp_path, term))


# --------------------------------------------------------------------------------------------
# the distiller computes each term from the tapped maps


def _capture(module: torch.nn.Module, store: dict[str, torch.Tensor], key: str) -> None:
    module.register_forward_hook(lambda _m, _i, out: store.__setitem__(key, out))


def test_distill_student_dist_term_is_the_loss_of_the_tapped_logits() -> None:
    torch.manual_seed(0)
    student, teacher_net = build_segmentor("pspnet_r18-d8-tiny", 5), build_segmentor("pspnet_r50-d8-tiny", 5)
    term = DistillTerm("dist", "dist", "decode_head.conv_seg", "decode_head.conv_seg", weight=2.0, tau=2.0,
                       inter_weight=1.5, intra_weight=0.5, standardize=True)
    model = DistillStudent(student, [term], tap_channels(student, teacher_net, [term]))
    teacher = FrozenTeacher(teacher_net, [term.teacher])
    seen: dict[str, torch.Tensor] = {}
    _capture(student.decode_head.conv_seg, seen, "s")
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    t_out = teacher(x)
    losses = model(x, y, t_out)
    want = DISTLoss(tau=2.0, inter_weight=1.5, intra_weight=0.5, loss_weight=2.0, standardize=True)(
        seen["s"], t_out["decode_head.conv_seg"])
    assert torch.equal(losses["loss_dist"], want)
    losses["loss_dist"].backward()
    assert student.decode_head.conv_seg.weight.grad is not None


def test_distill_student_mgd_term_is_the_loss_of_the_generated_feature() -> None:
    torch.manual_seed(0)
    student, teacher_net = build_segmentor("pspnet_r18-d8-tiny", 5), build_segmentor("pspnet_r50-d8-tiny", 5)
    term = DistillTerm("mgd", "mgd", "decode_head.bottleneck", "decode_head.bottleneck", weight=3.0,
                       connector="mgd", alpha_mgd=5e-5, lambda_mgd=0.5)
    channels = tap_channels(student, teacher_net, [term])
    model = DistillStudent(student, [term], channels)
    conn = model.connectors["mgd"]
    assert isinstance(conn, MGDConnector) and conn.lambda_mgd == 0.5 and channels["mgd"] == (32, 128)
    teacher = FrozenTeacher(teacher_net, [term.teacher])
    seen: dict[str, torch.Tensor] = {}
    _capture(student.decode_head.bottleneck, seen, "s")
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    t_out = teacher(x)
    state = conn.get_extra_state()
    losses = model(x, y, t_out)
    assert conn.draws == int(state[1]) + 1
    conn.set_extra_state(state)  # replay the mask the forward pass drew
    feat = seen["s"]
    mask = conn.draw_mask(feat.shape[0], 128, *feat.shape[2:])
    assert 0 < mask.mean().item() < 1
    want = MGDLoss(alpha_mgd=5e-5, loss_weight=3.0)(conn(feat, mask=mask), t_out["decode_head.bottleneck"])
    torch.testing.assert_close(losses["loss_mgd"], want, rtol=1e-6, atol=0)
    losses["loss_mgd"].backward()
    assert all(p.grad is not None for p in conn.parameters())
    assert "mgd._extra_state" in model.connectors.state_dict()


# --------------------------------------------------------------------------------------------
# `segdistill train` with a DIST term and with an MGD term


@pytest.mark.parametrize("term", [DIST_TERM, MGD_TERM], ids=["dist", "mgd"])
def test_cli_distills_with_the_term(tmp_path: Path, tiny_dataset: Path, term: dict[str, Any]) -> None:
    save_checkpoint(tmp_path / "teacher.pth", build_segmentor("pspnet_r50-d8-tiny", 3).state_dict())
    tree = _config(tmp_path, term, iters=2, eval_interval=2, checkpoint_interval=2)
    tree["data"]["root"] = str(tiny_dataset)
    tree["train"]["eval_teacher"] = False
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(config_from_dict(tree)))
    assert main(["train", str(path), "--work-dir", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [r[f"loss_{term['name']}"] for r in rows if r["kind"] == "train"]
    assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)
    state = torch.load(tmp_path / "run" / "checkpoints" / "iter_0000002.pth", weights_only=False)
    if term["type"] == "mgd":
        # the trainer's checkpoint carries the mask stream: (seed, 2 masks drawn)
        assert state["connectors"]["mgd_feat._extra_state"][1].item() == 2
        assert "mgd_feat.generation.0.weight" in state["connectors"]


def test_cli_mgd_run_resumes_with_the_same_masks(tmp_path: Path, tiny_dataset: Path) -> None:
    """Resume at iteration 2 of 4 from the trainer's checkpoint: the same weights as the run that went on."""
    save_checkpoint(tmp_path / "teacher.pth", build_segmentor("pspnet_r50-d8-tiny", 3).state_dict())
    tree = _config(tmp_path, MGD_TERM, iters=4, eval_interval=4, checkpoint_interval=2)
    tree["data"]["root"] = str(tiny_dataset)
    tree["train"]["eval_teacher"] = False
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(config_from_dict(tree)))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", str(path), "--work-dir", str(straight)]) == 0
    resumed.mkdir()
    (resumed / "checkpoints").mkdir()
    shutil.copy(straight / "checkpoints" / "iter_0000002.pth", resumed / "checkpoints")
    assert main(["train", str(path), "--work-dir", str(resumed)]) == 0
    a, b = (torch.load(d / "checkpoints" / "iter_0000004.pth", weights_only=False) for d in (straight, resumed))
    assert a["connectors"]["mgd_feat._extra_state"].tolist() == b["connectors"]["mgd_feat._extra_state"].tolist()
    assert a["connectors"]["mgd_feat._extra_state"][1].item() == 4
    for part in ("state_dict", "connectors"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), f"resumed {part} diverged"
