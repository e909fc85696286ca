"""Data-parallel training over several processes started by torchrun (one rank per GPU with nccl, or CPU processes
with gloo). Never used inside napari.

What it does, and why this way rather than wrapping the twins in DistributedDataParallel (their pathways are
called in several places per step, and the image pathways only on some steps): every rank starts from the same
weights (broadcast from rank 0), averages the gradients of every parameter that has one after each backward pass
(what DDP does), and draws its patches from its own random stream, so a step sees ``world x batch`` patches.
Every decision that depends on the wall clock (the budget fraction, hence the schedules and the stop; the
pseudo-label passes; the checkpoints) is taken by rank 0 and broadcast, so all ranks take the same steps. Only
rank 0 writes files. BatchNorm running statistics stay per rank; the saved model has rank 0's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
import datetime
import os

import torch
from torch import nn


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def torchrun_ranks() -> Ranks | None:
    """The ranks torchrun set in the environment, or None for an ordinary single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def device_for(ranks: Ranks, requested: str) -> str:
    """One GPU per rank (cuda:LOCAL_RANK) when CUDA is there and not refused; CPU otherwise."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ranks.local_rank}"
    return requested if requested != "auto" else "cpu"


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (environment rendezvous, as torchrun sets it up): nccl on CUDA, gloo on CPU."""
    import torch.distributed as dist

    if not dist.is_initialized():
        # the other ranks wait in collectives while rank 0 alone writes pseudo-labels and checkpoints
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world,
                                timeout=datetime.timedelta(hours=2))


def stop() -> None:
    """Leave the process group together: every rank waits until rank 0 has written the model, then all close
    (a rank that closed alone while rank 0 still worked was aborted by gloo: 'terminate called without an active
    exception')."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_weights(modules: Iterable[nn.Module | None]) -> None:
    """Rank 0's parameters and buffers on every rank."""
    import torch.distributed as dist

    for module in modules:
        if module is None:
            continue
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(modules: Iterable[nn.Module | None], world: int) -> None:
    """Replace every parameter's gradient by its mean over the ranks (one flat all-reduce). Every rank must have
    gradients for the same parameters (true here: all ranks run the same code path at the same step)."""
    import torch.distributed as dist

    grads = [p.grad for module in modules if module is not None for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def rank0_value(value: float, device: torch.device) -> float:
    """Rank 0's value of a number on every rank (the budget fraction, a due flag)."""
    import torch.distributed as dist

    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())
