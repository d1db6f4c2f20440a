"""Pictures (PNG, matplotlib's Agg canvas, written atomically):

* ``plot_ranking``: the sparsity-readiness view of ``namprune rank``: the distribution of
  saliency (relative to the model's mean score) in every channel group, the near-zero
  share of each, and a heatmap of normalized lambda for every SpatialNAM;
* ``plot_layer_widths``: each layer's width before and after pruning, for one or more runs;
* ``plot_pareto``: top-1 against MACs and against measured latency, the Pareto front marked
  (latencies flagged untrusted drawn hollow, off the front).

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas rather than
through pyplot, so plotting never touches a user's interactive backend or global state.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.errors import NampruneError
from ..core.pruning.saliency import NEAR_ZERO, Ranking
from ..core.store.files import write_atomic

DPI = 110
MAPS_PER_ROW = 8
LOG_FLOOR = 1e-4  # scores below this are drawn at it on log axes (log 0 is off the chart)
BASE_COLOR, POINT_COLOR, FRONT_COLOR = "#444444", "#7a9cc6", "#d1495b"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _layer_ticks(ax, names: list[str], max_labels: int = 70) -> None:
    """One tick label per layer, vertical; past ``max_labels`` layers every k-th is labelled
    so the labels stay legible."""
    step = max(1, math.ceil(len(names) / max_labels))
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_xlim(-0.7, len(names) - 0.3)


def _natural(name: str) -> list:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _two_lines(name: str, width: int = 16) -> str:
    """A long dotted module name broken at the dot nearest its middle."""
    dots = [i for i, ch in enumerate(name) if ch == "."]
    if len(name) <= width or not dots:
        return name
    cut = min(dots, key=lambda i: abs(i - len(name) / 2))
    return name[:cut] + "\n" + name[cut:]


def _width_for(n: int) -> float:
    """Figure width (inches) that leaves room for ``n`` vertical tick labels."""
    return min(30.0, max(10.0, 0.18 * n + 2))


# --------------------------------------------------------------------------- rank

def plot_ranking(ranking: Ranking, path: str | os.PathLike, title: str = "") -> Path:
    """Channel saliency per group (and the pixel maps, when the model has SpatialNAMs) to ``path``."""
    return save_png(ranking_figure(ranking, title), path)


def ranking_figure(ranking: Ranking, title: str = "") -> Figure:
    """The figure ``plot_ranking`` writes. Pixel maps of one value are left out with a note:
    drawn, they are one flat colour that says nothing a number would not."""
    if not ranking.groups:
        raise NampruneError("the model has no channel group to plot")
    pixels, flat = varying_maps(ranking.pixels)
    rows = math.ceil(len(pixels) / MAPS_PER_ROW) if pixels else 0
    fig = _figure(_width_for(len(ranking.groups)), 7.5 + 1.6 * rows)
    fig.suptitle(title or f"channel saliency ({ranking.importance} importance, normalization {ranking.normalization})", fontsize=12)
    if pixels:
        top, bottom = fig.subfigures(2, 1, height_ratios=[7.5, 1.6 * rows + 0.6])
        _channel_panels(top, ranking)
        _pixel_maps(bottom, pixels, flat)
    else:
        _channel_panels(fig, ranking)
        if flat:
            fig.supxlabel(_flat_note(flat, len(ranking.pixels)), fontsize=8)
    return fig


def varying_maps(pixels: dict) -> tuple[dict, list[str]]:
    """The pixel maps worth drawing, and the names of those that are one value (to a colour
    step of the shared scale: its 256 levels)."""
    if not pixels:
        return {}, []
    step = _pixel_scale(pixels) / 256
    flat = [name for name, m in pixels.items() if float(m.max() - m.min()) < step]
    return {name: m for name, m in pixels.items() if name not in flat}, flat


def _flat_note(flat: list[str], total: int) -> str:
    names = ", ".join(name.removesuffix(".spatial") for name in flat[:6]) + (", ..." if len(flat) > 6 else "")
    return f"{len(flat)} of {total} pixel maps left out: one value each, no pixel stands out ({names})"


def _pixel_scale(pixels: dict) -> float:
    # At least 2, so an average pixel (1) sits mid-scale and a uniform map does not look saturated.
    return max(2.0, max(float(m.max()) for m in pixels.values()))


def _channel_panels(fig, ranking: Ranking) -> None:
    groups = sorted(ranking.groups, key=lambda g: _natural(g.name))  # model order, not the graph's
    names = [g.name + (f" (+{len(g.layers) - 1})" if len(g.layers) > 1 else "") for g in groups]
    dist, share = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    # Relative to the model's mean score, so the near-zero line means the same for every normalization.
    reference = ranking.reference
    values = [np.clip((g.scores / reference).numpy(), LOG_FLOOR, None) for g in groups]
    dist.boxplot(values, positions=range(len(values)), widths=0.6, whis=(0, 100), showfliers=False,
                 medianprops={"color": FRONT_COLOR})
    jitter = np.random.default_rng(0)
    for i, v in enumerate(values):
        dist.scatter(i + jitter.uniform(-0.2, 0.2, len(v)), v, s=4, alpha=0.35, color=POINT_COLOR, linewidths=0)
    dist.set_yscale("log")
    dist.set_ylim(*score_limits(values))
    dist.axhline(NEAR_ZERO, color=FRONT_COLOR, linestyle="--", linewidth=1,
                 label=f"near zero (< {NEAR_ZERO:g} x the model's mean)")
    dist.axhline(1.0, color=BASE_COLOR, linestyle=":", linewidth=1, label="model mean")
    dist.set_ylabel(f"score / model mean (log; < {LOG_FLOOR:g} drawn at {LOG_FLOOR:g})")
    dist.set_title(f"saliency per channel group: {ranking.channels} channels, {len(names)} groups, "
                   f"{ranking.near_zero():.0%} near zero", fontsize=10)
    dist.legend(loc="upper center", ncols=2, fontsize=8)
    dist.grid(axis="y", alpha=0.3)
    share.bar(range(len(names)), [100 * g.near_zero(reference) for g in groups], color=FRONT_COLOR, alpha=0.8)
    share.set_ylim(0, 100)
    share.set_ylabel("near zero (%)")
    share.set_xlabel("channel group (its first layer; +N: other layers sharing its channels)")
    share.grid(axis="y", alpha=0.3)
    _layer_ticks(share, names)


def score_limits(values: list[np.ndarray]) -> tuple[float, float]:
    """Log-axis limits that fit the scores: from half the smallest (or of the near-zero line,
    when every score is above it, so the line stays in view) to three times the largest (or
    the model mean), the headroom above the dots holding the legend."""
    low = min(float(v.min()) for v in values)
    high = max(float(v.max()) for v in values)
    return min(low, NEAR_ZERO) / 2, max(high, 1.0) * 3


def _pixel_maps(fig, pixels: dict, flat: list[str]) -> None:
    rows = math.ceil(len(pixels) / MAPS_PER_ROW)
    cols = math.ceil(len(pixels) / rows)  # rows as full as possible, no near-empty last row
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    top = _pixel_scale(pixels)
    image = None
    for ax, (name, m) in zip(axes, pixels.items()):
        image = ax.imshow(m.numpy(), cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
        ax.set_title(_two_lines(name.removesuffix(".spatial")), fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[len(pixels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes.tolist(), label="normalized lambda x H*W\n(1 = average pixel)", shrink=0.8, aspect=25)
    heading = "pixel saliency of every SpatialNAM"
    fig.suptitle(heading + (f"\n{_flat_note(flat, len(pixels) + len(flat))}" if flat else ""), fontsize=10)
    fig.supxlabel("feature-map column (pixels)", fontsize=8)
    fig.supylabel("feature-map row (pixels)", fontsize=8)


# --------------------------------------------------------------------------- layer widths

def plot_layer_widths(layers_by_run: dict[str, list[dict]], path: str | os.PathLike, title: str = "") -> Path:
    """Width of every layer before pruning (bars) and after it (one line per run)."""
    if not layers_by_run:
        raise NampruneError("no pruned run to draw layer widths for")
    first = next(iter(layers_by_run.values()))
    names = [layer["name"] for layer in first]
    for run, layers in layers_by_run.items():
        if [(l["name"], l["before"]) for l in layers] != [(l["name"], l["before"]) for l in first]:
            raise NampruneError(f"{run} was pruned from a different model than the other runs; plot them separately")
    fig = _figure(_width_for(len(names)), 5.5)
    ax = fig.subplots()
    x = np.arange(len(names))
    ax.bar(x, [layer["before"] for layer in first], width=0.8, color="#d9d9d9", label="before pruning")
    markers = "osD^v<>"
    for i, (run, layers) in enumerate(layers_by_run.items()):
        ax.plot(x, [layer["after"] for layer in layers], marker=markers[i % len(markers)], markersize=3.5,
                linewidth=1.2, label=f"after: {run}")
    ax.set_title(title or "output channels of every layer, before and after pruning", fontsize=11)
    ax.set_ylabel("output channels")
    ax.set_xlabel("layer (convolutions and the classifier, in model order)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _layer_ticks(ax, names)
    return save_png(fig, path)


# --------------------------------------------------------------------------- Pareto

def plot_pareto(result: dict, fronts: dict[str, list[bool]], path: str | os.PathLike, title: str = "") -> Path:
    """Top-1 against MACs and against the measured latency at each batch, one panel each, the
    Pareto front drawn as a line through its points and the base as a star."""
    return save_png(pareto_figure(result, fronts, title), path)


def pareto_figure(result: dict, fronts: dict[str, list[bool]], title: str = "") -> Figure:
    """The figure ``plot_pareto`` writes. A latency flagged untrusted is drawn hollow and no
    front goes through it (``comparison.fronts`` leaves it off): a noisy time must not look
    like a result."""
    rows = result["runs"]
    batches = result["settings"]["batches"]
    panels = [("macs", "MACs per image (millions)", "against MACs (counted)", [r["macs"] / 1e6 for r in rows],
               [True] * len(rows))]
    panels += [(f"latency_b{b}", f"measured latency at batch {b} (ms, median)", f"against latency, batch {b} (measured)",
                [r["latency"][str(b)]["median_ms"] for r in rows],
                [r["latency"][str(b)].get("trusted", True) for r in rows]) for b in batches]
    fig = _figure(5.2 * len(panels), 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    top1 = [r["top1"] for r in rows]
    base = next(i for i, r in enumerate(rows) if r["base"])
    for ax, (key, label, heading, cost, trusted) in zip(axes, panels):
        untrusted = trusted.count(False)
        ax.set_title(heading + (f"\n{untrusted} of {len(rows)} latencies untrusted (hollow, off the front)"
                                if untrusted else ""), fontsize=10)
        on = fronts[key]
        plain = [i for i in range(len(rows)) if not on[i] and trusted[i]]
        ax.scatter([cost[i] for i in plain], [top1[i] for i in plain], color=POINT_COLOR, s=30, label="dominated",
                   zorder=2)
        hollow = [i for i in range(len(rows)) if not trusted[i]]
        if hollow:
            ax.scatter([cost[i] for i in hollow], [top1[i] for i in hollow], facecolors="none", edgecolors=POINT_COLOR,
                       s=30, label="latency untrusted (no front through it)", zorder=2)
        front = sorted((c, t) for c, t, f, ok in zip(cost, top1, on, trusted) if f and ok)
        if front:
            ax.plot(*zip(*front), color=FRONT_COLOR, marker="o", markersize=6, linewidth=1.5, drawstyle="steps-post",
                    label="Pareto front", zorder=3)
        ax.scatter([cost[base]], [top1[base]], marker="*", s=180, label="base (unpruned)", zorder=4,
                   **({"color": BASE_COLOR} if trusted[base] else {"facecolors": "none", "edgecolors": BASE_COLOR}))
        _label_points(ax, cost, top1, [r["name"] for r in rows])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.1)
    axes[0].set_ylabel("top-1 accuracy (%)")
    handles = {}
    for ax in axes:  # every kind of mark once, whichever panel has it
        for handle, text in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(text, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    s = result["settings"]
    fig.suptitle(title or "accuracy against cost", fontsize=12)
    fig.supxlabel(f"latency on {s['device']}, {s['threads']} thread(s), torch {s['torch']}; up and left is better",
                  fontsize=8)
    return fig


def _label_points(ax, xs, ys, names) -> None:
    """Name every point; neighbours along x are labelled alternately above and below, so
    points close together do not write over each other."""
    for k, i in enumerate(sorted(range(len(xs)), key=lambda i: xs[i])):
        above = k % 2 == 0
        ax.annotate(names[i], (xs[i], ys[i]), textcoords="offset points", xytext=(5, 5 if above else -6),
                    va="bottom" if above else "top", fontsize=7, color=BASE_COLOR)


__all__ = ["pareto_figure", "plot_layer_widths", "plot_pareto", "plot_ranking", "ranking_figure", "save_png",
           "score_limits", "varying_maps"]
