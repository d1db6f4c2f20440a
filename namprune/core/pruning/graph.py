"""The model as torch-pruning's DependencyGraph sees it.

The graph finds which layers are coupled (a residual stream, a depthwise conv and its
neighbours) so whole channels are removed consistently. NAM needs two entries in it:
``ChannelNAM`` is pruned like the BatchNorm it holds, and ``SpatialNAM`` (whose BatchNorm
runs over pixels, not channels) passes channel pruning through untouched.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import NampruneError
from ..identity import classifier, example_input, remember_input, set_pruning_history
from ..nam.fold import refuse_folded
from ..nam.modules import ChannelNAM, SpatialNAM


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


def dependency_graph(model: nn.Module, inputs: torch.Tensor | None = None,
                     ignored: Iterable[str | nn.Module] = ()) -> tp.DependencyGraph:
    """Trace ``model`` into a torch-pruning DependencyGraph that knows the NAM layers.

    ``inputs`` (one batch) is remembered as the model's input size; ``ignored`` layers (by
    name or module) keep all their output channels, like the classifier always does.
    """
    refuse_folded(model, "prune")  # a folded gate's buffers are not channel layers torch-pruning knows
    if inputs is not None:
        remember_input(model, inputs)
    protected = layers_named(model, ignored)
    was_training = model.training
    spatial = [m for m in model.modules() if isinstance(m, SpatialNAM)]
    try:
        for m in spatial:
            m.traced_as_pass_through = True
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_input(model), customized_pruners=CUSTOM_PRUNERS, verbose=False)
    except Exception as exc:
        refusal = _unsupported(model, exc)
        if refusal is None:
            raise
        raise refusal from None
    finally:
        for m in spatial:
            m.traced_as_pass_through = False
        model.train(was_training)
    graph.namprune_ignored = protected
    return graph


def _unsupported(model: nn.Module, exc: Exception) -> NampruneError | None:
    """A failure inside torch-pruning's graph as one line naming the operator it could not
    follow (None for a failure elsewhere, e.g. in the model's own forward: that one says more
    as it is). A channel shuffle (ShuffleNet: view to (N, groups, C / groups, H, W), transpose,
    view back) is the known case: its reshape mapping divides by zero (torch-pruning 1.6)."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames or "torch_pruning" not in frames[-1].f_code.co_filename:
        return None
    node = next((v for f in reversed(frames) for v in f.f_locals.values() if isinstance(v, tp.dependency.Node)), None)
    grad_fn = getattr(node, "grad_fn", None)
    op = grad_fn.name().removesuffix("Backward0").removesuffix("Backward1").lower() if grad_fn is not None else "an"
    what = (f"a {op} that regroups the channels (a channel shuffle, as in ShuffleNet)"
            if "reshape" in frames[-1].f_code.co_name else f"its {op} operator")
    return NampruneError(f"namprune cannot prune {type(model).__name__}: torch-pruning cannot follow its channels through "
                         f"{what} ({type(exc).__name__} in torch-pruning's {frames[-1].f_code.co_name}); "
                         "train, evaluate and export it unpruned, or prune a model without that operator")


def replay_history(model: nn.Module, history: list) -> nn.Module:
    """Re-apply a saved pruning history to a freshly built model, in place.

    Each step is checked before it is applied: torch-pruning itself skips channel indices
    beyond a layer's width, so a history made for another model would otherwise "fit".
    """
    graph = dependency_graph(model)
    for name, is_out, idxs in history:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise NampruneError(f"the pruning history prunes {name!r}, a layer this {type(model).__name__} "
                                "does not have") from None
        pruner = graph.get_pruner_of_module(layer)
        if pruner is None:
            raise NampruneError(f"the pruning history prunes {name!r}, which is not a prunable layer here")
        prune_fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
        width = pruner.get_out_channels(layer) if is_out else pruner.get_in_channels(layer)
        if width is not None and idxs and (max(idxs) >= width or len(set(idxs)) >= width):
            raise NampruneError(f"the pruning history removes channel {max(idxs)} ({len(idxs)} in all) of {name!r}, "
                                f"which has {width} {'output' if is_out else 'input'} channels here")
        graph.get_pruning_group(layer, prune_fn, list(idxs)).prune(record_history=False)
    set_pruning_history(model, history)
    return model


def ignored_names(model: nn.Module, ignored: Iterable[str | nn.Module]) -> list[str]:
    """``ignored`` as module names (which survive a deep copy of the model), each checked."""
    names = {m: n for n, m in model.named_modules()}
    out = []
    for item in ignored or ():
        if isinstance(item, nn.Module):
            if item not in names:
                raise NampruneError(f"ignored holds a {type(item).__name__} that is not part of the model")
            out.append(names[item])
        else:
            layers_named(model, [item])
            out.append(item)
    return out


def layers_named(model: nn.Module, ignored: Iterable[str | nn.Module]) -> list[nn.Module]:
    """The modules ``ignored`` names (by module or by name in ``model.named_modules()``)."""
    found = []
    for item in ignored:
        if isinstance(item, nn.Module):
            found.append(item)
            continue
        try:
            found.append(model.get_submodule(item))
        except AttributeError:
            raise NampruneError(f"ignored names {item!r}, a layer this {type(model).__name__} does not have") from None
    return found


def prunable_groups(model: nn.Module, graph: tp.DependencyGraph, ignored: Iterable[str | nn.Module] = ()) -> Iterator:
    """Every group of coupled channels, each holding all of its channels; the outputs of the
    classifier and of the ``ignored`` layers (and of those the graph was built to ignore)
    are left out."""
    protected = layers_named(model, ignored) + list(getattr(graph, "namprune_ignored", []))
    try:
        protected.append(classifier(model))
    except NampruneError:
        if not protected:  # nothing found, nothing named
            raise
    return graph.get_all_groups(ignored_layers=protected, root_module_types=(nn.Conv2d, nn.Linear))


def channel_groups(group) -> int:
    """Into how many convolution groups a group's channels are split (1: none).

    A grouped convolution (``groups`` > 1, not depthwise) stays valid only if each of its
    groups loses the same channel positions; torch-pruning's ``MetaPruner`` does the same
    (``_get_channel_groups``). Several grouped layers in one group need a common multiple.
    """
    counts = [item.dep.target.module.groups for item in group
              if isinstance(item.dep.target.module, nn.Conv2d)
              and 1 < item.dep.target.module.groups < item.dep.target.module.out_channels]
    return math.lcm(*counts) if counts else 1


def grouped_indices(scores: torch.Tensor, n: int, groups: int) -> list[int]:
    """The ``n`` channels of lowest score to remove, as whole positions of ``groups`` equal
    convolution groups: each group loses the same positions (those of lowest mean score),
    ``n`` rounded to a multiple of ``groups``, at least one position kept."""
    if groups == 1:
        return torch.argsort(scores, stable=True)[:n].tolist()
    size = len(scores) // groups
    positions = min(size - 1, round(n / groups))
    order = torch.argsort(scores.view(groups, size).mean(0), stable=True)[:positions]
    return sorted((order[None, :] + size * torch.arange(groups)[:, None]).flatten().tolist())
