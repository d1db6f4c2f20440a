"""One door to every architecture: ``create(name, num_classes, attention=..., input_size=...)``.

Built-in CIFAR-style networks register themselves by name. Models from elsewhere
(``models.foreign``) are reachable as ``tv:<torchvision name>``, ``timm:<timm name>`` and
``path/to/file.py:function``, with NAM attached by :func:`namprune.attach_nam`.
The returned model carries its own recipe in ``model.namprune_spec`` so a checkpoint can
rebuild it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import NampruneError
from ..identity import set_spec, spec as spec_of
from ..nam.attach import attach_nam
from ..nam.modules import check_attention
from ..store.weights import load_weights
from . import foreign

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = builder
        return builder
    return add


def available() -> list[str]:
    return sorted(_REGISTRY) + ["tv:<torchvision model>", "timm:<timm model>", "path/to/file.py:function"]


def check_name(name: str) -> str:
    """Refuse a model name that cannot be built, before any work starts (nothing is built or run)."""
    if foreign.is_foreign(name):
        foreign.check_name(name)
    elif name not in _REGISTRY:
        raise NampruneError(f"unknown model {name!r}; choose one of {', '.join(available())}")
    return name


def create(name: str, num_classes: int = 10, attention: str = "none", input_size: int = 32,
           in_channels: int = 3, weights: str | Path | None = None, nam_after: list[str] | None = None,
           sha256: str | None = None) -> nn.Module:
    """Build a model by name, start it from a local state_dict ``weights`` if given, and give it
    NAM attention (built into registry models; attached to the residual branches of foreign
    ones, or after the ``nam_after`` layers). ``sha256`` pins a model file (see ``foreign``)."""
    check_attention(attention)
    check_name(name)
    if nam_after and attention == "none":
        raise NampruneError("nam_after (--nam-after) says where NAM goes, but attention is 'none': "
                            "give attention 'nam' too (--attention nam)")
    if num_classes < 2:
        raise NampruneError(f"num_classes must be at least 2, got {num_classes}")
    spec = dict(name=name, num_classes=int(num_classes), attention=attention,
                input_size=int(input_size), in_channels=int(in_channels))
    if foreign.is_foreign(name):
        model, pinned = foreign.build(name, num_classes, in_channels, input_size, sha256)
        spec.update(pinned)
        foreign.check_input(model, name, in_channels, input_size, num_classes, announce=sha256 is None)
        if weights is not None:
            load_weights(model, weights, name)
        attach_nam(model, torch.zeros(1, in_channels, input_size, input_size), attention, after=nam_after)
        if nam_after:
            spec["nam_after"] = list(nam_after)
    else:
        if nam_after:
            raise NampruneError(f"{name} has NAM built into its blocks; nam_after is for other models")
        model = _REGISTRY[name](num_classes=num_classes, attention=attention, input_size=input_size,
                                in_channels=in_channels)
        if weights is not None:
            load_weights(model, weights, name)
    set_spec(model, spec)
    return model


def from_spec(spec: dict) -> nn.Module:
    """The architecture a checkpoint's ``arch`` describes (without its trained weights)."""
    if spec.get("name") == CUSTOM:
        raise NampruneError(f"the checkpoint holds a model of your own class {spec.get('class', '?')}; rebuild it in "
                            "Python: namprune.load(path, model=YourModel(...))")
    name = spec["name"]
    if "file" in spec:  # the file as recorded (absolute), whatever the current directory
        name = f"{spec['file']}:{name.rpartition(':')[2]}"
    model = create(name, spec["num_classes"], spec["attention"], spec["input_size"], spec["in_channels"],
                   nam_after=spec.get("nam_after"), sha256=spec.get("sha256"))
    spec_of(model)["name"] = spec["name"]
    return model


CUSTOM = "custom"  # the arch name of a user's own model saved with namprune.save

from . import mobilenet, resnet  # noqa: E402,F401  (registration side effects)

__all__ = ["CUSTOM", "available", "check_name", "create", "from_spec", "register", "attach_nam"]
