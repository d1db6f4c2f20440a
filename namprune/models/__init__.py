"""One door to every architecture: ``create(name, num_classes, attention=..., input_size=...)``.

Built-in CIFAR-style networks register themselves by name; any torchvision classification
model is reachable as ``tv:<name>`` with NAM attached by :func:`attach_nam`.
The returned model carries its own recipe in ``model.namprune_spec`` so a checkpoint can
rebuild it.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import NampruneError
from ..nam import check_attention
from .torchvision_nam import attach_nam, create_torchvision

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder
    return add


def available() -> list[str]:
    return sorted(_REGISTRY) + ["tv:<torchvision model name>"]


def create(name: str, num_classes: int = 10, attention: str = "none", input_size: int = 32,
           in_channels: int = 3) -> nn.Module:
    """Build a registered model; ``tv:<name>`` builds a torchvision model with NAM attached."""
    check_attention(attention)
    if num_classes < 2:
        raise NampruneError(f"num_classes must be at least 2, got {num_classes}")
    spec = dict(name=name, num_classes=int(num_classes), attention=attention,
                input_size=int(input_size), in_channels=int(in_channels))
    if name.startswith("tv:"):
        model = create_torchvision(name[3:], **{k: v for k, v in spec.items() if k != "name"})
    elif name in _REGISTRY:
        model = _REGISTRY[name](num_classes=num_classes, attention=attention,
                                input_size=input_size, in_channels=in_channels)
    else:
        raise NampruneError(f"unknown model {name!r}; choose one of {', '.join(available())}")
    model.namprune_spec = spec
    return model


def from_spec(spec: dict) -> nn.Module:
    return create(**spec)


from . import mobilenet, resnet  # noqa: E402,F401  (registration side effects)

__all__ = ["available", "create", "from_spec", "register", "attach_nam"]
