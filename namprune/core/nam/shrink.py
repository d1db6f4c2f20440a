"""Planned shrinking: an L1 penalty on the channels a prune will remove, and on no others.

A uniform penalty on every scale factor makes the low channels small, but it pulls on the
channels that stay just as hard, and the unpruned model pays for it (1e-3 on every
BatchNorm cost a 12-epoch CIFAR-10 ResNet-20 2.2 points). Planned shrinking asks, at the
start of every epoch from ``shrink_start`` of the run on, which channels ``prune`` would
remove to keep ``shrink_macs`` of the MACs (the same ranking, allocation and widths), and
pulls the BatchNorm scale and shift of exactly those channels towards zero. The rest of
the network trains as it would without a penalty and learns to do without them, so the
prune that follows removes channels that already carry (almost) nothing.

The strength is set from the schedule: SGD with momentum m moves a parameter under a
constant gradient g by about ``lr * g / (1 - m)`` a step, so ``strength = SHRINK_TRAVEL
* (1 - m) / sum(lr over the steps left)`` lets a scale factor travel ``SHRINK_TRAVEL``
before the run ends, whatever the dataset size or number of epochs.
"""

from __future__ import annotations

import gc
from typing import Iterable

import torch
import torch.nn as nn

from ..errors import NampruneError
from ..identity import knows_input, remember_input
from ..pruning.graph import dependency_graph
from ..pruning.prune import plan_removal
from ..settings import DEFAULT_SCOPE, PruneConfig, TrainConfig
from .modules import ChannelNAM

SHRINK_TRAVEL = 2.0  # trained scale factors are 0.1-1 and shifts within +-0.5: room to reach zero


class PlannedShrink:
    """``penalty()`` -> ``strength * sum |gamma| + |beta|`` over the BatchNorm channels that
    a prune to ``target_macs`` would remove now."""

    def __init__(self, model: nn.Module, target_macs: float, strength: float, calibration: Iterable | None,
                 scope: str = DEFAULT_SCOPE):
        self.strength = float(strength)
        self.targets: list[tuple[nn.Module, torch.Tensor]] = []
        if model is None:  # off()
            return
        if calibration is not None and not knows_input(model):  # a model namprune did not build
            remember_input(model, _first_images(calibration)[:1])
        was_training = model.training
        model.eval()
        try:
            plan, _, _, _, _ = plan_removal(model, PruneConfig(target_macs=target_macs, scope=scope, recalibrate=False), calibration)
        finally:
            model.train(was_training)
        self.targets = _batchnorm_channels(model, plan)
        # torch-pruning's graphs are reference cycles that hold traced tensors; planned every
        # epoch, they pile up faster than Python's cycle collector runs on its own
        del plan
        gc.collect()

    @classmethod
    def off(cls) -> "PlannedShrink":
        """A shrinking that pulls on nothing (planning was not possible)."""
        return cls(None, 0.0, 0.0, None)

    @property
    def channels(self) -> int:
        return sum(len(idxs) for _, idxs in self.targets)

    @property
    def active(self) -> bool:
        return self.strength > 0 and bool(self.targets)

    def __call__(self) -> torch.Tensor | None:
        if not self.active:
            return None
        picked = [p[idxs] for bn, idxs in self.targets for p in (bn.weight, bn.bias)]
        return self.strength * torch.cat(picked).abs().sum()


def _first_images(calibration: Iterable) -> torch.Tensor:
    try:
        images, _ = next(iter(calibration))
    except (StopIteration, TypeError, ValueError):
        raise NampruneError("the training data gave no (images, labels) batch to plan with") from None
    return images


def _batchnorm_channels(model: nn.Module, plan) -> list[tuple[nn.Module, torch.Tensor]]:
    """Every affine BatchNorm in the plan's groups (NAM's channel BatchNorms included) with the
    indices of its channels that go."""
    graph = dependency_graph(model)
    device = next(model.parameters()).device
    targets, seen = [], set()
    for (name, handler), idxs in zip(plan.roots, plan.removed):
        if not idxs:
            continue
        for dep, layer_idxs in graph.get_pruning_group(model.get_submodule(name), handler, idxs):
            layer = dep.target.module
            if isinstance(layer, ChannelNAM):  # its weights are normalized over the channels: the removed ones
                layer = layer.bn               # must hold none of the sum, or the others' gates change
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.affine and id(layer) not in seen:
                seen.add(id(layer))
                targets.append((layer, torch.tensor([int(i) for i in layer_idxs], device=device)))
    return targets


def shrink_strength(cfg: TrainConfig, steps_per_epoch: int, first_epoch: int, lr_factor) -> float:
    """The strength that lets a targeted scale factor travel ``SHRINK_TRAVEL`` from
    ``first_epoch`` to the end of the run under ``cfg``'s schedule."""
    steps = range(first_epoch * steps_per_epoch, cfg.epochs * steps_per_epoch)
    lr_sum = sum(cfg.lr * lr_factor(cfg, step / steps_per_epoch) for step in steps)
    inertia = 1 - cfg.momentum if cfg.optimizer == "sgd" else 1.0
    return SHRINK_TRAVEL * inertia / max(lr_sum, 1e-12)


def shrink_start_epoch(cfg: TrainConfig) -> int:
    return min(cfg.epochs - 1, int(round(cfg.shrink_start * cfg.epochs)))
