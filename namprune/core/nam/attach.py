"""NAM for models namprune did not build: ``attach_nam`` appends a NAM after the last layer of
every residual branch it recognises (torchvision and timm ResNets, RegNets, EfficientNets and
MobileNets), or after the layers named in ``after``, sized from one forward pass of an
example input.

The layer is wrapped in place: ``block.bn2`` becomes ``nn.Sequential(bn2, NAM)``, so its
weights move from ``bn2.weight`` to ``bn2.0.weight``. Load pretrained weights *before*
attaching NAM. ``model.namprune_nam`` records what was attached where, so a saved model can
be rebuilt exactly (``namprune.load(path, model=fresh)``).
"""

from __future__ import annotations

import sys
from typing import Iterable

import torch
import torch.nn as nn

from ..errors import NampruneError
from ..identity import remember_input, set_nam_placement
from .modules import BRANCHES, NAM, SCALED, check_attention

# (module, block class, the child that ends the block's residual branch, before the add).
# "-1" is the last child of a Sequential. A class is only looked for when its library is
# already imported: a model cannot hold a timm block unless timm was imported to build it.
BRANCH_ENDS = [
    ("torchvision.models.resnet", "BasicBlock", "bn2"),
    ("torchvision.models.resnet", "Bottleneck", "bn3"),
    ("torchvision.models.regnet", "ResBottleneckBlock", "f"),
    ("torchvision.models.mobilenetv2", "InvertedResidual", "conv.-1"),
    ("torchvision.models.mobilenetv3", "InvertedResidual", "block.-1"),
    ("torchvision.models.efficientnet", "MBConv", "block.-1"),
    ("torchvision.models.efficientnet", "FusedMBConv", "block.-1"),
    ("timm.models.resnet", "BasicBlock", "bn2"),
    ("timm.models.resnet", "Bottleneck", "bn3"),
    ("timm.models.regnet", "Bottleneck", "conv3"),
    ("timm.models.regnet", "PreBottleneck", "conv3"),
    ("timm.models._efficientnet_blocks", "InvertedResidual", "bn3"),  # EfficientNet, MobileNetV2/V3
    ("timm.models._efficientnet_blocks", "DepthwiseSeparableConv", "bn2"),
    ("timm.models._efficientnet_blocks", "EdgeResidual", "bn2"),
    ("timm.models._efficientnet_blocks", "UniversalInvertedResidual", "pw_proj"),  # MobileNetV4
]


def _known_blocks() -> list[tuple[type, str]]:
    found = []
    for module, cls, child in BRANCH_ENDS:
        block = getattr(sys.modules.get(module), cls, None)
        if block is not None:
            found.append((block, child))
    return found


def _child_path(block: nn.Module, child: str) -> str:
    """``conv.-1`` -> ``conv.3``: the relative name of the branch's last layer."""
    parts = []
    node = block
    for part in child.split("."):
        if part == "-1":
            part = list(node._modules)[-1]
        parts.append(part)
        node = getattr(node, part)
    return ".".join(parts)


def branch_ends(model: nn.Module) -> list[str]:
    """Names of the last layer of every residual branch of a block ``attach_nam`` knows."""
    known = _known_blocks()
    ends = []
    for name, m in model.named_modules():
        child = next((c for block, c in known if isinstance(m, block)), None)
        if child is not None:
            ends.append(f"{name}.{_child_path(m, child)}" if name else _child_path(m, child))
    return ends


def output_shapes(model: nn.Module, example_input: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Size]:
    """The output shape of each named layer on ``example_input`` (one forward pass in eval mode)."""
    shapes: dict[str, torch.Size] = {}

    def keep(name: str):
        def hook(_module, _inputs, out) -> None:  # returns None: the output goes on unchanged
            shapes.setdefault(name, getattr(out, "shape", None))
        return hook

    hooks = [_get(model, name).register_forward_hook(keep(name)) for name in names]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise NampruneError(f"{type(model).__name__} has no layer named {name!r} (see model.named_modules())") from None


def candidate_layers(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, tuple]]:
    """Where NAM could go in a network ``attach_nam`` does not know: the last BatchNorm of each
    module that holds BatchNorms as its own children (a block, a stage, a Sequential), with its
    output shape (without the batch), in the model's order."""
    last: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and name:
            last[name.rpartition(".")[0]] = name  # the parent's BatchNorm seen last
    shapes = output_shapes(model, example_input, last.values())
    return [(name, tuple(shapes[name][1:])) for name in last.values() if getattr(shapes.get(name), "__len__", None)
            and len(shapes[name]) == 4]


class NoKnownBlocks(NampruneError):
    """``attach_nam`` found no residual block it knows: the message names the layers it could
    follow instead. ``how`` is how the user names them (``after=[...]`` in Python; the command
    line says ``--nam-after``)."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, how: str = "after=[...]"):
        self.model_name = type(model).__name__
        try:
            self.candidates = candidate_layers(model, example_input)
        except Exception:  # the forward pass fails on the example: the error says so elsewhere
            self.candidates = []
        super().__init__(self.message(how))

    def message(self, how: str) -> str:
        text = (f"attach_nam found no residual block it knows in {self.model_name} (it knows torchvision and timm "
                f"ResNets, RegNets, EfficientNets and MobileNets); name the layers to follow with {how}")
        if not self.candidates:
            return text
        shown = ", ".join(f"{name} ({shape[0]} channels, {shape[1]}x{shape[2]})" for name, shape in self.candidates[:8])
        more = f" and {len(self.candidates) - 8} more" if len(self.candidates) > 8 else ""
        return f"{text}; candidates (the last BatchNorm of each block, output channels and size): {shown}{more}"

    def for_flag(self, flag: str) -> NampruneError:
        """The same error worded for the command line's ``flag``."""
        return NampruneError(self.message(f"{flag} NAME,NAME,..."))


def has_nam(model: nn.Module) -> bool:
    return any(isinstance(m, NAM) for m in model.modules())


def attach_nam(model: nn.Module, example_input: torch.Tensor, attention: str = "nam",
               after: list[str] | None = None) -> nn.Module:
    """Append ``NAM(C, (H, W))`` after the last layer of every residual branch (or after each
    layer named in ``after``), in place; returns ``model``.

    ``attention``: ``nam`` (channel then spatial), ``nam-channel``, ``nam-spatial``,
    ``nam-scaled`` (both branches, their weights scaled to mean 1 so a gate can move away
    from 0.5; see ``nam.modules``) or ``none`` (nothing attached). ``example_input`` is one
    batch the model takes (its size fixes each spatial branch's feature-map size; the model
    must then be fed that size).
    """
    mode = BRANCHES[check_attention(attention)]
    remember_input(model, example_input)
    if mode is None:
        return model
    if has_nam(model):
        raise NampruneError(f"{type(model).__name__} already has NAM attached")
    names = list(dict.fromkeys(after)) if after is not None else branch_ends(model)
    if not names:
        raise NoKnownBlocks(model, example_input)
    if "" in names:
        raise NampruneError("after=[...] names layers inside the model, not the model itself ('')")
    shapes = output_shapes(model, example_input, names)
    for name in names:
        shape = shapes.get(name)
        if shape is None or len(shape) != 4:
            what = "is not run by the model's forward" if name not in shapes else f"gives {tuple(shape or ())}"
            raise NampruneError(f"NAM goes after a layer with (N, C, H, W) output, but {name!r} {what}")
    for name in names:
        _, channels, height, width = shapes[name]
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, nn.Sequential(getattr(parent, child), NAM(channels, (height, width), mode, scaled=attention in SCALED)))
    set_nam_placement(model, attention, names)
    return model


__all__ = ["BRANCH_ENDS", "NoKnownBlocks", "attach_nam", "branch_ends", "candidate_layers", "has_nam", "output_shapes"]
