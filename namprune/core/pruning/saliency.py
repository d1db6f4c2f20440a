"""Which channels matter: a score for every channel of every prunable group, the pixel
saliency of every SpatialNAM, and how ready a model is to be pruned.

A *group* is a set of channels torch-pruning must remove together (a convolution's filters
plus the BatchNorm, NAM and input slices that depend on them; a whole residual stream).

The default, ``auto``, is ``nam`` for a model with NAM attention and ``l1`` for one without.
``nam`` asks what each channel carries into the network, in one unit
for groups of any width. For every layer ``L`` that reads channel ``c`` (a convolution or
the classifier), measured on calibration images in eval mode::

    e_c(L) = Var(x_c) * ||W_L[:, c]||^2          how much of L's input signal c provides
    f_c(L) = e_c(L) / sum_k e_k(L)                the same as a fraction of L's whole input
    score_c = sqrt( sum_L f_c(L) )                the RMS relative change removing c causes

``x_c`` is the channel as the reading layer sees it: after its BatchNorm, its ReLU and its NAM
gate (the learned normalized weights act there), summed over every block that writes a
residual stream. A channel the sparsity penalty silenced has ``Var(x_c) ~ 0``, and a wide
layer is no longer cheaper to cut merely for being wide. The other scores:

* ``nam-w``: NAM's normalized weight ``w = |gamma| / sum |gamma|`` of the group's NAM
  BatchNorms (the paper's ranking; plain-BatchNorm ``|gamma|`` where a group has none).
* ``slim``: ``|gamma|`` of every BatchNorm of the group (Network Slimming).
* ``l1``: L1 norm of the filters (Li et al., 2017), mean-normalized per group by default.
* ``taylor``: torch-pruning's first-order Taylor estimate ``|w * dL/dw|`` from the gradients
  of calibration images (Molchanov et al., 2019).
* ``random``: seeded random scores, the floor every ranking must beat.

``nam`` and ``taylor`` need calibration images (a few hundred training images).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

import torch
import torch.nn as nn
import torch_pruning as tp

from ..errors import NampruneError
from ..nam.attach import has_nam
from ..nam.modules import ChannelNAM, SpatialNAM
from ..settings import (DEFAULT_IMAGES, DEFAULT_IMPORTANCE, DEFAULT_NORMALIZATION, IMPORTANCE_REGISTRY,
                        resolve_importance, resolve_normalization)
from .calibrate import accumulate_gradients, input_energy
from .graph import dependency_graph, prunable_groups

# A channel whose score is below this fraction of the model's mean score counts as "near zero".
NEAR_ZERO = 0.05


def _normalizer(how: str):
    return None if how == "none" else how


class CarriedSignalImportance(tp.importance.Importance):
    """The ``nam`` score: ``sqrt(sum_L f_c(L))`` over the layers ``L`` that read the group's
    channels, from ``energy`` (``calibrate.input_energy``)."""

    READERS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)

    def __init__(self, energy: dict[nn.Module, torch.Tensor]):
        self.energy = energy

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        fractions = torch.zeros(len(group[0].idxs))
        read = False
        for item in group:
            layer, fn = item.dep.target.module, item.dep.handler
            if fn not in self.READERS or layer not in self.energy or None in item.root_idxs:
                continue
            if isinstance(layer, nn.Conv2d) and layer.groups == layer.in_channels > 1:
                continue  # a depthwise conv passes channel c on alone: its readers are counted instead
            energy = self.energy[layer]
            share = energy[item.idxs] / energy.sum().clamp_min(torch.finfo(energy.dtype).tiny)
            fractions.scatter_add_(0, torch.tensor(item.root_idxs), share)
            read = True
        return fractions.sqrt() if read else None


class NAMWeightImportance(tp.importance.GroupMagnitudeImportance):
    """The NAM paper's ranking: NAM's normalized weight ``w = |gamma| / sum |gamma|`` of a
    group's NAM BatchNorms (the |gamma| of its plain BatchNorms where it has no NAM); layer
    scores of one group are averaged, then normalized."""

    def __init__(self, normalization: str = "none"):
        super().__init__(p=1, group_reduction="mean", normalizer=_normalizer(normalization))

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        nam, plain = ([], []), ([], [])
        for item in group:
            layer, fn = item.dep.target.module, item.dep.handler
            if isinstance(layer, ChannelNAM):
                nam[0].append(layer.saliency()[item.idxs])
                nam[1].append(item.root_idxs)
            elif isinstance(layer, nn.modules.batchnorm._BatchNorm) and fn == tp.prune_batchnorm_out_channels and layer.affine:
                plain[0].append(layer.weight.detach().abs()[item.idxs])
                plain[1].append(item.root_idxs)
        scores, idxs = nam if nam[0] else plain
        if not scores:
            return None
        return self._normalize(self._reduce(scores, idxs), self.normalizer)


class SeededRandomImportance(tp.importance.Importance):
    """Random scores from a seeded generator: the floor every ranking must beat."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, group) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.generator)


# How each importance of settings.IMPORTANCE_REGISTRY is built: (normalization, seed, model,
# calibration, images) -> torch-pruning importance. The data-driven ones measure the model first.
BUILDERS = {
    "nam": lambda norm, seed, model, calib, images: CarriedSignalImportance(input_energy(model, calib, images)),
    "nam-w": lambda norm, seed, model, calib, images: NAMWeightImportance(norm),
    "slim": lambda norm, seed, model, calib, images: tp.importance.BNScaleImportance(normalizer=_normalizer(norm)),
    "l1": lambda norm, seed, model, calib, images: tp.importance.MagnitudeImportance(
        p=1, group_reduction="mean", normalizer=_normalizer(norm)),
    "taylor": lambda norm, seed, model, calib, images: _taylor(norm, model, calib, images),
    "random": lambda norm, seed, model, calib, images: SeededRandomImportance(seed),
}


def _taylor(normalization: str, model: nn.Module, calibration: Iterable, images: int) -> tp.importance.Importance:
    accumulate_gradients(model, calibration, images)
    return tp.importance.GroupTaylorImportance(normalizer=_normalizer(normalization))


def needs_data(name: str, model: nn.Module) -> bool:
    """Whether the importance ``name`` (``auto`` resolved for ``model``) reads calibration images."""
    return IMPORTANCE_REGISTRY[resolve_importance(name, has_nam(model))].needs_data


def make_importance(name: str = DEFAULT_IMPORTANCE, normalization: str = DEFAULT_NORMALIZATION, seed: int = 0,
                    model: nn.Module | None = None, calibration: Iterable | None = None,
                    images: int = DEFAULT_IMAGES) -> tp.importance.Importance:
    """The torch-pruning importance called ``name`` (``auto``: ``nam`` for a model with NAM,
    ``l1`` without); ``nam`` and ``taylor`` measure ``model`` on ``images`` images of
    ``calibration`` first. The result's ``namprune_name`` is the name resolved."""
    name = resolve_importance(name, model is not None and has_nam(model))
    normalization = resolve_normalization(name, normalization)
    if IMPORTANCE_REGISTRY[name].needs_data and (model is None or calibration is None):
        raise NampruneError(f"the {name} importance measures the model on calibration images: "
                            "pass training data (--data-dir for datasets that are not embedded)")
    importance = BUILDERS[name](normalization, seed, model, calibration, images)
    importance.namprune_name = name
    return importance


@dataclass
class GroupSaliency:
    """The saliency of one prunable group of channels."""

    name: str  # the group's first layer, e.g. "layers.0.0.conv1"
    layers: list[str]  # every layer whose output channels are these channels
    scores: torch.Tensor  # one per channel
    source: str  # what the scores were computed from

    @property
    def width(self) -> int:
        return len(self.scores)

    def near_zero(self, reference: float) -> float:
        """Fraction of channels whose score is under NEAR_ZERO x ``reference`` (the model's mean score)."""
        return float((self.scores < NEAR_ZERO * reference).float().mean())


def group_source(group, importance: tp.importance.Importance) -> str:
    """What a group's scores were computed from."""
    if isinstance(importance, NAMWeightImportance):
        return "nam-w" if any(isinstance(item.dep.target.module, ChannelNAM) for item in group) else "bn"
    return IMPORTANCE_REGISTRY[importance.namprune_name].source


OUT_HANDLERS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels)


def output_layers(group, names: dict[nn.Module, str]) -> list[str]:
    """Names of the convolutions / linear layers whose output channels the group removes."""
    return [names[item.dep.target.module] for item in group
            if isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear)) and item.dep.handler in OUT_HANDLERS]


def pixel_saliency(model: nn.Module) -> dict[str, torch.Tensor]:
    """Normalized lambda of every SpatialNAM as an (H, W) map, scaled so the mean pixel is 1."""
    return {name: m.saliency() * m.height * m.width for name, m in model.named_modules() if isinstance(m, SpatialNAM)}


def largest_safe_ratio(groups: list[GroupSaliency]) -> float:
    """The largest global pruning ratio that removes no group entirely (before any floor).

    Removing the k lowest scores empties a group once k reaches the global rank of that
    group's highest score, so the answer is (smallest such rank - 1) / total channels.
    """
    if not groups:
        return 0.0
    all_scores = torch.cat([g.scores for g in groups]).sort().values
    ranks = [int(torch.searchsorted(all_scores, g.scores.max(), right=False)) for g in groups]
    return min(ranks) / len(all_scores)


def score_groups(model: nn.Module, graph: tp.DependencyGraph, importance: tp.importance.Importance):
    """(torch-pruning group, its GroupSaliency) for every prunable group, in graph order."""
    names = {m: n for n, m in model.named_modules()}
    scored = []
    for group in prunable_groups(model, graph):
        scores = importance(group)
        if scores is None:  # nothing to judge the group by (no weighted layer reads or writes it)
            continue
        layers = output_layers(group, names)
        name = layers[0] if layers else names.get(group[0].dep.target.module, "?")
        scored.append((group, GroupSaliency(name, layers, scores.detach().float().cpu(), group_source(group, importance))))
    return scored


@dataclass
class Ranking:
    """A model's channel and pixel saliency, and how ready it is to be pruned."""

    importance: str
    normalization: str
    groups: list[GroupSaliency]
    pixels: dict[str, torch.Tensor]

    @property
    def channels(self) -> int:
        return sum(g.width for g in self.groups)

    @cached_property
    def reference(self) -> float:
        """The mean score over every channel of the model: "near zero" is relative to it, so a
        group whose scale factors all collapsed counts as near zero as a whole."""
        return max(float(torch.cat([g.scores for g in self.groups]).mean()), 1e-12) if self.groups else 1.0

    def near_zero(self) -> float:
        return sum(g.near_zero(self.reference) * g.width for g in self.groups) / max(1, self.channels)

    def largest_safe_ratio(self) -> float:
        return largest_safe_ratio(self.groups)

    def lowest(self, k: int) -> list[tuple[str, int, float]]:
        """The k channels ranked lowest globally: (group, channel index, score)."""
        entries = [(g.name, i, float(s)) for g in self.groups for i, s in enumerate(g.scores)]
        return sorted(entries, key=lambda e: e[2])[:k]

    def to_dict(self) -> dict:
        return {
            "importance": self.importance, "normalization": self.normalization, "channels": self.channels,
            "near_zero": round(self.near_zero(), 4), "near_zero_threshold": NEAR_ZERO,
            "largest_safe_ratio": round(self.largest_safe_ratio(), 4),
            "groups": [{"name": g.name, "layers": g.layers, "width": g.width, "source": g.source,
                        "near_zero": round(g.near_zero(self.reference), 4), "median": round(float(g.scores.median()), 6),
                        "scores": [round(float(v), 6) for v in g.scores]}
                       for g in self.groups],
            "pixels": {name: [[round(float(v), 6) for v in row] for row in m] for name, m in self.pixels.items()},
        }


def rank_model(model: nn.Module, importance: str = DEFAULT_IMPORTANCE, normalization: str = DEFAULT_NORMALIZATION,
               seed: int = 0, calibration: Iterable | None = None, images: int = DEFAULT_IMAGES) -> Ranking:
    """Rank every channel group and every SpatialNAM's pixels of ``model``."""
    scorer = make_importance(importance, normalization, seed, model, calibration, images)
    scored = score_groups(model, dependency_graph(model), scorer)
    return Ranking(scorer.namprune_name, resolve_normalization(scorer.namprune_name, normalization),
                   [s for _, s in scored], pixel_saliency(model))


__all__ = ["BUILDERS", "CarriedSignalImportance", "GroupSaliency", "NAMWeightImportance",
           "Ranking", "largest_safe_ratio", "make_importance", "needs_data", "pixel_saliency", "rank_model", "score_groups"]
