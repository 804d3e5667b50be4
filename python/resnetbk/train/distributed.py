"""Multi-process training under ``torchrun``: DistributedDataParallel over sharded streams.

Launched as ``torchrun --nproc-per-node K -m resnetbk.bench ...``: every rank runs the same
command, gets ``batch_size / K`` of the parallel streams, and rank 0 writes every file. gloo on
CPU, nccl on CUDA. Losses are normalised by the *global* token count, so the gradient is exactly
the single-process gradient of the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, values: list) -> list:
        """Element-wise sum over ranks (float64)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def all(self, flag: bool) -> bool:
        """True only if every rank says True."""
        if not self.distributed:
            return flag
        return self.sum([0.0 if flag else 1.0])[0] == 0.0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


#: One process, no process group.
SINGLE = World()


def world(device: torch.device) -> World:
    """The current process group, set up on first use when launched by torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Rank 0 under torchrun (read from the environment, before any process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def shard_rows(inputs: torch.Tensor, targets: torch.Tensor, w: World) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous block of the ``batch_size`` parallel streams."""
    if not w.distributed:
        return inputs, targets
    rows = inputs.shape[0]
    if rows % w.size:
        raise ValueError(f"batch_size: {rows} streams cannot be split evenly over {w.size} processes; "
                         "use a batch size divisible by the number of processes")
    per = rows // w.size
    block = slice(w.rank * per, (w.rank + 1) * per)
    return inputs[block], targets[block]


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA where torch sees a device, else the CPU; ``"cuda"`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)
