"""Pruning policy: how many channels each group loses, and which.

The scores come from ``saliency``; torch-pruning's DependencyGraph (``graph``) removes the
chosen channels together with every layer coupled to them. Three ways to say how much:

* ``ratio``: remove that fraction of all prunable channels, lowest scores first.
* ``target_macs``: keep that fraction of the MACs. Channels are taken in order of squared
  score over the square root of the MACs their removal saves (``cost.channel_macs``), so a
  target neither empties the costly layers first nor spares them for being costly; the
  plan is checked by counting the MACs of a pruned copy, and corrected in a few direct
  steps when the first-order estimate missed.
* ``target_latency``: keep that fraction of the measured latency on the deployment runtime
  (onnxruntime by default). What a channel costs is measured group by group
  (``latency_cost``), channels are taken in the same order with time in place of MACs, and
  the pruned copy is timed to correct the budget the same way.

A group never loses more than ``max_layer_ratio`` of its channels (torch-pruning does not
enforce that inside one global step), and ``round_to`` keeps widths at a multiple.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..console import note
from ..deploy.onnx import ExportError
from ..errors import NampruneError
from ..identity import pruning_history, remember_input, set_pruning_history
from ..nam.attach import has_nam
from ..settings import IMPORTANCE_REGISTRY, MACS_TOLERANCE, PruneConfig
from .calibrate import recalibrate_batchnorm
from .cost import channel_macs, count_macs
from .graph import channel_groups, dependency_graph, grouped_indices, ignored_names
from .latency_cost import LATENCY_TOLERANCE, LatencyComparison, LatencyMeter, group_costs
from .saliency import GroupSaliency, make_importance, score_groups

ROUND_TO_CANDIDATES = (1, 4, 8, 16)


@dataclass
class PruneResult:
    ratio: float  # fraction of prunable channels actually removed
    channels_before: int
    channels_after: int
    layers: list[dict]  # name, before, after (output channels of every conv / linear layer)
    groups: list[GroupSaliency]  # the ranking the decision was made from
    recalibrated: int = 0  # BatchNorms whose statistics were re-estimated
    latency: dict | None = None  # with --target-latency: what was measured and how
    rounding: dict | None = None  # with --round-to auto: every multiple tried, its latency, the one chosen
    config: PruneConfig | None = None  # the config as applied: importance, cost exponent and round_to resolved
    uncalibrated: dict | None = None  # what ``before_recalibration`` returned


@dataclass
class Plan:
    """Which channels of which group go: replayable on the model or on a copy of it."""

    roots: list[tuple[str, object]]  # (root layer name, torch-pruning handler) of every group
    removed: list[list[int]]  # channel indices removed from each group

    def apply(self, model: nn.Module) -> nn.Module:
        graph = dependency_graph(model)
        was_training = model.training
        for (name, handler), idxs in zip(self.roots, self.removed):
            if idxs:
                graph.get_pruning_group(model.get_submodule(name), handler, idxs).prune()
        model.train(was_training)
        set_pruning_history(model, pruning_history(model) + graph.pruning_history())
        return model


# --------------------------------------------------------------------------- how many per group


def _floor(width: int, cfg: PruneConfig) -> int:
    floor = max(1, math.ceil(width * (1 - cfg.max_layer_ratio)))
    if cfg.round_to:
        floor = min(width, -(-floor // cfg.round_to) * cfg.round_to)
    return floor


def _round(kept: int, multiple: int, width: int) -> int:
    return min(width, max(multiple, int(round(kept / multiple)) * multiple))


def _rounded(removed: list[int], widths: list[int], floors: list[int], cfg: PruneConfig) -> list[int]:
    if not cfg.round_to:
        return removed
    return [w - max(f, _round(w - r, cfg.round_to, w)) for w, f, r in zip(widths, floors, removed)]


def allocate_ratio(groups: list[GroupSaliency], cfg: PruneConfig, ratio: float) -> list[int]:
    """How many channels each group loses to remove ``ratio`` of all channels.

    Global scope removes the lowest scores across all groups; local removes the same
    fraction of every group. Either way no group goes below its floor.
    """
    widths = [g.width for g in groups]
    floors = [_floor(w, cfg) for w in widths]
    if cfg.scope == "local":
        return _rounded([min(round(ratio * w), w - f) for w, f in zip(widths, floors)], widths, floors, cfg)
    if cfg.scope == "blocks":
        return _take_in_blocks(groups, floors, [1.0] * len(groups), cfg, round(ratio * sum(widths)))
    return _rounded(_take_in_order(groups, floors, torch.cat([g.scores for g in groups]), round(ratio * sum(widths))),
                    widths, floors, cfg)


def allocate_macs(groups: list[GroupSaliency], costs: list[float], cfg: PruneConfig, macs_to_remove: float) -> list[int]:
    """How many channels each group loses to save ``macs_to_remove`` (MACs, or a latency
    fraction: ``costs`` are in the same unit, first-order, per channel of each group).

    Channels go in order of ``score^2 / cost^q``, ``q = cfg.cost_exponent`` (``cfg`` resolved:
    ``PruneConfig.resolved``). Scores are magnitudes whose squares add up over removed
    channels; ``q = 1`` is the exact greedy trade-off, ``q = 0`` a ranking by score alone. Each
    importance has its own default (``settings.IMPORTANCE_REGISTRY``): 0.5 for the NAM scores,
    which on sparse-trained models kept more than the greedy ratio right after pruning
    (BENCHMARKS.md, "Allocation"), and 0 for ``l1``, which after fine-tuning plain CIFAR-10
    models ended higher that way (BENCHMARKS.md, "CIFAR-10: namprune against torch-pruning
    alone")."""
    widths = [g.width for g in groups]
    floors = [_floor(w, cfg) for w in widths]
    if cfg.scope == "local":
        fraction = min(1.0, macs_to_remove / max(sum(c * w for c, w in zip(costs, widths)), 1e-12))
        # the MACs of a layer fall with the product of its input and output widths
        ratio = 1 - math.sqrt(1 - fraction)
        return _rounded([min(round(ratio * w), w - f) for w, f in zip(widths, floors)], widths, floors, cfg)
    if cfg.scope == "blocks":
        return _take_in_blocks(groups, floors, costs, cfg, macs_to_remove)
    keys = torch.cat([g.scores.pow(2) / max(c, 1e-12) ** cfg.cost_exponent for g, c in zip(groups, costs)])
    channel_cost = torch.cat([torch.full((g.width,), float(c)) for g, c in zip(groups, costs)])
    order = _global_order(groups, keys)
    saved = torch.cumsum(channel_cost[order], 0)
    count = int(torch.searchsorted(saved, torch.tensor(float(macs_to_remove)))) + 1
    return _rounded(_take_in_order(groups, floors, keys, count), widths, floors, cfg)


def _take_in_order(groups: list[GroupSaliency], floors: list[int], keys: torch.Tensor, count: int) -> list[int]:
    """Remove ``count`` channels, lowest ``keys`` first, skipping groups at their floor."""
    widths = [g.width for g in groups]
    owner = torch.cat([torch.full((w,), i) for i, w in enumerate(widths)])
    removed, taken = [0] * len(groups), 0
    for i in owner[_global_order(groups, keys)].tolist():
        if taken >= count:
            break
        if removed[i] < widths[i] - floors[i]:
            removed[i] += 1
            taken += 1
    return removed


def _take_in_blocks(groups: list[GroupSaliency], floors: list[int], costs: list[float], cfg: PruneConfig,
                    to_remove: float) -> list[int]:
    """Remove a multiple of ``cfg.round_to`` channels at a time until their ``costs`` add up to
    ``to_remove``: always from the group whose weakest remaining channel is weakest relative to
    the mean of that group's remaining channels (squared, over ``cost^q`` as in
    ``allocate_macs``), its widths stepping down one multiple each time.

    Unlike one global cut, this re-weighs a group after each step on the channels it still
    has, so a group whose channels all carry signal (on a plainly trained model, a residual
    stream read by every block) keeps its width while groups with a weak tail give it up. It
    arrives at the widths of torch-pruning's stepped global pruning; measured, it bought no
    accuracy after fine-tuning (BENCHMARKS.md, "Allocation in blocks, and shrinking later").
    """
    multiple = cfg.round_to if isinstance(cfg.round_to, int) and cfg.round_to > 1 else 1
    remaining = [torch.sort(g.scores).values for g in groups]
    removed, saved = [0] * len(groups), 0.0

    def next_block(i: int) -> tuple[float, int] | None:
        kept = groups[i].width - removed[i]
        step = kept - (kept - 1) // multiple * multiple  # down to the next multiple below
        if kept - step < floors[i]:
            return None
        left = remaining[i][removed[i]:]
        weakest = float(left[0] / left.mean().clamp_min(1e-12))
        return weakest ** 2 / max(costs[i], 1e-12) ** (cfg.cost_exponent or 0.0), step

    while saved < to_remove:
        options = [(block[0], i, block[1]) for i in range(len(groups)) if (block := next_block(i))]
        if not options:
            break
        _, i, step = min(options)
        removed[i] += step
        saved += step * costs[i]
    return removed


def _global_order(groups: list[GroupSaliency], keys: torch.Tensor) -> torch.Tensor:
    """All channels, lowest key first; equal keys are taken from every group in turn (by
    their relative rank inside the group) rather than emptying the first group."""
    relative_rank = torch.cat([torch.argsort(torch.argsort(g.scores, stable=True)).float() / g.width for g in groups])
    by_rank = torch.argsort(relative_rank, stable=True)
    return by_rank[torch.argsort(keys[by_rank], stable=True)]


# --------------------------------------------------------------------------- pruning


def layer_widths(model: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _plan(model: nn.Module, ranked: list, removed: list[int]) -> Plan:
    """The lowest-scored channels of each group; a grouped convolution keeps equal groups, so
    whole positions go from every one of its groups."""
    names = {m: n for n, m in model.named_modules()}
    roots = [(names[group[0].dep.target.module], group[0].dep.handler) for group, _ in ranked]
    chosen = [grouped_indices(s.scores, n, channel_groups(group)) for (group, s), n in zip(ranked, removed)]
    return Plan(roots, chosen)


def prune(model: nn.Module, cfg: PruneConfig, calibration: Iterable | None = None,
          example_input: torch.Tensor | None = None, ignored: list = (),
          before_recalibration: Callable[[nn.Module], dict] | None = None,
          recalibration: Iterable | None = None) -> PruneResult:
    """Prune ``model`` in place by ``cfg.ratio``, to keep ``cfg.target_macs`` of its MACs
    (within ``MACS_TOLERANCE`` of them), or to keep ``cfg.target_latency`` of its latency
    measured on ``cfg.latency_runtime`` (within ``LATENCY_TOLERANCE``; ``result.latency``
    records what was timed and whether the target was met), then re-estimate BatchNorm
    statistics (unless ``cfg.recalibrate`` is off).

    Widths stay multiples of ``cfg.round_to`` (halved while its steps are too coarse to meet
    the target); with ``round_to="auto"`` a copy is pruned at each multiple of
    ``ROUND_TO_CANDIDATES``, the copies are timed side by side, and the fastest multiple is
    kept. ``result.rounding`` records either.

    ``calibration`` is an iterable of training ``(images, labels)`` batches (a DataLoader or
    namprune's loader): data-driven scores and the recalibration read ``cfg.calibration_images``
    images of it. Without it, only scores that need no data can be used and nothing is
    recalibrated. ``recalibration``, when given, is what BatchNorm is re-estimated on instead:
    namprune's commands pass training batches augmented as in training (``DataBundle.recalibration``),
    which describe a network trained on them better than unaugmented images do.

    ``model`` is any traceable ``nn.Module``; ``example_input`` (one batch it takes) is needed
    once for a model namprune did not build. The classifier (the last ``nn.Linear``) keeps
    its outputs, and so do the ``ignored`` layers (names or modules).

    ``before_recalibration`` is called with the pruned model before its BatchNorm statistics
    are re-estimated (to measure it then: ``result.uncalibrated`` holds what it returns).
    """
    if example_input is not None:
        remember_input(model, example_input)
    before = layer_widths(model)
    plan, ranked, cfg, latency, rounding = plan_removal(model, cfg, calibration, ignored)
    if rounding and "asked" in rounding:
        note(f"[yellow]note:[/] widths in multiples of {cfg.round_to}: multiples of {rounding['asked']} cannot keep "
             f"{cfg.target_macs} of the MACs within {MACS_TOLERANCE:.0%}")
    plan.apply(model)
    groups = [s for _, s in ranked]
    removed = [len(idxs) for idxs in plan.removed]
    uncalibrated = before_recalibration(model) if before_recalibration else None
    recalibration = calibration if recalibration is None else recalibration
    recalibrated = recalibrate_batchnorm(model, recalibration, cfg.calibration_images) \
        if cfg.recalibrate and recalibration is not None else 0
    after = layer_widths(model)
    total = sum(g.width for g in groups)
    return PruneResult(sum(removed) / total, total, total - sum(removed),
                       [{"name": n, "before": before[n], "after": after[n]} for n in before], groups, recalibrated,
                       latency, rounding, cfg, uncalibrated)


def plan_removal(model: nn.Module, cfg: PruneConfig, calibration: Iterable | None = None, ignored: list = ()):
    """What ``prune`` would remove, without removing it: the ``Plan``, the ranked groups, the
    config with ``importance``, ``cost_exponent`` and ``round_to`` resolved, and the latency and
    rounding records."""
    graph = dependency_graph(model, ignored=ignored_names(model, ignored))
    cfg = cfg.resolved(has_nam(model))
    if IMPORTANCE_REGISTRY[cfg.importance].needs_data and calibration is None:
        raise NampruneError(f"the {cfg.importance} importance measures the model on calibration images: pass "
                            "calibration= (training batches, e.g. your DataLoader), or choose another --importance")
    scorer = make_importance(cfg.importance, cfg.normalization, cfg.seed, model, calibration, cfg.calibration_images)
    ranked = score_groups(model, graph, scorer)
    if not ranked:
        raise NampruneError("the model has no channel group that can be pruned")
    rounding = None
    if cfg.round_to == "auto":
        cfg, rounding = _fastest_rounding(model, ranked, cfg)
    removed, latency, cfg, rounding = _removal_in_finer_steps(model, ranked, cfg, rounding)
    return _plan(model, ranked, removed), ranked, cfg, latency, rounding


class CoarseSteps(NampruneError):
    """A MACs target that the steps of the channel multiple cannot meet within the tolerance."""


def _removal_in_finer_steps(model: nn.Module, ranked: list, cfg: PruneConfig, rounding: dict | None):
    """``_removal`` at ``cfg.round_to``, or at the largest of its halves whose steps can meet the
    MACs target: multiples of 8 (the default) are too coarse a step for the thin layers of a
    small network. Returns the removal, the latency record, the config and the rounding record."""
    asked = cfg.round_to
    while True:
        try:
            removed, latency = _removal(model, ranked, cfg)
            break
        except CoarseSteps:
            if not isinstance(cfg.round_to, int) or cfg.round_to <= 1:
                raise
            cfg = cfg.with_(round_to=cfg.round_to // 2)
    if cfg.round_to != asked:
        rounding = {**(rounding or {}), "asked": asked, "chosen": cfg.round_to}
    return removed, latency, cfg, rounding


def _removal(model: nn.Module, ranked: list, cfg: PruneConfig) -> tuple[list[int], dict | None]:
    """Channels to remove per group for ``cfg``'s amount, and the latency record of a latency target."""
    if cfg.target_macs is not None:
        return _removal_for_macs(model, ranked, cfg), None
    if cfg.target_latency is not None:
        return _removal_for_latency(model, ranked, cfg)
    return allocate_ratio([s for _, s in ranked], cfg, cfg.ratio), None


def _fastest_rounding(model: nn.Module, ranked: list, cfg: PruneConfig) -> tuple[PruneConfig, dict]:
    """``--round-to auto``: prune a copy with every multiple of ``ROUND_TO_CANDIDATES`` that
    can meet the amount, time the copies side by side on ``cfg``'s runtime, and keep the
    multiple that ran fastest (the smallest of those within ``LATENCY_TOLERANCE`` of it:
    finer steps keep the ranking's choice closer)."""
    copies = {}
    for multiple in ROUND_TO_CANDIDATES:
        candidate = cfg.with_(round_to=multiple)
        try:
            removed, _ = _removal(model, ranked, candidate)
        except ExportError:  # a failed export is no answer about this multiple
            raise
        except NampruneError:  # this multiple's steps cannot meet the target
            continue
        copies[multiple] = _plan(model, ranked, removed).apply(copy.deepcopy(model))
    meter = LatencyMeter.of(cfg)
    ms, trusted = meter.compare(copies)
    fastest = min(ms.values())
    chosen = min(m for m, t in ms.items() if t <= fastest * (1 + LATENCY_TOLERANCE))
    return cfg.with_(round_to=chosen), {**meter.describe(), "ms": ms, "chosen": chosen, "trusted": trusted}


def _removal_for_budget(model: nn.Module, ranked: list, cfg: PruneConfig, costs: list[float], measure,
                        goal: float, base: float, tolerance: float, attempts: int = 6,
                        bisections: int = 12, at_most: bool = False) -> tuple[list[int], float, float]:
    """Channels to remove per group so that a pruned copy measures ``goal`` (MACs or ms).

    ``costs`` are first-order: what one channel of each group saves at the present widths.
    They overstate what removing channels of two coupled layers saves, so the budget handed
    to the allocation is corrected by what ``measure`` gives for a pruned copy, a secant step
    at a time, then by bisection between the closest budgets on either side of the goal.
    Returns the closest removal (``at_most``: the closest at or under ``goal`` when one is
    within ``tolerance``), its measure, and that of removing everything the floors allow (to
    tell an unreachable target from a coarse one).
    """
    groups = [s for _, s in ranked]

    def miss(value: float) -> tuple[int, float]:
        """How far ``value`` is from the goal, as a sort key: within the tolerance first (with
        ``at_most``, those at or under the goal before those over it), then the distance."""
        distance = abs(value - goal)
        over = at_most and value > goal * (1 + 1e-9)
        return (2 if distance > tolerance else int(over)), distance

    def good_enough(key: tuple[int, float]) -> bool:
        return key[0] == 0 and key[1] <= tolerance / 4

    def kept(budget: float) -> tuple[list[int], float]:
        removed = allocate_macs(groups, costs, cfg, budget)
        return removed, measure(_plan(model, ranked, removed).apply(copy.deepcopy(model)))

    everything = sum(c * g.width for c, g in zip(costs, groups))  # first order counts a conv in two groups
    budget = base - goal
    tried, step = [], 0.0
    for _ in range(attempts):
        removed, value = kept(budget)
        tried.append((miss(value), budget, removed, value))
        if good_enough(tried[-1][0]):
            break
        if len(tried) > 1 and tried[-1][3] != tried[-2][3]:  # secant through the last two attempts
            (_, b0, _, v0), (_, b1, _, v1) = tried[-2], tried[-1]
            budget = b1 + (goal - v1) * (b1 - b0) / (v1 - v0)
            step = 0.0
        else:  # the first correction; then, across a flat stretch of the budget -> value curve, further each time
            step = value - goal if len(tried) == 1 else math.copysign(max(2 * abs(step), tolerance / 2), value - goal)
            budget += step
        budget = min(max(budget, 0.0), everything)
    for _ in range(bisections):  # the secant can jump over a step of the budget -> value curve
        if good_enough(min(t[0] for t in tried)):
            break
        low = max((t[1] for t in tried if t[3] > goal), default=None)  # removed too little
        high = min((t[1] for t in tried if t[3] < goal), default=None)  # removed too much
        if low is None or high is None or high - low <= 1e-9 * max(everything, 1e-12):
            break
        budget = (low + high) / 2
        removed, value = kept(budget)
        tried.append((miss(value), budget, removed, value))
    _, _, removed, value = min(tried, key=lambda t: t[0])
    least = kept(everything)[1] if abs(value - goal) > tolerance else value
    return removed, value, least


def _removal_for_macs(model: nn.Module, ranked: list, cfg: PruneConfig) -> list[int]:
    """Channels to remove per group so that a pruned copy keeps ``cfg.target_macs`` of the MACs."""
    base = count_macs(model)
    goal, tolerance = cfg.target_macs * base, MACS_TOLERANCE * base
    # In blocks a larger budget only ever removes more, so the plan can be held at or under the
    # target; a global cut rounds every group to its nearest multiple and jumps around it, and
    # holding it under made it fall back to finer, slower multiples (BENCHMARKS.md, "Allocation
    # in blocks, and shrinking later").
    removed, macs, least = _removal_for_budget(model, ranked, cfg, channel_macs(model, [g for g, _ in ranked]),
                                               count_macs, goal, base, tolerance, at_most=cfg.scope == "blocks")
    if abs(macs - goal) > tolerance:
        if least > goal + tolerance:
            raise NampruneError(f"--target-macs {cfg.target_macs} cannot be reached: pruning as far as "
                                f"--max-layer-ratio {cfg.max_layer_ratio} allows keeps {least / base:.3f} of the MACs")
        hint = "; a smaller --round-to makes finer steps" if cfg.round_to and cfg.round_to > 1 else ""
        raise CoarseSteps(f"--target-macs {cfg.target_macs} cannot be met within {MACS_TOLERANCE:.0%} of the MACs: "
                            f"the closest keeps {macs / base:.3f} of them (the channel steps are too coarse{hint})")
    return removed


def _removal_for_latency(model: nn.Module, ranked: list, cfg: PruneConfig) -> tuple[list[int], dict]:
    """Channels to remove per group so that a pruned copy keeps ``cfg.target_latency`` of the
    latency, timed side by side with the model, and the record of what was measured. A target
    missed by more than ``LATENCY_TOLERANCE`` is still pruned to the closest measured point;
    the record says by how much and why."""
    meter = LatencyMeter.of(cfg)
    kept = LatencyComparison(meter, model)

    def prune_copy(copy_: nn.Module, index: int, count: int) -> nn.Module:
        return _plan(model, ranked, [count if i == index else 0 for i in range(len(ranked))]).apply(copy_)

    macs_costs = channel_macs(model, [g for g, _ in ranked])
    costs = group_costs(model, [s for _, s in ranked], prune_copy, kept, macs_costs)
    removed, _, least = _removal_for_budget(model, ranked, cfg, costs, kept, cfg.target_latency, 1.0,
                                            LATENCY_TOLERANCE, bisections=3)  # every step is timed
    kept(_plan(model, ranked, removed).apply(copy.deepcopy(model)))  # the record is of the plan chosen
    record = {**meter.describe(), "target": cfg.target_latency, **kept.last, "tolerance": LATENCY_TOLERANCE}
    record["met"] = abs(record["kept"] - cfg.target_latency) <= LATENCY_TOLERANCE
    if not record["met"]:
        record["missed_by"] = round(record["kept"] - cfg.target_latency, 4)
        record["why"] = (f"pruning as far as --max-layer-ratio {cfg.max_layer_ratio} allows keeps {least:.2f} of it"
                         if least > cfg.target_latency + LATENCY_TOLERANCE
                         else "the timings or the channel steps are too coarse for it")
    return removed, record


__all__ = ["Plan", "PruneResult", "allocate_macs", "allocate_ratio",
           "layer_widths", "prune"]

