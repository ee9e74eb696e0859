"""The code paths that only run on an NVIDIA GPU: AMP with GradScaler, bf16, channels_last, the frozen
teacher's fast paths, SyncBN under NCCL, pinned-memory loading, checkpoints across devices, exact resume.

Every test is marked ``cuda`` and skips, with the reason shown, where ``torch.cuda.is_available()`` is
false, so the default CPU run keeps them skipped. ``bash scripts/gpu_check.sh`` runs them on a GPU
and prints the numbers each test records with ``record_property`` (they land in the junit XML).

``SEGDISTILL_CUDA_TESTS_ON_CPU=1`` runs, on the CPU, the tests whose logic does not need CUDA itself
(not SyncBN/NCCL, pinned memory or torch.compile): it checks the tests, never CUDA.

fp32 references run with TF32 off (module fixture): with TF32, cuDNN's "float32" convolutions keep a
10-bit mantissa, as coarse as fp16, and every comparison with a fast path would be blurred by it.
segdistill itself leaves torch's defaults (cuDNN convolutions in TF32, cudnn.benchmark off).
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import tiny_config_tree, write_tiny_folder_dataset
from torch import nn

from segdistill.config import Config, config_from_dict
from segdistill.data import CamVidDataset, build_eval_pipeline
from segdistill.distill import ChannelWiseDivergence, FrozenTeacher
from segdistill.distill.distiller import DistillStudent
from segdistill.engine.checkpointing import iter_checkpoints
from segdistill.engine.trainer import train
from segdistill.models import build_segmentor, load_checkpoint, save_checkpoint

# cuBLAS reads this when its first handle is created; deterministic GEMMs need it (see the resume test).
# gpu_check.sh exports it; setting it here, at collection, covers a plain `pytest -m cuda` too.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = pytest.mark.cuda

ON_CPU = os.environ.get("SEGDISTILL_CUDA_TESTS_ON_CPU") == "1"
ASSET = Path(__file__).resolve().parent / "assets" / "camvid_pspnet_r18-d8-tiny.pth"
TAP = "decode_head.conv_seg"


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def device() -> torch.device:
    """``cuda:0``; the CPU only for a dry run of these tests' logic; else the test skips."""
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if ON_CPU:
        return torch.device("cpu")
    pytest.skip("CUDA is not available (torch.cuda.is_available() is False); run scripts/gpu_check.sh on a GPU")


@pytest.fixture(scope="session")
def real_cuda(device: torch.device) -> torch.device:
    """For what has no CPU stand-in at all (NCCL, pinned memory)."""
    if device.type != "cuda":
        pytest.skip("needs a real CUDA device (dry run on the CPU)")
    return device


@pytest.fixture(scope="module", autouse=True)
def _true_fp32() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def deterministic() -> Iterator[list[warnings.WarningMessage]]:
    """cuDNN deterministic, no autotuning, torch's deterministic algorithms in warn-only mode; yields the
    warnings caught meanwhile (see :func:`_nondeterministic_ops`).

    ``warn_only``: PSPNet's backward needs upsample_bilinear2d and adaptive_avg_pool2d, which have no
    deterministic CUDA kernel (they use atomicAdd); with ``warn_only=False`` torch refuses to run them.
    """
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def _nondeterministic_ops(caught: list[warnings.WarningMessage]) -> list[str]:
    """The ops that warned they have no deterministic implementation (results differ in the last bits)."""
    texts = [str(w.message) for w in caught]
    return sorted({t.split(" does not have")[0].strip() for t in texts if "deterministic implementation" in t})


def _cfg(data_root: Path, device: torch.device, **overrides: Any) -> Config:
    """The tiny run (PSPNet-R18-D8-tiny, 48x48 crops, batch 2) for 3 iterations on ``device``."""
    tree = tiny_config_tree(data_root)
    tree["train"].update(iters=3, eval_interval=100, checkpoint_interval=3, device=device.type)
    return config_from_dict(tree, [f"{k}={v}" for k, v in overrides.items()])


def _final(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "final.pth", weights_only=True)["state_dict"]


def _update_error(cfg: Config, plain: Path, other: Path) -> float:
    """||other's update - plain's update|| / ||plain's update|| over every parameter (not BN statistics)."""
    torch.manual_seed(cfg.seed)  # the trainer's initial weights (seed, then build; no pretrained weights here)
    start = build_segmentor(cfg.student.model, 3).state_dict()
    a, b = _final(plain), _final(other)
    keys = [k for k in start if start[k].is_floating_point() and "running_" not in k]
    assert all(b[k].dtype == torch.float32 for k in keys), "checkpoints must keep float32 master weights"
    da = torch.cat([(a[k] - start[k]).flatten() for k in keys])
    db = torch.cat([(b[k] - start[k]).flatten() for k in keys])
    assert da.norm() > 0, "the plain run did not move the weights"
    return float((db - da).norm() / da.norm())


@pytest.fixture(scope="module")
def plain_run(device: torch.device, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    """3 plain float32 iterations on the device, contiguous memory: what each fast path is compared with."""
    tmp = tmp_path_factory.mktemp("plain")
    cfg = _cfg(write_tiny_folder_dataset(tmp / "data"), device)
    train(cfg, tmp / "plain")
    return cfg, tmp / "plain"


# ---- the student's precision and layout -----------------------------------------------------------


def test_fp16_autocast_with_grad_scaler(plain_run: tuple[Config, Path], device: torch.device, tmp_path: Path,
                                        record_property: Any) -> None:
    cfg, plain = plain_run
    result = train(_cfg(Path(cfg.data.root), device, **{"train.amp": "fp16"}), tmp_path / "fp16")
    assert all(np.isfinite(row["loss"]) for row in result.history)
    error = _update_error(cfg, plain, tmp_path / "fp16")
    state = torch.load(iter_checkpoints(tmp_path / "fp16")[0], weights_only=False)
    record_property("update_error_vs_fp32", f"{error:.2e}")
    record_property("scaler", f"scale {state['scaler'].get('scale')}, growth tracker "
                              f"{state['scaler'].get('_growth_tracker')}")
    # Not 0: autocast really ran in fp16 (an ignored train.amp would give fp32's update exactly).
    # Below 0.04: the CPU's fp16 gives 1.5 %; an unscaled or twice-scaled gradient is off by ~100 %.
    assert 1e-6 < error < 0.04
    # The scaler is on and checkpointed: 3 good steps at the initial scale 2^16, none skipped.
    assert state["scaler"]["scale"] == 65536.0 and state["scaler"]["_growth_tracker"] == 3


def test_bf16_autocast(plain_run: tuple[Config, Path], device: torch.device, tmp_path: Path,
                       record_property: Any) -> None:
    cfg, plain = plain_run
    result = train(_cfg(Path(cfg.data.root), device, **{"train.amp": "bf16"}), tmp_path / "bf16")
    assert all(np.isfinite(row["loss"]) for row in result.history)
    error = _update_error(cfg, plain, tmp_path / "bf16")
    record_property("update_error_vs_fp32", f"{error:.2e}")
    # bf16's 8-bit mantissa: 11 % on the CPU after 3 steps; an unrelated update is ~140 %.
    assert 1e-6 < error < 0.2


def test_channels_last_student(plain_run: tuple[Config, Path], device: torch.device, tmp_path: Path,
                               record_property: Any) -> None:
    cfg, plain = plain_run
    train(_cfg(Path(cfg.data.root), device, **{"student.channels_last": "true"}), tmp_path / "cl")
    error = _update_error(cfg, plain, tmp_path / "cl")
    record_property("update_error_vs_contiguous", f"{error:.2e}")
    assert error < 1e-3  # 8e-6 on the CPU: other kernels, other summation order, same maths
    # The layout really changed: the saved conv weights keep the channels_last strides.
    state = torch.load(iter_checkpoints(tmp_path / "cl")[0], weights_only=False)
    weight = state["state_dict"]["decode_head.bottleneck.conv.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


# ---- the frozen teacher's fast paths ------------------------------------------------------------


@pytest.fixture(scope="module")
def frames(camvid_root: Path) -> torch.Tensor:
    """21 real CamVid val frames at 240x180 (a trained net on real images: random weights give near-flat
    logits whose argmax any rounding flips)."""
    val = CamVidDataset(camvid_root, "val")
    pipeline = build_eval_pipeline((240, 180))
    return torch.stack([pipeline(*val.load(i), np.random.default_rng(0))[0] for i in range(0, len(val), 5)])


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    model = build_segmentor("pspnet_r18-d8-tiny", 11)
    load_checkpoint(model, ASSET)
    return model.eval()


def _taps(model: nn.Module, x: torch.Tensor, **switches: bool) -> torch.Tensor:
    return FrozenTeacher(copy.deepcopy(model).to(x.device), [TAP], **switches)(x)[TAP]


def test_float32_teacher_on_cuda_equals_the_cpu_teacher(trained: nn.Module, frames: torch.Tensor,
                                                         device: torch.device, record_property: Any) -> None:
    cpu = _taps(trained, frames)
    dev = _taps(trained, frames.to(device)).cpu()
    rel = float((dev - cpu).abs().max() / cpu.abs().max())
    agreement = float((dev.argmax(1) == cpu.argmax(1)).float().mean())
    record_property("max_abs_diff_rel", f"{rel:.2e}")
    record_property("argmax_agreement", f"{agreement:.5f}")
    assert rel < 1e-3 and agreement >= 0.999


#: tests/test_teacher_fastpath.py's bounds, with float32's ten times looser on the GPU: cuDNN may pick
#: other algorithms (Winograd, FFT) for another layout or a folded conv. bf16's are the same.
BOUNDS = {
    # max |logit difference| / max |logit|, argmax agreement, relative difference of the CWD loss
    "float32": {"logits": 1e-4, "agreement": 0.9999, "cwd": 1e-4},
    "bf16": {"logits": 0.03, "agreement": 0.995, "cwd": 0.005},
}


@pytest.mark.parametrize("switches, kind", [
    ({"channels_last": True}, "float32"),
    ({"fold_bn": True}, "float32"),
    ({"channels_last": True, "fold_bn": True, "compile": True}, "float32"),
    ({"bf16": True}, "bf16"),
    ({"channels_last": True, "fold_bn": True, "bf16": True}, "bf16"),
], ids=lambda s: "+".join(s) if isinstance(s, dict) else s)
def test_fast_teacher_agrees_with_the_float32_teacher(trained: nn.Module, frames: torch.Tensor, device: torch.device,
                                                      switches: dict[str, bool], kind: str,
                                                      record_property: Any) -> None:
    if switches.get("compile") and device.type == "cpu":
        pytest.skip("torch.compile on the CPU is tests/test_teacher_fastpath.py's slow test")
    x = frames.to(device)
    plain = _taps(trained, x)
    fast = _taps(trained, x, **switches)
    assert fast.device == x.device and fast.dtype == torch.float32
    torch.manual_seed(0)
    with torch.no_grad():
        student = build_segmentor("pspnet_r18-d8-tiny", 11).to(device).eval()(x)["decode"]
    cwd = ChannelWiseDivergence(tau=1.0, loss_weight=5.0)
    ref, got = float(cwd(student, plain)), float(cwd(student, fast))
    measured = {"logits": float((fast - plain).abs().max() / plain.abs().max()),
                "agreement": float((plain.argmax(1) == fast.argmax(1)).float().mean()),
                "cwd": abs(got - ref) / ref}
    record_property("max_logit_diff_rel", f"{measured['logits']:.2e}")
    record_property("argmax_agreement", f"{measured['agreement']:.5f}")
    record_property("cwd_rel_diff", f"{measured['cwd']:.2e}")
    bound = BOUNDS[kind]
    assert measured["logits"] <= bound["logits"], f"max logit difference {measured['logits']:.2e} of the scale"
    assert measured["agreement"] >= bound["agreement"], f"argmax agreement {measured['agreement']:.5f}"
    assert measured["cwd"] <= bound["cwd"], f"CWD loss differs by {measured['cwd']:.2e}"


# ---- SyncBN and pinned memory ---------------------------------------------------------------------


def test_syncbn_conversion_and_a_ddp_step_under_a_one_process_nccl_group(real_cuda: torch.device,
                                                                           record_property: Any) -> None:
    # The store binds port 0: the OS picks a free port and nothing can take it in between.
    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, timeout=datetime.timedelta(seconds=60))
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        student = build_segmentor("pspnet_r18-d8-tiny", 3)
        plain = DistillStudent(copy.deepcopy(student)).to(real_cuda)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
        # As the trainer does on several GPUs: convert, then wrap only the trainable part in DDP.
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(DistillStudent(student)).to(real_cuda)
        norms = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert n_bn > 0 and len(norms) == n_bn and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
        ddp = nn.parallel.DistributedDataParallel(synced, device_ids=[real_cuda.index])
        image = torch.randn(2, 3, 48, 48, device=real_cuda)
        label = torch.randint(0, 3, (2, 48, 48), device=real_cuda)
        results = []
        for net, module in ((ddp, synced), (plain, plain)):
            optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
            torch.manual_seed(1)  # the same dropout mask for both
            loss = sum(net(image, label, None).values())
            loss.backward()
            optimizer.step()
            results.append((float(loss), {k: v.detach().clone() for k, v in module.student.state_dict().items()}))
        (loss_sync, sd_sync), (loss_plain, sd_plain) = results
        assert np.isfinite(loss_sync)
        # One process: SyncBN's statistics are this batch's, as plain BN's; the step must match.
        diff = max(float((sd_sync[k].float() - sd_plain[k].float()).abs().max()) for k in sd_plain)
        record_property("syncbn_layers", str(len(norms)))
        record_property("max_abs_diff_vs_plain_bn_step", f"{diff:.2e}")
        assert abs(loss_sync - loss_plain) <= 1e-5 * abs(loss_plain) and diff < 1e-5
    finally:
        dist.destroy_process_group()


def test_pinned_memory_loading(real_cuda: torch.device, plain_run: tuple[Config, Path], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, record_property: Any) -> None:
    cfg, plain = plain_run
    pinned: list[tuple[int, ...]] = []
    real_pin = torch.Tensor.pin_memory

    def spy(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        pinned.append(tuple(self.shape))  # the DataLoader's pinning thread calls this on every batch tensor
        return real_pin(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    train(_cfg(Path(cfg.data.root), real_cuda, **{"data.pin_memory": "true", "data.workers": 2,
                                                  "data.persistent_workers": "true"}), tmp_path / "pinned")
    images = [s for s in pinned if len(s) == 4]
    record_property("pinned_batches", str(len(images)))
    assert len(images) >= 3 and images[0][:2] == (2, 3), pinned[:4]  # >= one image batch per iteration
    error = _update_error(cfg, plain, tmp_path / "pinned")
    record_property("update_error_vs_unpinned", f"{error:.2e}")
    assert error < 1e-3  # the same batches (workers 0 vs 2 give the same samples) and the same steps


# ---- checkpoints across devices and exact resume ----------------------------------------------------


def test_a_checkpoint_saved_on_the_gpu_loads_on_the_cpu_and_back(device: torch.device, tiny_dataset: Path,
                                                                 tmp_path: Path, record_property: Any) -> None:
    cpu = torch.device("cpu")
    cfg = _cfg(tiny_dataset, device, **{"train.iters": 4, "train.checkpoint_interval": 2})
    train(cfg, tmp_path / "gpu")
    # A student checkpoint written from the device's weights loads on the CPU, and back, bit for bit.
    saved = _final(tmp_path / "gpu")
    cpu_model = build_segmentor("pspnet_r18-d8-tiny", 3)
    load_checkpoint(cpu_model, tmp_path / "gpu" / "final.pth")
    assert all(torch.equal(cpu_model.state_dict()[k], saved[k]) for k in saved)
    save_checkpoint(tmp_path / "from_cpu.pth", cpu_model.state_dict())
    dev_model = build_segmentor("pspnet_r18-d8-tiny", 3).to(device)
    load_checkpoint(dev_model, tmp_path / "from_cpu.pth")
    assert all(v.device.type == device.type for v in dev_model.state_dict().values())
    assert all(torch.equal(v.cpu(), saved[k]) for k, v in dev_model.state_dict().items())

    # A training checkpoint holds the device's tensors (weights, momentum buffers, the CUDA RNG state):
    # the trainer resumes the device's iteration 2 on the CPU, and the CPU's iteration 3 on the device.
    every = {"train.iters": 4, "train.checkpoint_interval": 1}
    train(_cfg(tiny_dataset, cpu, **every), tmp_path / "cpu",
          resume=tmp_path / "gpu" / "checkpoints" / "iter_0000002.pth")
    result = train(_cfg(tiny_dataset, device, **every), tmp_path / "back",
                   resume=tmp_path / "cpu" / "checkpoints" / "iter_0000003.pth")
    for run, iters in (("cpu", [3, 4]), ("back", [4])):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["iter"] for r in rows if r["kind"] == "train"] == iters
    assert all(np.isfinite(r["loss"]) for r in result.history)
    # (The CPU's and the device's iteration 4 are not compared: dropout draws from each device's own
    # generator, so their masks differ by design.)
    record_property("round_trip", "bit-exact weights; resumed device -> cpu -> device")


def test_resume_on_the_gpu_ends_where_the_uninterrupted_run_ends(device: torch.device,
                                                                deterministic: list[warnings.WarningMessage],
                                                                tiny_dataset: Path, tmp_path: Path,
                                                                record_property: Any) -> None:
    # The test, not segdistill, sets cuDNN deterministic, benchmark off, deterministic algorithms
    # (warn-only) and CUBLAS_WORKSPACE_CONFIG; segdistill leaves torch's defaults.
    cfg = _cfg(tiny_dataset, device, **{"train.iters": 6, "train.checkpoint_interval": 3})
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")  # the same run again: the noise floor of the remaining atomics
    train(cfg, tmp_path / "resumed", resume=tmp_path / "a" / "checkpoints" / "iter_0000003.pth")
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["kind"] == "train"] == [4, 5, 6]
    noise = _update_error(cfg, tmp_path / "a", tmp_path / "b")
    error = _update_error(cfg, tmp_path / "a", tmp_path / "resumed")
    a, r = _final(tmp_path / "a"), _final(tmp_path / "resumed")
    bitwise = all(torch.equal(a[k], r[k]) for k in a)
    record_property("resume_update_error", f"{error:.2e}")
    record_property("rerun_update_error", f"{noise:.2e}")
    record_property("bitwise_equal", str(bitwise))
    record_property("nondeterministic_ops", ", ".join(_nondeterministic_ops(deterministic)) or "none")
    # On the CPU the resume is bit-exact; dropping the restored RNG state moved the update by 0.10 and
    # dropping the optimizer's momentum by 0.33. The atomics' noise is far below 1e-3.
    assert error < 1e-3, f"resumed run differs by {error:.2e} (a rerun differs by {noise:.2e})"
