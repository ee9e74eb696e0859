"""Run a segmentor over a dataset split and reduce a confusion matrix across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Subset

from ..config import EvalConfig
from ..constants import IGNORE_INDEX
from ..data import prepare_worker_fork, worker_init
from ..errors import UserError
from ..models.segmentor import EncoderDecoder
from ..progress import progress_bar
from .metrics import ConfusionMatrix, MetricValueError, SegMetrics


@torch.no_grad()
def evaluate(model: EncoderDecoder, eval_set: torch.utils.data.Dataset, eval_cfg: EvalConfig,
             device: torch.device, class_names: Sequence[str], *, rank: int = 0, world_size: int = 1,
             workers: int = 0, ignore_index: int = IGNORE_INDEX, progress: bool = False) -> SegMetrics:
    """mIoU, mAcc, aAcc and per-class IoU/Acc of ``model`` on ``eval_set`` at full label resolution.

    Rank ``r`` of ``W`` evaluates samples r, r+W, ...; the summed confusion matrix counts every sample
    exactly once (no padding duplicates, unlike DistributedSampler), so the numbers equal a single
    process's. Each sample is a normalised image tensor (possibly resized) and its original-size label.
    ``progress`` shows rank 0's progress (its share of the images) on stderr.
    """
    was_training = model.training
    model.eval()
    prepare_worker_fork()
    indices = list(range(rank, len(eval_set), world_size))  # type: ignore[arg-type]
    loader = DataLoader(Subset(eval_set, indices), batch_size=1, num_workers=workers, worker_init_fn=worker_init,
                        # Its own generator: creating the iterator must not advance the global RNG,
                        # or evaluating mid-run would change the training that follows.
                        generator=torch.Generator())
    cm = ConfusionMatrix(len(class_names), ignore_index=ignore_index, device=device)
    with progress_bar(len(indices), "eval", unit="img", enabled=progress) as bar:
        for image, label, index in loader:
            _evaluate_one(model, image, label, index, eval_cfg, device, cm, eval_set)
            bar.update(1)
    cm.all_reduce()
    model.train(was_training)
    return cm.compute(class_names)


def _evaluate_one(model: EncoderDecoder, image: torch.Tensor, label: torch.Tensor, index: torch.Tensor,
                  eval_cfg: EvalConfig, device: torch.device, cm: ConfusionMatrix,
                  eval_set: torch.utils.data.Dataset) -> None:
    image = image.to(device, non_blocking=True)
    label = label.to(device, non_blocking=True)
    scores = model.inference(image, mode=eval_cfg.mode, crop_size=eval_cfg.crop_size, stride=eval_cfg.stride,
                             flip=eval_cfg.flip, scales=eval_cfg.scales, out_size=label.shape[-2:])
    try:
        cm.update(scores.argmax(dim=1), label)
    except MetricValueError as e:
        name = getattr(getattr(eval_set, "dataset", None), "names", None)
        where = name[int(index)] if name else f"sample {int(index)}"
        raise UserError(f"{where}: {e}") from None
