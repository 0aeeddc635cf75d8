"""Data-parallel training under torchrun: process group from torchrun's environment (NCCL on GPUs, gloo on the
CPU), the rank-sliced epoch sampler, and synchronised batch normalisation on both."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def mean_over_ranks(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / info.world_size


class EpochSampler(torch.utils.data.Sampler):
    """Indices of one epoch for one rank: a permutation seeded by (seed, epoch), padded to a multiple of the
    world size, rank r taking every world_size-th index from r. Rank batches of one step together are the
    consecutive slice a single process with the total batch would take, so one process and several see the
    same samples per step. `skip` drops this rank's first indices (resuming mid-epoch)."""

    def __init__(self, size: int, info: DistInfo, seed: int, shuffle: bool = True):
        self.size, self.info, self.seed, self.shuffle = size, info, seed, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> np.ndarray:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        padded = -(-self.size // self.info.world_size) * self.info.world_size
        order = np.concatenate([order, order[: padded - self.size]])
        return order[self.info.rank::self.info.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip:].tolist())

    def __len__(self) -> int:
        return len(self._indices()) - self.skip


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """Batch normalisation with statistics over every process's batch, for gloo (torch.nn.SyncBatchNorm runs
    on GPUs only). The sums go through torch.distributed.nn's differentiable all_reduce, so the backward is
    the one of the whole batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        sums = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        sums = all_reduce(sums)
        c = x.shape[1]
        total = sums[-1]
        mean = sums[:c] / total
        var = sums[c:2 * c] / total - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * total / (total - 1).clamp(min=1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """BatchNorm2d -> synchronised batch norm (the official configs' SyncBN): torch's on GPUs, GlooSyncBatchNorm
    on the CPU. Parameters and buffers are kept, so state_dict keys do not change."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device_type)
    return model
