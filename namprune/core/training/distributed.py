"""Data-parallel training under torchrun: the process group, the DDP wrapper, and the few
collectives the engine needs.

torchrun starts one process per GPU (or per CPU worker) and tells each its ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` through the environment; ``setup`` joins the process
group from there (NCCL on CUDA, gloo on CPU). Outside torchrun every function here is a
no-op, so the same code trains in one process.

Every rank holds the same weights: DDP broadcasts rank 0's at wrapping and averages the
gradients of every step, and ``average_buffers`` averages the BatchNorm running
statistics (which each rank collects from its own shard) at the end of each epoch.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import NampruneError
from ..nam.modules import ChannelNAM, SpatialNAM


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes its own GPU: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    if launched() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup(device: torch.device) -> None:
    """Join torchrun's process group (once); NCCL for CUDA, gloo for CPU."""
    if not launched() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # device_id binds NCCL's communicator to this process's GPU up front (no guessing, no warning)
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    atexit.register(teardown)  # a library caller who never calls teardown still exits cleanly


def teardown() -> None:
    """Leave the process group; safe to call more than once or without one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model as DDP sees it when several processes train, else the model itself."""
    if not active():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under a DDP and/or ``torch.compile`` wrapper (what is saved and pruned)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, DistributedDataParallel) else model


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap the model's BatchNorms for SyncBatchNorm when several processes train; returns the
    swaps for ``revert_sync_batchnorm``.

    The swapped-in layers share the originals' parameters and buffers, so nothing needs
    copying back, and reverting hands the model back with the layer types it came with (which
    checkpoints and torch-pruning expect). NAM's own BatchNorms are left alone: NAM calls
    ``F.batch_norm`` with their parameters directly, so their statistics stay per process.
    """
    if not active():
        return []
    if device.type != "cuda":
        raise NampruneError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on CPU)")

    swaps = []
    for parent in list(model.modules()):
        if isinstance(parent, (ChannelNAM, SpatialNAM)):
            continue
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                swaps.append((parent, name, child))
    return swaps


def revert_sync_batchnorm(swaps: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, name, original in swaps:
        setattr(parent, name, original)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over every process, in place (a no-op in a single process)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over every process,
    so each rank evaluates, saves and prunes the same model. Once an epoch: a loop of
    small all-reduces is cheap enough."""
    if not active():
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer /= dist.get_world_size()
