"""Which channels matter: per-channel saliency of every prunable group, per-pixel saliency of
every SpatialNAM, and how ready a model is to be pruned.

A *group* is a set of channels torch-pruning must remove together (a convolution's
filters plus the BatchNorm, NAM and input slices that depend on them; a whole residual
stream). A group's saliency comes from NAM's normalized weight ``w = |gamma| / sum |gamma|``
of its NAM BatchNorm(s) where it has any, else from the ``|gamma|`` of its plain BatchNorms
(Network Slimming); the scores of several layers of one group are averaged.

Global ranking compares channels of layers of different width, and the normalization
decides how: ``none`` compares the scores as they are, ``mean`` divides each group's by
their mean, ``sum`` by their sum, ``max`` by their largest. Within a group all rank alike.
``auto`` (the default) picks the one measured best for the importance (BENCHMARKS.md,
"Ranking normalization"): ``none`` for ``nam`` and ``slim``, ``sum`` for ``l1``.
Dividing NAM's or Network Slimming's scores by a group's own statistics hides that the
sparsity penalty drove a whole layer toward zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn as nn
import torch_pruning as tp

from .errors import NampruneError
from .graph import dependency_graph, prunable_groups
from .nam import ChannelNAM, SpatialNAM

NORMALIZATIONS = ("auto", "none", "mean", "sum", "max")
DEFAULT_NORMALIZATION = "auto"
# What "auto" means for each importance: the normalization measured best for it
# (BENCHMARKS.md, "Ranking normalization").
AUTO_NORMALIZATION = {"nam": "none", "slim": "none", "l1": "sum", "random": "none"}
IMPORTANCES = ("nam", "slim", "l1", "random")
# A channel whose score is below this fraction of the model's mean score counts as "near zero".
NEAR_ZERO = 0.05


def resolve_normalization(importance: str, normalization: str) -> str:
    """The normalization ``auto`` stands for with this importance; any other name as is."""
    if normalization not in NORMALIZATIONS:
        raise NampruneError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    return AUTO_NORMALIZATION.get(importance, "none") if normalization == "auto" else normalization


def _normalizer(how: str):
    return None if how == "none" else how


class NAMImportance(tp.importance.GroupMagnitudeImportance):
    """torch-pruning importance from NAM's normalized weight ``w = |gamma| / sum |gamma|`` of a
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


def make_importance(name: str = "nam", normalization: str = DEFAULT_NORMALIZATION, seed: int = 0) -> tp.importance.Importance:
    """``nam``: NAM's normalized weight; ``slim``: |gamma| of every BatchNorm; ``l1``: filter L1 norm; ``random``."""
    if name not in IMPORTANCES:
        raise NampruneError(f"unknown importance {name!r}; choose one of {', '.join(IMPORTANCES)}")
    normalization = resolve_normalization(name, normalization)
    if name == "nam":
        return NAMImportance(normalization)
    if name == "slim":
        return tp.importance.BNScaleImportance(normalizer=_normalizer(normalization))
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1, group_reduction="mean", normalizer=_normalizer(normalization))
    return SeededRandomImportance(seed)


@dataclass
class GroupSaliency:
    """The saliency of one prunable group of channels."""

    name: str  # the group's first layer, e.g. "layers.0.0.conv1"
    layers: list[str]  # every layer whose output channels are these channels
    scores: torch.Tensor  # one per channel, normalized
    source: str  # "nam" or "bn" (or the importance name for l1 / random)

    @property
    def width(self) -> int:
        return len(self.scores)

    def near_zero(self, reference: float) -> float:
        """Fraction of channels whose score is under NEAR_ZERO x ``reference`` (the model's mean score)."""
        return float((self.scores < NEAR_ZERO * reference).float().mean())


def group_source(group, importance: tp.importance.Importance) -> str:
    """What a group's scores were computed from: nam, bn, l1 or random."""
    if isinstance(importance, NAMImportance):
        return "nam" if any(isinstance(item.dep.target.module, ChannelNAM) for item in group) else "bn"
    return {tp.importance.BNScaleImportance: "bn", SeededRandomImportance: "random"}.get(type(importance), "l1")


def output_layers(group, names: dict[nn.Module, str]) -> list[str]:
    """Names of the convolutions / linear layers whose output channels the group removes."""
    return [names[item.dep.target.module] for item in group
            if isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
            and item.dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels,
                                     tp.prune_depthwise_conv_out_channels)]


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
        if scores is None:  # no layer with weights to judge by
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
                        "near_zero": round(g.near_zero(self.reference), 4), "scores": [round(float(v), 6) for v in g.scores]}
                       for g in self.groups],
            "pixels": {name: [[round(float(v), 6) for v in row] for row in m] for name, m in self.pixels.items()},
        }


def rank_model(model: nn.Module, importance: str = "nam", normalization: str = DEFAULT_NORMALIZATION, seed: int = 0) -> Ranking:
    """Rank every channel group and every SpatialNAM's pixels of ``model``."""
    scored = score_groups(model, dependency_graph(model), make_importance(importance, normalization, seed))
    return Ranking(importance, resolve_normalization(importance, normalization), [s for _, s in scored],
                   pixel_saliency(model))


__all__ = ["IMPORTANCES", "NORMALIZATIONS", "GroupSaliency", "NAMImportance", "Ranking", "largest_safe_ratio",
           "make_importance", "pixel_saliency", "rank_model", "score_groups"]
