"""NAM for torchvision classification models: ``attach_nam`` appends a NAM to the end of
every residual branch it recognises (ResNet basic/bottleneck blocks, MobileNetV2 and
MobileNetV3 inverted residuals), sized from one forward pass of an example input."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
from torchvision.models import mobilenetv2, mobilenetv3
from torchvision.models import resnet as tv_resnet

from ..errors import NampruneError
from ..nam import ATTENTIONS, NAM


def _branch_ends(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(container, child name) of the last layer of every residual branch, before the add."""
    ends = []
    for m in model.modules():
        if isinstance(m, tv_resnet.BasicBlock):
            ends.append((m, "bn2"))
        elif isinstance(m, tv_resnet.Bottleneck):
            ends.append((m, "bn3"))
        elif isinstance(m, mobilenetv2.InvertedResidual):
            ends.append((m.conv, str(len(m.conv) - 1)))
        elif isinstance(m, mobilenetv3.InvertedResidual):
            ends.append((m.block, str(len(m.block) - 1)))
    return ends


def attach_nam(model: nn.Module, example_input: torch.Tensor, mode: str = "both") -> nn.Module:
    """Insert ``NAM(C, (H, W), mode)`` after the last layer of every residual branch, in place."""
    ends = _branch_ends(model)
    if not ends:
        raise NampruneError(
            f"attach_nam found no residual block it knows in {type(model).__name__} "
            "(supported: torchvision ResNet, MobileNetV2 and MobileNetV3 blocks)"
        )
    shapes: dict[tuple[int, str], torch.Size] = {}
    hooks = [
        getattr(parent, name).register_forward_hook(
            lambda _m, _i, out, key=(id(parent), name): shapes.__setitem__(key, out.shape))
        for parent, name in ends
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for parent, name in ends:
        _, channels, height, width = shapes[(id(parent), name)]
        setattr(parent, name, nn.Sequential(getattr(parent, name), NAM(channels, (height, width), mode)))
    return model


def create_torchvision(name: str, num_classes: int, attention: str, input_size: int, in_channels: int) -> nn.Module:
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise NampruneError(f"unknown torchvision classification model {name!r} (e.g. {', '.join(known[:6])}, ...)")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_stem(model, in_channels)
    mode = ATTENTIONS[attention]
    if mode is not None:
        attach_nam(model, torch.zeros(1, in_channels, input_size, input_size), mode)
    return model


def _replace_stem(model: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one that takes ``in_channels`` (e.g. grey images)."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, child = name.rpartition(".")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    setattr(model.get_submodule(parent_name), child, new)
