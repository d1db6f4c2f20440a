"""How a dataset becomes batches: tensors held in memory, cropped, flipped and normalized a
whole batch at a time (``TensorLoader``), or an image folder streamed by a DataLoader with
worker processes (``StreamLoader``). Both are seeded per epoch and sharded across processes
under torchrun."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler


@dataclass(frozen=True)
class Augment:
    """Random crop after zero padding by ``pad`` pixels, and optional horizontal flip."""

    pad: int = 0
    flip: bool = False


def random_crop_flip(images: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (zero padding) and flip of a batch, as one gather.

    torchvision's v2 transforms draw one set of parameters per call, i.e. per batch, so
    per-sample parameters are drawn here and applied with a single indexing operation.
    """
    n, _, h, w = images.shape
    if augment.pad:
        p = augment.pad
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * p + 1, (n, 1), generator=generator).to(images.device)
        rows = (dy + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (dx + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if augment.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


class TensorLoader:
    """Batches from uint8 images held in memory; the order and the augmentation of an epoch
    depend only on (seed, epoch), so a resumed run sees exactly the batches it would have."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std,
                 augment: Augment | None = None, shuffle: bool = False, drop_last: bool = False,
                 device: str | torch.device = "cpu", seed: int = 0, rank: int = 0, world_size: int = 1):
        device = torch.device(device)
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = max(1, min(batch_size, len(images) // world_size))
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.augment = augment
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.sampler = DistributedSampler(range(len(images)), num_replicas=world_size, rank=rank,
                                          shuffle=shuffle, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(list(iter(self.sampler)), device=self.images.device)
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, self.rank)) % 2**63)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.images[idx]
            if self.augment is not None:
                batch = random_crop_flip(batch, self.augment, generator)
            yield (batch.float() - self.mean) / self.std, self.labels[idx]


# --------------------------------------------------------------------------- streaming path


class StreamLoader:
    """A DataLoader over an image folder (worker processes, pinned memory), epoch-seeded."""

    def __init__(self, dataset, batch_size: int, shuffle: bool, drop_last: bool, workers: int, device,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, drop_last=drop_last,
                                 num_workers=workers, pin_memory=torch.device(device).type == "cuda",
                                 persistent_workers=workers > 0)
        self.device = torch.device(device)
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for images, labels in self.loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


# --------------------------------------------------------------------------- sources
