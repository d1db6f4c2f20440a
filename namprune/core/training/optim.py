"""The optimizer and the learning-rate schedule a ``TrainConfig`` asks for.

The BatchNorm and NAM scale factors (and shifts) take weight decay like every other
parameter unless ``bn_weight_decay`` is off: then a sparsity penalty alone decides which of
them shrink (the NAM recipes train so).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..settings import TrainConfig

# One-cycle shape (Smith & Topin, 2018): the share of the run spent rising, and how far below
# the peak the learning rate starts and ends.
ONECYCLE_RISE = 0.3
ONECYCLE_START_DIV, ONECYCLE_END_DIV = 25.0, 1e4


def lr_factor(cfg: TrainConfig, t: float) -> float:
    """Learning-rate multiplier after ``t`` epochs (fractional: the schedule moves every step).

    ``onecycle`` rises from 1/25 of the peak to the peak over the first 30 % of the run and
    falls to nearly zero, both halves along a cosine; ``multistep`` multiplies by ``lr_decay``
    at each milestone; ``cosine`` falls along a cosine after ``warmup_epochs`` of linear warmup.
    """
    if cfg.schedule == "onecycle":
        rise = ONECYCLE_RISE * cfg.epochs
        low, high, end = 1 / ONECYCLE_START_DIV, 1.0, 1 / (ONECYCLE_START_DIV * ONECYCLE_END_DIV)
        if t < rise:
            return _cosine_between(low, high, t / rise)
        return _cosine_between(high, end, (t - rise) / (cfg.epochs - rise))
    if t < cfg.warmup_epochs:
        return (t + 1 / ONECYCLE_START_DIV) / (cfg.warmup_epochs + 1 / ONECYCLE_START_DIV)
    if cfg.schedule == "multistep":
        milestones = cfg.milestones or [round(cfg.epochs * f) for f in (0.3, 0.6, 0.8)]
        return cfg.lr_decay ** sum(t >= m for m in milestones)
    if cfg.schedule == "cosine":
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - cfg.warmup_epochs) / span)))
    return 1.0


def _cosine_between(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every BatchNorm (NAM's included): the scale factors the sparsity
    penalty acts on and their shifts, which weight decay leaves alone when ``bn_weight_decay`` is off."""
    return [p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters(recurse=False)]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on gamma fights an L1 penalty (5e-4 * gamma outweighs a 1e-4 pull once
    # |gamma| > 0.2): a run that wants the penalty alone to decide turns bn_weight_decay off.
    params = [p for p in model.parameters() if p.requires_grad]
    exempt = set() if cfg.bn_weight_decay else {id(p) for p in scale_parameters(model)}
    groups = [{"params": [p for p in params if id(p) not in exempt], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)
