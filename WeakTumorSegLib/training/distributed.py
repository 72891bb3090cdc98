"""Where this process stands in a training run: alone, or one rank of a ``torchrun`` job.

Under ``torchrun`` each stage trains with DistributedDataParallel and a DistributedSampler (NCCL
on GPUs, gloo on CPUs); rank 0 computes the non-training steps (RISE, refinement) and writes every
file, the other ranks wait at a barrier and read them back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn

from ..inference.device import resolve_device


@dataclass
class Dist:
    """This process's place in a (possibly single-process) distributed run."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP-wrap a model when running distributed. Buffers (BatchNorm statistics) are synced
        once at start and not re-broadcast at every forward, so a discriminator can run on real
        and fake batches in one step; rank 0's statistics are saved (and re-estimated over the
        training data at the end of each stage, see :func:`recalibrate_batchnorm`)."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def setup_distributed(device: str = "auto") -> Dist:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = resolve_device(device)  # the same rule and errors as segment and evaluate
    if world <= 1:
        return Dist(0, 1, chosen)
    want_cuda = chosen.type == "cuda"
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if want_cuda else "gloo")
    if want_cuda:
        torch.cuda.set_device(local)
        return Dist(rank, world, torch.device("cuda", local))
    return Dist(rank, world, torch.device("cpu"))
