"""Pruning policy: how many channels each group loses, and which.

The ranking comes from ``saliency``; torch-pruning's DependencyGraph (``graph``) removes
the chosen channels together with every layer coupled to them. A group never loses more
than ``max_layer_ratio`` of its channels, which torch-pruning does not enforce inside one
global step, so the allocation here does it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .attach import remember_input
from .errors import NampruneError
from .graph import channel_groups, dependency_graph, grouped_indices, ignored_names
from .saliency import DEFAULT_NORMALIZATION, GroupSaliency, make_importance, score_groups

# --------------------------------------------------------------------------- policy

SCOPES = ("global", "local")


@dataclass
class PruneConfig:
    """How to prune: how much (ratio of channels, or fraction of MACs to keep), where to rank
    (globally or per layer), by what, and the limits that keep every layer usable."""

    ratio: float | None = 0.3
    target_macs: float | None = None
    scope: str = "global"
    importance: str = "nam"
    normalization: str = DEFAULT_NORMALIZATION
    round_to: int | None = None
    max_layer_ratio: float = 0.9
    seed: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if (self.ratio is None) == (self.target_macs is None):
            raise NampruneError("give exactly one of --ratio and --target-macs")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise NampruneError(f"--ratio must be in (0, 1) (the fraction of channels removed), got {self.ratio}")
        if self.target_macs is not None and not 0 < self.target_macs < 1:
            raise NampruneError(f"--target-macs must be in (0, 1) (the fraction of MACs kept), got {self.target_macs}")
        if not 0 < self.max_layer_ratio < 1:
            raise NampruneError(f"--max-layer-ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.scope not in SCOPES:
            raise NampruneError(f"unknown scope {self.scope!r}; choose global or local")
        if self.round_to is not None and self.round_to < 1:
            raise NampruneError(f"--round-to must be a positive channel count, got {self.round_to}")
        make_importance(self.importance, self.normalization)  # validates both names

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruneResult:
    ratio: float  # fraction of prunable channels actually removed
    channels_before: int
    channels_after: int
    layers: list[dict]  # name, before, after (output channels of every conv / linear layer)
    groups: list[GroupSaliency]  # the ranking the decision was made from


def allocate(saliencies: list[GroupSaliency], cfg: PruneConfig, ratio: float) -> list[int]:
    """How many channels to remove from each group.

    Global scope removes the lowest scores across all groups; local removes the same
    fraction of every group. Either way a group keeps at least ``ceil(width * (1 -
    max_layer_ratio))`` channels (and one), which torch-pruning does not enforce within
    a single global step, and ``round_to`` rounds what is kept to a multiple.
    """
    widths = [g.width for g in saliencies]
    floors = [_floor(w, cfg) for w in widths]
    if cfg.scope == "local":
        removed = [min(round(ratio * w), w - f) for w, f in zip(widths, floors)]
    else:
        target = round(ratio * sum(widths))
        owner = torch.cat([torch.full((w,), i) for i, w in enumerate(widths)])
        removed = [0] * len(widths)
        taken = 0
        for i in owner[_global_order(saliencies)].tolist():
            if taken == target:
                break
            if removed[i] < widths[i] - floors[i]:
                removed[i] += 1
                taken += 1
    if cfg.round_to:
        removed = [w - max(f, _round(w - r, cfg.round_to, w)) for w, f, r in zip(widths, floors, removed)]
    return removed


def _global_order(saliencies: list[GroupSaliency]) -> torch.Tensor:
    """All channels, lowest score first; equal scores are taken from every group in turn
    (by their relative rank inside the group) rather than emptying the first group."""
    scores = torch.cat([g.scores for g in saliencies])
    relative_rank = torch.cat([torch.argsort(torch.argsort(g.scores, stable=True)).float() / g.width for g in saliencies])
    by_rank = torch.argsort(relative_rank, stable=True)
    return by_rank[torch.argsort(scores[by_rank], stable=True)]


def _floor(width: int, cfg: PruneConfig) -> int:
    floor = max(1, math.ceil(width * (1 - cfg.max_layer_ratio)))
    if cfg.round_to:
        floor = min(width, -(-floor // cfg.round_to) * cfg.round_to)
    return floor


def _round(kept: int, multiple: int, width: int) -> int:
    return min(width, max(multiple, int(round(kept / multiple)) * multiple))


def layer_widths(model: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def prune_ratio(model: nn.Module, cfg: PruneConfig, ratio: float, ignored: list[str] = ()) -> PruneResult:
    """Remove ``ratio`` of the prunable channels of ``model`` in place, lowest saliency first
    (never the outputs of the classifier or of the ``ignored`` layers)."""
    before = layer_widths(model)
    graph = dependency_graph(model, ignored=ignored)
    ranked = score_groups(model, graph, make_importance(cfg.importance, cfg.normalization, cfg.seed))
    if not ranked:
        raise NampruneError("the model has no channel group that can be pruned")
    removed = allocate([s for _, s in ranked], cfg, ratio)
    was_training = model.training
    for i, ((group, saliency), n) in enumerate(zip(ranked, removed)):
        if n > 0:
            # a grouped convolution keeps equal groups: whole positions go from every group
            idxs = grouped_indices(saliency.scores, n, channel_groups(group))
            removed[i] = len(idxs)
            if idxs:
                graph.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs).prune()
    model.train(was_training)
    model.namprune_history = list(getattr(model, "namprune_history", [])) + [list(s) for s in graph.pruning_history()]
    after = layer_widths(model)
    total = sum(s.width for _, s in ranked)
    return PruneResult(sum(removed) / total, total, total - sum(removed),
                       [{"name": n, "before": before[n], "after": after[n]} for n in before],
                       [s for _, s in ranked])


def prune(model: nn.Module, cfg: PruneConfig, example_input: torch.Tensor | None = None,
          ignored: list = ()) -> PruneResult:
    """Prune in place by ``cfg.ratio``, or to keep ``cfg.target_macs`` of the MACs (within 2 % of them).

    ``model`` is any traceable ``nn.Module``; ``example_input`` (one batch it takes) is needed
    once for a model namprune did not build. The classifier (the last ``nn.Linear``) keeps
    its outputs, and so do the ``ignored`` layers (names or modules).
    """
    cfg.validate()
    if example_input is not None:
        remember_input(model, example_input)
    ignored = ignored_names(model, ignored)
    if cfg.target_macs is None:
        return prune_ratio(model, cfg, cfg.ratio, ignored)
    return prune_ratio(model, cfg, ratio_for_macs(model, cfg, ignored=ignored), ignored)


def ratio_for_macs(model: nn.Module, cfg: PruneConfig, tolerance: float = 0.02, steps: int = 20,
                   ignored: list[str] = ()) -> float:
    """Bisect the channel ratio whose pruned copy keeps ``cfg.target_macs`` of the MACs, to
    within ``tolerance`` of the unpruned MACs (one channel of a residual stream can weigh
    over 1 % of a small network's MACs, so a tolerance relative to the target could be
    unreachable).

    MACs fall monotonically as the ratio grows; each trial prunes a copy of the model.
    Raises when the target lies beyond what the layer floors allow.
    """
    from .measure import count_macs

    base = count_macs(model)
    target = cfg.target_macs

    def kept(ratio: float) -> float:
        trial = copy.deepcopy(model)
        prune_ratio(trial, cfg, ratio, ignored)
        return count_macs(trial) / base

    high = 0.999
    least = kept(high)
    if least > target + tolerance:
        raise NampruneError(f"--target-macs {target} cannot be reached: pruning as far as --max-layer-ratio "
                            f"{cfg.max_layer_ratio} allows keeps {least:.3f} of the MACs")
    low, best = 0.0, (high, least)
    for _ in range(steps):
        mid = (low + high) / 2
        fraction = kept(mid)
        if abs(fraction - target) < abs(best[1] - target):
            best = (mid, fraction)
        if abs(fraction - target) <= tolerance / 4:
            break
        low, high = (mid, high) if fraction > target else (low, mid)
    if abs(best[1] - target) > tolerance:
        hint = "; a smaller --round-to makes finer steps" if cfg.round_to and cfg.round_to > 1 else ""
        raise NampruneError(f"--target-macs {target} cannot be met within {tolerance:.0%} of the MACs: the closest "
                            f"keeps {best[1]:.3f} of them (the channel steps are too coarse{hint})")
    return best[0]
