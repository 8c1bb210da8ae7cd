"""Multi-process training with PyTorch's own engine (torchrun + DDP; NCCL on GPUs, gloo on CPU).

`torchrun --nproc_per_node=N -m gptmini.cli pretrain|sft ...` starts N copies. They all draw the
same micro-batches in the same order, and process r trains micro-batches r, r+N, ... of each step:
the global batch, and so the loss curve, are those of a single process with the same
--grad-accum. Only rank 0 prepares data, writes checkpoints, metrics and progress bars.
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
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, value: float) -> float:
        if self.size == 1:
            return value
        on_gpu = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
        return self.sums(torch.tensor([value], dtype=torch.float64, device=f"cuda:{self.local_rank}" if on_gpu else "cpu"))[0]

    def sums(self, values: torch.Tensor) -> list[float]:
        """A tensor of the training device summed over the processes, read to the host: one sync."""
        if self.size > 1:
            dist.all_reduce(values)
        return values.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum(float(flag)) > 0


def world(device: torch.device = torch.device("cpu")) -> World:
    """This process's place; initialises the process group on first use under torchrun (NCCL for a CUDA
    device, bound to it: its collectives then run on this process's GPU, not all on the first)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
