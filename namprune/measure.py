"""Cost of a model: parameters and MACs.

MACs come from torch-pruning's counter (``tp.utils.count_ops_and_params``) for one image:
multiply-accumulates of convolutions and linear layers, plus one operation per element
for BatchNorm (two when affine), ReLU/ReLU6 and pooling. The NAM gates (a sigmoid and a
multiply per element) are not counted.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from .graph import example_input


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_tensor: torch.Tensor | None = None) -> int:
    """MACs for one image of the model's input size."""
    x = input_tensor if input_tensor is not None else example_input(model)
    macs, _ = tp.utils.count_ops_and_params(model, x[:1])  # counts on a deep copy in eval mode
    return int(macs)
