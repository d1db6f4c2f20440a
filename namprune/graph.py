"""The model as torch-pruning's DependencyGraph sees it.

The graph finds which layers are coupled (a residual stream, a depthwise conv and its
neighbours) so whole channels are removed consistently. NAM needs two entries in it:
``ChannelNAM`` is pruned like the BatchNorm it holds, and ``SpatialNAM`` (whose BatchNorm
runs over pixels, not channels) passes channel pruning through untouched.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from .errors import NampruneError
from .fold import refuse_folded
from .nam import ChannelNAM, SpatialNAM


class ChannelNAMPruner(tp.pruner.function.BasePruningFunc):
    """Removing channel i of a ChannelNAM removes entry i of its BatchNorm."""

    def prune_out_channels(self, layer: ChannelNAM, idxs: Sequence[int]) -> nn.Module:
        tp.prune_batchnorm_out_channels(layer.bn, idxs)
        return layer

    prune_in_channels = prune_out_channels  # input and output channels are the same channels

    def get_out_channels(self, layer: ChannelNAM) -> int:
        return layer.channels

    get_in_channels = get_out_channels


class PassThroughPruner(tp.pruner.function.BasePruningFunc):
    """A layer that works on any number of channels (SpatialNAM): nothing to cut."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module):
        return None

    get_in_channels = get_out_channels


CUSTOM_PRUNERS = {ChannelNAM: ChannelNAMPruner(), SpatialNAM: PassThroughPruner()}


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A zero input of the shape the model was built for (from ``model.namprune_spec``)."""
    spec = model.namprune_spec
    device = next(model.parameters()).device
    return torch.zeros(batch, spec["in_channels"], spec["input_size"], spec["input_size"], device=device)


def dependency_graph(model: nn.Module) -> tp.DependencyGraph:
    """Trace ``model`` into a torch-pruning DependencyGraph that knows the NAM layers."""
    refuse_folded(model, "prune")  # a folded gate's buffers are not channel layers torch-pruning knows
    was_training = model.training
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_input(model), customized_pruners=CUSTOM_PRUNERS, verbose=False)
    finally:
        model.train(was_training)


def replay_history(model: nn.Module, history: list) -> nn.Module:
    """Re-apply a saved pruning history to a freshly built model, in place."""
    graph = dependency_graph(model)
    graph.load_pruning_history([(name, bool(is_out), list(idxs)) for name, is_out, idxs in history])
    model.namprune_history = [list(step) for step in history]
    return model


def classifier(model: nn.Module) -> nn.Module:
    """The final linear layer, whose outputs are the classes: never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise NampruneError("the model has no final nn.Linear classifier to protect from pruning")
    return linears[-1]


def prunable_groups(model: nn.Module, graph: tp.DependencyGraph) -> Iterator:
    """Every group of coupled channels, each holding all of its channels; the classifier's
    outputs are left out."""
    return graph.get_all_groups(ignored_layers=[classifier(model)], root_module_types=(nn.Conv2d, nn.Linear))
