"""InfiniteSampler: epochs are permutations, ranks interleave into the single-process stream, resume is exact."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from segdistill.data.sampler import InfiniteSampler
from segdistill.errors import UserError


def take(sampler: InfiniteSampler, n: int) -> list[tuple[int, int]]:
    return list(islice(iter(sampler), n))


def test_every_index_once_per_epoch_and_positions_count_up() -> None:
    size = 7
    stream = take(InfiniteSampler(size, seed=3), 4 * size)
    assert [p for _, p in stream] == list(range(4 * size))
    epochs = [[i for i, _ in stream[e * size : (e + 1) * size]] for e in range(4)]
    for order in epochs:
        assert sorted(order) == list(range(size))
    assert len({tuple(o) for o in epochs}) > 1  # reshuffled between epochs


def test_epoch_is_randperm_of_seed_plus_epoch() -> None:
    size, seed = 9, 11
    stream = take(InfiniteSampler(size, seed=seed), 3 * size)
    for e in range(3):
        expected = torch.randperm(size, generator=torch.Generator().manual_seed(seed + e)).tolist()
        assert [i for i, _ in stream[e * size : (e + 1) * size]] == expected


def test_two_ranks_interleaved_equal_one_rank() -> None:
    size, n = 10, 46
    single = take(InfiniteSampler(size, seed=0), n)
    r0 = take(InfiniteSampler(size, seed=0, rank=0, world_size=2), n // 2)
    r1 = take(InfiniteSampler(size, seed=0, rank=1, world_size=2), n // 2)
    merged = [item for pair in zip(r0, r1, strict=False) for item in pair]
    assert merged == single


def test_three_ranks_with_uneven_dataset_cover_the_stream() -> None:
    size = 5
    single = take(InfiniteSampler(size, seed=1), 30)
    parts = [take(InfiniteSampler(size, seed=1, rank=r, world_size=3), 10) for r in range(3)]
    merged = sorted((item for part in parts for item in part), key=lambda it: it[1])
    assert merged == single


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_resume_from_start_continues_the_stream(world_size: int) -> None:
    size, batch_per_rank, iters_done = 13, 3, 5
    global_batch = batch_per_rank * world_size
    start = iters_done * global_batch
    for rank in range(world_size):
        full = take(InfiniteSampler(size, seed=42, rank=rank, world_size=world_size), iters_done * batch_per_rank + 20)
        resumed = take(InfiniteSampler(size, seed=42, rank=rank, world_size=world_size, start=start), 20)
        assert resumed == full[iters_done * batch_per_rank :]


def test_no_shuffle_walks_the_dataset_in_order() -> None:
    stream = take(InfiniteSampler(4, seed=0, shuffle=False), 9)
    assert [i for i, _ in stream] == [0, 1, 2, 3, 0, 1, 2, 3, 0]


def test_seed_changes_the_stream() -> None:
    assert take(InfiniteSampler(50, seed=0), 50) == take(InfiniteSampler(50, seed=0), 50)
    assert take(InfiniteSampler(50, seed=0), 50) != take(InfiniteSampler(50, seed=1), 50)


def test_dataloader_batches_the_pairs() -> None:
    class Echo(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
            return key

    loader = torch.utils.data.DataLoader(Echo(), batch_size=4, sampler=InfiniteSampler(6, seed=0))
    indices, positions = next(iter(loader))
    assert positions.tolist() == [0, 1, 2, 3]
    assert indices.tolist() == [i for i, _ in take(InfiniteSampler(6, seed=0), 4)]


@pytest.mark.parametrize(
    "kwargs",
    [dict(size=0, seed=0), dict(size=3, seed=0, rank=2, world_size=2), dict(size=3, seed=0, world_size=0),
     dict(size=3, seed=0, start=-1)],
)
def test_bad_arguments_are_user_errors(kwargs) -> None:
    with pytest.raises(UserError):
        InfiniteSampler(**kwargs)
