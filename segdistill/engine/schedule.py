"""The learning rate as a pure function of the iteration, so resuming needs no scheduler state."""

from __future__ import annotations


def poly_lr(it: int, base_lr: float, max_iters: int, power: float = 0.9, min_lr: float = 1e-4,
            warmup_iters: int = 0, warmup_ratio: float = 0.1) -> float:
    """mmseg's PolyLR: ``(base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr``.

    With ``warmup_iters`` the first iterations are additionally scaled linearly from ``warmup_ratio``
    to 1 (mmengine's LinearLR warm-up composed with the poly decay).
    """
    it = min(max(it, 0), max_iters)
    lr = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
    if it < warmup_iters:
        lr *= warmup_ratio + (1 - warmup_ratio) * it / warmup_iters
    return lr
