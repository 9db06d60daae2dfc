"""torch.distributed for `bench run` under torchrun: shard a cell's samples, gather them on rank 0.

Started by `torchrun --nproc_per_node=K python -m bench run ...` (WORLD_SIZE > 1 in the environment):
gloo on CPU, nccl on CUDA (one GPU per rank, LOCAL_RANK). Without torchrun every call is a no-op
on a world of one. Every rank makes the same collective calls in the same order; decisions that
one rank makes (a failure, the output directory) are shared by `broadcast`/`any_true` first.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as td


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> range:
        """This rank's contiguous share of sample indices 0..n-1 (sizes differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def gather(self, x: torch.Tensor) -> torch.Tensor | None:
        """Concatenate every rank's shard (in rank order) on rank 0; other ranks get None."""
        if not self.active:
            return x
        comm_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        sizes = [None] * self.size
        td.all_gather_object(sizes, x.shape[0])
        pad = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=comm_device)
        pad[: x.shape[0]] = x.to(comm_device)
        parts = [torch.empty_like(pad) for _ in range(self.size)]
        td.all_gather(parts, pad)
        if not self.main:
            return None
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu()

    def gather_objects(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.size
        td.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            td.barrier()


def init(device: str) -> World:
    """Join the process group started by torchrun, if any; `device` is 'auto', 'cpu' or 'cuda'."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if size <= 1:
        return World(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(td.get_rank(), td.get_world_size(), torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def finish(world: World) -> None:
    if world.active and td.is_initialized():
        td.destroy_process_group()
