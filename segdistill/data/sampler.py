"""An endless, rank-sharded, exactly resumable sampler.

The global stream is the concatenation of epochs, epoch ``e`` being ``torch.randperm(size)`` drawn
from a generator seeded with ``seed + e``. Position ``p`` of that stream belongs to rank ``p % W``
(counted from ``start``), so ranks interleave into exactly the single-process stream. Each item is
``(dataset_index, global_position)``; the position doubles as the sample's augmentation seed, which
makes a sample's augmentation independent of the world size and of resuming.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import UserError

__all__ = ["InfiniteSampler"]


class InfiniteSampler(torch.utils.data.Sampler):
    """Yield ``(dataset_index, global_position)`` forever for rank ``rank`` of ``world_size``.

    ``start`` is the number of global positions already consumed (``iterations * global_batch``
    when resuming), so a resumed run continues the very same stream. Rank ``r`` yields the
    positions ``start + r``, ``start + r + W``, ``start + r + 2W``, ...
    """

    def __init__(
        self,
        size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start: int = 0,
    ) -> None:
        if size <= 0:
            raise UserError(f"cannot sample from an empty dataset (size {size}); check the dataset root and split")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not valid for world size {world_size}; check the torchrun environment")
        if start < 0:
            raise UserError(f"sampler start must be >= 0, got {start}; check the resumed iteration")
        self.size = int(size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = shuffle
        self.start = int(start)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The dataset indices of epoch ``epoch`` in stream order."""
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        epoch = -1
        order: list[int] = []
        while True:
            e, offset = divmod(position, self.size)
            if e != epoch:
                # One permutation per epoch, kept as a list: indexing a tensor item by item is slow.
                epoch, order = e, self.epoch_order(e).tolist()
            yield order[offset], position
            position += self.world_size
