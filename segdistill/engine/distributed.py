"""torchrun's environment, process groups and the few collectives the loop needs.

Every rank runs the same code; only rank 0 writes logs and checkpoints. Nothing here patches
``print``: callers ask ``DistEnv.is_main`` explicitly.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device when there is one, else CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            from ..errors import UserError
            raise UserError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init_distributed(device: str = "auto", timeout_min: float = 30.0) -> DistEnv:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else a single process.

    NCCL on CUDA, gloo on CPU (gloo is what the CPU tests exercise). A rank that waits longer than
    ``timeout_min`` for its peers fails, so torchrun can restart the group instead of hanging.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        if rank == 0 and elastic_restarts_allowed() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun shares one rendezvous TCPStore across restarts, and env:// gives the workers no
            # per-restart key prefix: restarted ranks can read their dead peers' addresses and hang.
            print("segdistill: warning: torchrun --max-restarts with a shared rendezvous store can hang on restart; "
                  "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun", file=sys.stderr)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    return DistEnv(rank, world_size, local_rank, dev)


def elastic_restarts_allowed() -> bool:
    """True when torchrun may restart this group after a failure (``--max-restarts`` > 0)."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM across ranks (no-op in a single process); returns ``t``."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks with one collective."""
    if not values or not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(values)
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    all_reduce_sum(t)
    t /= dist.get_world_size()
    return dict(zip(values, t.tolist(), strict=True))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
