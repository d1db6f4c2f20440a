"""The user's own data for ``namprune.fit``: any re-iterable of ``(images, labels)`` batches
with a length (a ``DataLoader``, a list of batches) becomes what the engine iterates."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from ..errors import NampruneError
from .datasets import DataBundle


class BatchSource:
    """A user's loader with the two things the engine asks of one: ``set_epoch`` (passed on
    to the loader, or to its ``DistributedSampler``, when it has one) and a length."""

    def __init__(self, loader: Iterable, role: str):
        if isinstance(loader, Iterator):
            raise NampruneError(f"the {role} data is a one-pass iterator; give something that can be iterated every "
                                "epoch (a DataLoader, a list of (images, labels) batches)")
        try:
            self.length = len(loader)
        except TypeError:
            raise NampruneError(f"the {role} data has no length; give a DataLoader over a map-style dataset or a list "
                                "of (images, labels) batches") from None
        self.loader, self.role = loader, role

    def set_epoch(self, epoch: int) -> None:
        owner = self.loader if hasattr(self.loader, "set_epoch") else getattr(self.loader, "sampler", None)
        if hasattr(owner, "set_epoch"):
            owner.set_epoch(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)):
                raise NampruneError(f"the {self.role} data must give (images, labels) batches, got a "
                                    f"{type(batch).__name__}")
            yield batch[0], batch[1]


def as_bundle(data, test: Iterable | None = None) -> DataBundle:
    """``data`` as the engine's DataBundle: a bundle from ``load_data`` as it is, or the user's
    training loader with an optional ``test`` loader (no test: no evaluation per epoch)."""
    if isinstance(data, DataBundle):
        if test is not None:
            raise NampruneError("test= is for your own loaders; a load_data bundle brings its test split")
        return data
    return DataBundle(BatchSource(data, "training"), BatchSource(test, "test") if test is not None else None, None)


__all__ = ["BatchSource", "as_bundle"]
