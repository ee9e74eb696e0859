"""The training loop: one function, read top to bottom.

``train(cfg)`` trains the student alone, or distills it when the config names a teacher. Launch it
with ``torchrun`` for several GPUs or machines: every rank runs this same function; DDP wraps only
the trainable :class:`~segdistill.distill.distiller.DistillStudent` (student + connectors); the
frozen teacher runs beside it, outside DDP.
"""

from __future__ import annotations

import json
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import Config, dump_config, to_dict
from ..data import (
    EvalSet,
    InfiniteSampler,
    SegDataset,
    TrainSet,
    build_dataset,
    build_eval_pipeline,
    build_train_pipeline,
    prepare_worker_fork,
    worker_init,
)
from ..data.cache import build_decoded_cache
from ..errors import UserError
from ..evaluation import SegMetrics, evaluate
from ..fileio import atomic_write_text, remove_stale_temps
from ..models import save_checkpoint
from ..models.checkpoint import compare_state_dict
from ..models.segmentor import EncoderDecoder
from .checkpointing import (
    RESUME_SAFE_KEYS,
    checkpoint_dir,
    config_changes,
    describe_changes,
    iter_checkpoints,
    load_training_state,
    rng_state,
    save_training_state,
    set_rng_state,
)
from .distributed import DistEnv, all_reduce_mean, all_reduce_sum, barrier, elastic_restarts_allowed, init_distributed
from .logging import RunLogger, format_eta, peak_memory_mb
from .run import TrainingRun, build_run
from .runfolder import RunFolderLock
from .step import StepHooks, train_step


class TrainingStopped(Exception):
    """Raised after a signal-triggered checkpoint so the CLI exits non-zero without a traceback."""

    def __init__(self, signum: int, iteration: int, path: Path | None) -> None:
        saved = f"checkpoint {path}" if path is not None else \
            "no checkpoint written (the weights or the last loss were not finite)"
        super().__init__(f"stopped by signal {signal.Signals(signum).name} at iteration {iteration}; "
                         f"{saved}; run the same command again to resume")
        self.signum = signum


@dataclass
class TrainResult:
    """What a finished run reports."""

    work_dir: Path
    iterations: int
    metrics: SegMetrics | None
    teacher_metrics: SegMetrics | None = None
    skipped_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def build_train_set(cfg: Config, dataset: SegDataset) -> TrainSet:
    """``dataset`` with the configured training augmentations, seeded per sample."""
    d = cfg.data
    pipeline = build_train_pipeline(d.crop_size, d.scale, ratio_range=d.ratio_range, cat_max_ratio=d.cat_max_ratio,
                                    flip_prob=d.flip_prob, photometric=d.photometric)
    return TrainSet(dataset, pipeline, seed=cfg.seed)


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so it can save before leaving.

    A SIGINT that the process inherited as ignored stays ignored: a run started in the background
    (``cmd &`` in a non-interactive shell, ``nohup``, some CI runners) is meant to survive the terminal's
    Ctrl-C, as Python itself does (it installs its KeyboardInterrupt handler only where SIGINT is not
    ignored). SIGTERM is always turned into a checkpoint: it is how schedulers preempt. On leaving,
    whatever was installed before is put back.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner thread): no handler
                pass
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            # A second Ctrl-C: the user will not wait for the checkpoint. The last periodic one stays.
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *_: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_loader(cfg: Config, train_set: TrainSet, env: DistEnv, start_iter: int) -> Iterator[Any]:
    prepare_worker_fork()
    # Each iteration consumes accumulate x batch samples per rank, so iteration i starts at a fixed
    # position of the global stream whatever the number of processes.
    per_iter = cfg.train.batch_size * cfg.train.accumulate * env.world_size
    sampler = InfiniteSampler(len(train_set), seed=cfg.seed, rank=env.rank, world_size=env.world_size,
                              shuffle=True, start=start_iter * per_iter)
    workers = cfg.data.workers
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=cfg.data.pin_memory and env.device.type == "cuda",
                        persistent_workers=cfg.data.persistent_workers and workers > 0,
                        prefetch_factor=4 if workers else None, worker_init_fn=worker_init,
                        # A private generator: the loader must not consume the global RNG (dropout's),
                        # or a resumed run would draw different dropout masks.
                        generator=torch.Generator())
    return iter(loader)


def _ensure_writable(work_dir: Path) -> None:
    """Refuse, before any work, a run folder (or its ``checkpoints/``) that cannot take files."""
    for folder in (work_dir, checkpoint_dir(work_dir)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to the run folder {folder} ({e.strerror}); "
                            "choose another with --work-dir") from None


class _StepTimer(StepHooks):
    """The loop's own timing of each step: time waiting for data vs the rest (for the log's eta)."""

    def __init__(self) -> None:
        self.data_times: list[float] = []
        self.step_times: list[float] = []
        self._t0 = self._last = self._data = 0.0

    def start(self) -> None:
        self._t0 = self._last = time.perf_counter()
        self._data = 0.0

    def mark(self, region: str) -> None:
        now = time.perf_counter()
        if region == "data":
            self._data += now - self._last
        self._last = now

    def finish(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # honest step times
        self.data_times.append(self._data)
        self.step_times.append(time.perf_counter() - self._t0 - self._data)

    def medians(self) -> tuple[float, float]:
        """Median (step time without data wait, data wait) since the last reset."""
        return statistics.median(self.step_times or [0.0]), statistics.median(self.data_times or [0.0])

    def reset(self) -> None:
        self.data_times, self.step_times = [], []


def _on_main(env: DistEnv, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 (None elsewhere); a :class:`UserError` it raises is raised on every rank, so none waits."""
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except UserError as e:
            error = str(e)
    if env.distributed:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise UserError(error)
    return result


def _claim_run_folder(work_dir: Path) -> RunFolderLock:
    """Create and lock the run folder, then delete the temporary files a killed writer left in it."""
    _ensure_writable(work_dir)
    lock = RunFolderLock.acquire(work_dir)
    removed = remove_stale_temps(work_dir) + remove_stale_temps(checkpoint_dir(work_dir))
    if removed:
        print(f"removed {len(removed)} temporary file(s) of an interrupted write: {', '.join(p.name for p in removed)}")
    return lock


def _agree(env: DistEnv, *flags: bool) -> list[bool]:
    """Rank 0's ``flags``, known to every rank (one collective)."""
    t = torch.tensor([float(f) if env.is_main else 0.0 for f in flags], device=env.device)
    return [bool(v) for v in all_reduce_sum(t).tolist()]


def _tensors(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _tensors(v)


def all_finite(*trees: Any) -> bool:
    """Whether every floating-point tensor in ``trees`` (state dicts, optimizer state) is finite."""
    flags = [torch.isfinite(t).all() for tree in trees for t in _tensors(tree) if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def _set_aside_suspects(work_dir: Path, first_suspect: int, env: DistEnv) -> tuple[Path | None, list[str]]:
    """Rename the checkpoints from iteration ``first_suspect`` on ``iter_N.suspect.pth``; the newest left.

    A checkpoint whose weights gave the first loss of a non-finite streak (or came after it) is not a
    place to resume from: its weights can be finite and still be ruined (a huge learning rate).
    """
    renamed = []
    if env.is_main:
        for p in iter_checkpoints(work_dir):
            if int(p.stem.split("_")[1]) >= first_suspect:
                p.rename(p.with_name(f"{p.stem}.suspect.pth"))
                renamed.append(f"{p.name} -> {p.stem}.suspect.pth")
    barrier()
    left = iter_checkpoints(work_dir)
    return (left[0] if left else None), renamed


def _advice(good: Path | None) -> str:
    if good is None:
        return "no good checkpoint was saved; lower optim.lr (or check the data) and start again"
    return (f"the last good checkpoint is {good}; lower optim.lr (or check the data) and run again to resume from it "
            "(with --accept-config-change, which a changed optim.lr needs)")


def _folder_gone(work_dir: Path, iteration: int) -> UserError:
    return UserError(f"the run folder {work_dir} was deleted or moved during the run (noticed at iteration "
                     f"{iteration}); nothing more was written to it; restore it and run again to resume, or start "
                     "over with a new --work-dir")


def _restore(run: TrainingRun, state: dict[str, Any], path: Path, rank: int) -> None:
    """Load a training checkpoint into ``run``; anything that does not fit is one :class:`UserError` line."""
    mismatch = compare_state_dict(run.model.student, state["state_dict"])
    if mismatch:
        raise UserError(f"cannot resume from {path}: its weights do not fit {run.cfg.student.model}: "
                        f"{mismatch.summary()}; resume with the config it was trained with, or use a new --work-dir")
    try:
        run.model.student.load_state_dict(state["state_dict"])
        run.model.connectors.load_state_dict(state["connectors"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
        detail = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"cannot resume from {path}: its training state does not fit this run ({type(e).__name__}: "
                        f"{detail[:200]}); resume with the config it was trained with, or use a new --work-dir") from e


def train(cfg: Config, work_dir: Path, resume: bool | Path = True, *,
          accept_config_change: bool = False) -> TrainResult:
    """Train (or distill) as configured; ``resume=True`` continues from ``work_dir``'s newest checkpoint.

    Rank 0 holds ``work_dir``'s lock (:class:`~segdistill.engine.runfolder.RunFolderLock`) until this returns.
    A resume whose config differs from the checkpoint's in a key outside
    :data:`~segdistill.engine.checkpointing.RESUME_SAFE_KEYS` is refused unless ``accept_config_change``;
    an accepted change is recorded in ``metrics.jsonl``. ``config.yaml`` is written once every check passed.
    """
    env = init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    lock: RunFolderLock | None = _on_main(env, lambda: _claim_run_folder(work_dir))
    try:
        return _train(cfg, work_dir, resume, accept_config_change, env, lock)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, work_dir: Path, resume: bool | Path, accept_config_change: bool, env: DistEnv,
           lock: RunFolderLock | None) -> TrainResult:
    # ---- resume: find the checkpoint, and check that it was trained with this config ------------
    found = load_training_state(work_dir, resume if isinstance(resume, Path) else None) if resume else None
    accepted: dict[str, tuple[Any, Any]] = {}
    if found is not None:
        trained_with = found[0]["meta"].get("config")
        if isinstance(trained_with, dict):
            changed = {k: v for k, v in config_changes(trained_with, cfg).items() if k not in RESUME_SAFE_KEYS}
            if changed and not accept_config_change:
                raise UserError(f"the config differs from the one {found[1]} was trained with: "
                                f"{describe_changes(changed)}; that is no longer the same run: resume with the "
                                "original values, pass --accept-config-change to continue anyway, or use a new "
                                "--work-dir")
            accepted = changed
        elif env.is_main:
            print(f"warning: {found[1]} records no config; cannot check that this config continues the same run",
                  file=sys.stderr)

    # ---- data ---------------------------------------------------------------------------------
    train_ds = build_dataset(cfg.data.kind, cfg.data.root, cfg.data.train_split)
    if cfg.data.cache:
        # The decoded-image cache: built (or completed) once per machine by its first process, then read.
        if env.local_rank == 0:
            build_decoded_cache(train_ds, cfg.data.cache, nproc=max(1, cfg.data.workers), progress=env.is_main)
        barrier()
        train_ds.use_cache(cfg.data.cache)
    val_ds = build_dataset(cfg.data.kind, cfg.data.root, cfg.data.val_split)
    train_set = build_train_set(cfg, train_ds)
    val_set = EvalSet(val_ds, build_eval_pipeline(cfg.data.eval_scale))
    num_classes, class_names = train_ds.num_classes, list(train_ds.classes)

    # ---- the run: student, connectors, frozen teacher, DDP wrapper, optimizer, scaler ------------
    run: TrainingRun = build_run(cfg, num_classes, env)
    model, optimizer, scaler = run.model, run.optimizer, run.scaler

    # ---- resume -------------------------------------------------------------------------------
    start_iter, best_miou, time_before = 0, -1.0, 0.0
    if found is not None:
        state, path = found
        _restore(run, state, path, env.rank)
        start_iter = int(state["meta"]["iteration"])
        best_miou = float(state["meta"].get("best_mIoU", -1.0))
        time_before = float(state["meta"].get("train_time_s", 0.0))
        del state  # the weights are in the model now; do not keep a second copy through the run
        if start_iter >= cfg.train.iters:
            if elastic_restarts_allowed() and (work_dir / "final.pth").is_file():
                # torchrun restarted the group after the run had ended (a rank failed while exiting).
                if env.is_main:
                    print(f"{work_dir} is already complete ({start_iter} iterations); nothing to do")
                return TrainResult(work_dir, start_iter, None)
            raise UserError(f"{path} is already at iteration {start_iter} of {cfg.train.iters}; to train longer, "
                            "raise train.iters and pass --accept-config-change (it changes the lr schedule), or use "
                            "a new --work-dir")
    if env.is_main:  # every check passed: this config is the run's now
        atomic_write_text(work_dir / "config.yaml", dump_config(cfg))
    logger = RunLogger(work_dir, enabled=env.is_main, resume_iteration=start_iter if found else None)
    logger.print(f"global batch {run.global_batch} = {env.world_size} process(es) x batch {cfg.train.batch_size} "
                 f"x accumulate {cfg.train.accumulate}")
    if found is not None:
        logger.print(f"resumed from {found[1]} at iteration {start_iter}")
    if accepted:  # recorded at the first iteration it applies to (a later resume from start_iter drops it)
        logger.log("config_change", start_iter + 1, {"checkpoint": str(found[1]) if found else None,
                                                 "accepted": {k: [a, b] for k, (a, b) in accepted.items()}},
                   f"config changed on resume (accepted with --accept-config-change): {describe_changes(accepted)}")
    found = None  # the checkpoint is loaded; let it be freed

    def run_eval(net: EncoderDecoder) -> SegMetrics:
        return evaluate(net, val_set, cfg.eval, env.device, class_names, rank=env.rank,
                        world_size=env.world_size, workers=min(cfg.data.workers, 2))

    teacher_metrics = None
    if run.teacher_model is not None and cfg.train.eval_teacher and start_iter == 0:
        teacher_metrics = run_eval(run.teacher_model)
        logger.log("eval_teacher", 0, teacher_metrics.to_dict(),
                   f"teacher on {cfg.data.val_split}: mIoU {teacher_metrics.mIoU:.2f}")
        run.teacher.train(False)  # type: ignore[union-attr]  # evaluate() restores the mode it found

    meta = {"config": to_dict(cfg), "model": cfg.student.model, "num_classes": num_classes,
            "global_batch": run.global_batch,
            "dataset_meta": {"classes": class_names, "palette": [list(c) for c in train_ds.palette]}}

    def check_folder(iteration: int) -> None:
        (gone,) = _agree(env, lock is not None and not lock.intact())
        if gone:
            raise _folder_gone(work_dir, iteration)

    def save(iteration: int) -> Path | None:
        """A training checkpoint, or None (said in the log) when the weights or the last loss were not finite."""
        states = [rng_state()]
        if env.distributed:
            gathered: list[Any] = [None] * env.world_size
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        gone, nonfinite = _agree(env, lock is not None and not lock.intact(), env.is_main and not all_finite(
            model.student.state_dict(), model.connectors.state_dict(), optimizer.state_dict()["state"]))
        if gone:
            raise _folder_gone(work_dir, iteration)
        if nonfinite or consecutive_bad:
            why = "the weights are not finite" if nonfinite else "the last loss was not finite"
            logger.log("checkpoint_skipped", iteration, {"nonfinite_weights": nonfinite},
                       f"iter {iteration}: no checkpoint saved: {why}")
            return None
        path = None
        if env.is_main:
            path = save_training_state(work_dir, iteration, {
                "meta": {**meta, "iteration": iteration, "best_mIoU": best_miou,
                         "train_time_s": time_before + time.perf_counter() - t_start},
                "state_dict": model.student.state_dict(),
                "connectors": model.connectors.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": states,
            })
        barrier()
        return path

    # ---- the loop -----------------------------------------------------------------------------
    data = train_loader(cfg, train_set, env, start_iter)
    timer = _StepTimer()
    metrics: SegMetrics | None = None
    sums: dict[str, torch.Tensor] = {}
    skipped = consecutive_bad = good_steps = 0
    history: list[dict[str, float]] = []
    t_start = time.perf_counter()
    with _StopSignal() as stop:
        for it in range(start_iter, cfg.train.iters):
            timer.start()
            step = train_step(run, data, it, lambda: stop.signum, hooks=timer)
            timer.finish(env.device)
            done = it + 1
            if not step.applied:
                skipped += 1
                consecutive_bad += 1
                logger.log("nonfinite", done, {k: float(v) for k, v in step.losses.items()},
                           f"iter {done}: non-finite loss, step skipped ({consecutive_bad} in a row)")
                if consecutive_bad >= cfg.train.max_nonfinite_steps:
                    # The weights of iteration done - consecutive_bad gave the first non-finite loss.
                    good, renamed = _set_aside_suspects(work_dir, done - consecutive_bad, env)
                    aside = f" (set aside: {', '.join(renamed)})" if renamed else ""
                    raise UserError(f"{consecutive_bad} non-finite losses in a row at iteration {done}; "
                                    f"{_advice(good)}{aside}")
            else:
                consecutive_bad = 0
                good_steps += 1
                for k, v in {**step.losses, "loss": step.total}.items():
                    sums[k] = sums.get(k, torch.zeros((), device=env.device)) + v

            if done % cfg.train.log_interval == 0 or done == cfg.train.iters:
                n = max(1, good_steps)
                values = all_reduce_mean({k: v.item() / n for k, v in sums.items()}, env.device)
                step_t, data_t = timer.medians()
                eta = (cfg.train.iters - done) * (step_t + data_t)
                row = {**values, "lr": step.lr, "data_time": data_t, "step_time": step_t,
                       "memory_mb": peak_memory_mb(env.device), "skipped": skipped}
                history.append({"iter": done, **row})
                loss_text = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
                logger.log("train", done, row,
                           f"[{done}/{cfg.train.iters}] {loss_text}  lr {step.lr:.2e}  data {data_t * 1e3:.0f}ms  "
                           f"step {step_t * 1e3:.0f}ms  eta {format_eta(eta)}  mem {row['memory_mb']:.0f}MB")
                sums, good_steps = {}, 0
                timer.reset()
                check_folder(done)

            if step.stop > 0:
                saved = save(done)
                logger.close()
                raise TrainingStopped(step.stop if env.world_size == 1 else signal.SIGTERM, done, saved)
            # Evaluate before checkpointing: a crash during the evaluation then resumes from the previous
            # checkpoint and redoes it, instead of resuming past an evaluation that never finished.
            if done % cfg.train.eval_interval == 0 or done == cfg.train.iters:
                metrics = run_eval(model.student)
                logger.log("eval", done, metrics.to_dict(), f"[{done}] {cfg.data.val_split} mIoU {metrics.mIoU:.2f}  "
                           f"mAcc {metrics.mAcc:.2f}  aAcc {metrics.aAcc:.2f}")
                if env.is_main and metrics.mIoU > best_miou and lock is not None and lock.intact() \
                        and all_finite(model.student.state_dict()):
                    best_miou = metrics.mIoU
                    save_checkpoint(work_dir / "best.pth", model.student.state_dict(),
                                    meta={**meta, "iteration": done, "mIoU": metrics.mIoU})
            if done % cfg.train.checkpoint_interval == 0 or done == cfg.train.iters:
                save(done)
    # A run never ends "done" with weights that are not finite: final.pth holds only finite ones.
    gone, nonfinite = _agree(env, lock is not None and not lock.intact(),
                             env.is_main and not all_finite(model.student.state_dict()))
    if gone:
        raise _folder_gone(work_dir, cfg.train.iters)
    if nonfinite:
        good, renamed = _set_aside_suspects(work_dir, cfg.train.iters - consecutive_bad if consecutive_bad
                                            else cfg.train.iters + 1, env)
        aside = f" (set aside: {', '.join(renamed)})" if renamed else ""
        raise UserError(f"the weights are not finite at the end of the run (iteration {cfg.train.iters}), so "
                        f"final.pth was not written; {_advice(good)}{aside}")
    if env.is_main:
        save_checkpoint(work_dir / "final.pth", model.student.state_dict(), meta={**meta, "iteration": cfg.train.iters})
        if metrics is not None:
            # Wall time over every session of the run, resumes included.
            summary = {"iterations": cfg.train.iters, "wall_time_s": time_before + time.perf_counter() - t_start,
                       "global_batch": run.global_batch, "final": metrics.to_dict(),
                       "teacher": teacher_metrics.to_dict() if teacher_metrics else None, "skipped_steps": skipped}
            atomic_write_text(work_dir / "results.json", json.dumps(summary, indent=1, allow_nan=False))
    logger.close()
    barrier()
    del data  # shut the loader's workers down before the process group goes away
    return TrainResult(work_dir, cfg.train.iters, metrics, teacher_metrics, skipped, history)
