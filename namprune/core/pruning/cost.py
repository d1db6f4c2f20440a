"""What a model costs to run: parameters and MACs, in total and per channel of a group.

MACs are torch-pruning's count (``tp.utils.count_ops_and_params``) for one image of the
model's input size: multiply-accumulates of convolutions and linear layers, plus one
operation per element for BatchNorm (two when affine), ReLU/ReLU6 and pooling. The NAM
gates (a sigmoid and a multiply per element) are not counted.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from ..identity import example_input

MACS_COUNTER = f"torch-pruning {tp.__version__} count_ops_and_params (conv/linear MACs, BN/ReLU/pool per element, NAM gates not counted)"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_tensor: torch.Tensor | None = None) -> int:
    """MACs for one image of the model's input size (torch-pruning's counter, see above)."""
    x = input_tensor if input_tensor is not None else example_input(model)
    macs, _ = tp.utils.count_ops_and_params(model, x[:1])  # counts on a deep copy in eval mode
    return int(macs)


def _channels_touched(layer: nn.Module, handler) -> int | None:
    """How many channels the layer's count is spread over along the dimension ``handler`` cuts."""
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels if handler is tp.prune_conv_in_channels else layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.in_features if handler is tp.prune_linear_in_channels else layer.out_features
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return layer.num_features
    return None


@torch.no_grad()
def channel_macs(model: nn.Module, groups: list, input_tensor: torch.Tensor | None = None) -> list[float]:
    """The MACs one channel of each torch-pruning group costs at the model's present widths:
    the counted MACs of every layer the group cuts, shared out over that layer's channels.

    First order: removing channels from two coupled layers saves a little less than the sum.
    """
    x = input_tensor if input_tensor is not None else example_input(model)
    _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, x[:1], layer_wise=True)
    costs = []
    for group in groups:
        width = len(group[0].idxs)
        cost, seen = 0.0, set()
        for item in group:
            layer, handler = item.dep.target.module, item.dep.handler
            touched = _channels_touched(layer, handler)
            if not touched or not layer_macs.get(layer) or (layer, touched) in seen:
                continue
            seen.add((layer, touched))  # a depthwise conv appears once per direction: count it once
            cost += layer_macs[layer] / touched * len(item.idxs) / width
        costs.append(cost)
    return costs
