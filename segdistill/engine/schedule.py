"""The learning rate as a pure function of the iteration, so resuming needs no scheduler state."""

from __future__ import annotations


def poly_lr(it: int, base_lr: float, max_iters: int, power: float = 0.9, min_lr: float = 1e-4,
            warmup_iters: int = 0, warmup_ratio: float = 0.1, schedule: str = "mmengine") -> float:
    """The rate of iteration ``it`` (0-based) of a run of ``max_iters`` iterations.

    ``schedule="mmengine"``: exactly what mmseg 1.x's configs run, ``LinearLR(start_factor=warmup_ratio,
    begin=0, end=W)`` then ``PolyLR(eta_min=min_lr, power, begin=W, end=max_iters)`` stepped once per
    iteration. mmengine counts a scheduler's span as ``end - begin - 1`` steps, so the warm-up factor
    reaches 1 at iteration ``W - 1`` and the poly decay reaches ``min_lr`` at the last iteration:

    - ``it < W``: ``base_lr * (r + (1 - r) * it / (W - 1))``;
    - ``it >= W``: ``(base_lr - min_lr) * (1 - (it - W) / (max_iters - W - 1)) ** power + min_lr``.

    ``schedule="scaled_warmup"`` (segdistill 0.1, kept so the CamVid study's runs stay comparable):
    ``(base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr``, multiplied during the first ``W``
    iterations by ``r + (1 - r) * it / W``.
    """
    it = min(max(it, 0), max_iters - 1)
    if schedule == "scaled_warmup":
        lr = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
        if it < warmup_iters:
            lr *= warmup_ratio + (1 - warmup_ratio) * it / warmup_iters
        return lr
    if schedule != "mmengine":
        raise ValueError(f"schedule must be 'mmengine' or 'scaled_warmup', got {schedule!r}")
    if it < warmup_iters:
        span = warmup_iters - 1
        return base_lr * (warmup_ratio + (1 - warmup_ratio) * (it / span if span > 0 else 1.0))
    span = max_iters - warmup_iters - 1
    progress = (it - warmup_iters) / span if span > 0 else 1.0
    return (base_lr - min_lr) * (1 - progress) ** power + min_lr
