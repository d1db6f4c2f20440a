"""What a model costs and how well it does: parameters, MACs, measured latency, top-1/top-5.

Every figure comes back with the settings it was measured with, so a number in a report
can always be traced to how it was taken:

* params: every parameter tensor's elements (no settings needed).
* MACs: torch-pruning's counter (``tp.utils.count_ops_and_params``) for one image of the
  model's input size: multiply-accumulates of convolutions and linear layers, plus one
  operation per element for BatchNorm (two when affine), ReLU/ReLU6 and pooling. The NAM
  gates (a sigmoid and a multiply per element) are not counted.
* latency: ``namprune.core.deploy.timing`` (re-exported here): medians of ``torch.utils.benchmark``
  blocks at batch 1 and a larger batch, several models side by side in interleaved rounds,
  each figure a record with its threads, spread across rounds and a trusted flag.
* top-1 / top-5: ``namprune.core.training.loop.evaluate`` on the test split.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..data.datasets import DataBundle
from ..identity import example_input
from ..pruning.cost import MACS_COUNTER, count_macs, count_params
from ..training.loop import evaluate
from .timing import measure_latency


def measure_cost(model: nn.Module) -> dict:
    """Params and MACs, with the input shape and counter the MACs were counted with."""
    return {"params": count_params(model), "macs": count_macs(model),
            "macs_input_shape": list(example_input(model).shape), "macs_counter": MACS_COUNTER}


def measure_accuracy(model: nn.Module, data: DataBundle, device: torch.device | str | None = None) -> dict:
    """Top-1 / top-5 (%) on the test split, with the dataset and device they were measured on."""
    result = evaluate(model, data.test, device)
    return {**result, "dataset": data.info.name, "split": "test",
            "device": str(device or next(model.parameters()).device)}


__all__ = ["MACS_COUNTER", "count_macs", "count_params", "measure_accuracy", "measure_cost",
           "measure_latency"]
