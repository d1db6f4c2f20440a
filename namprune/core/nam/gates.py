"""What each NAM gate does on real images, and the gates that do nothing removed for inference.

A NAM branch multiplies its input by a gate, ``x * sigmoid(a * x + b)`` once folded. With
NAM's weights ``w ~ 1/C`` the logits stay small and the gate close to a constant: on the
demo's ResNet-20 every gate reads 0.500 +- 0.001. Such a gate costs three passes over the
activations and does nothing a constant factor would not.

``measure_gates`` runs calibration images through the model and records, per gate, its
*constant* (the mean gate of each channel for a channel branch, one number for a spatial
branch), its *spread* (the standard deviation of the gate around that constant, relative
to it; for a channel gate the largest over its channels) and its *max deviation* (the
largest ``|gate - constant| / constant`` seen). The spread decides: unlike the largest
deviation it does not grow with the number of calibration images.

``remove_constant_gates`` replaces each folded gate whose spread is at most the tolerance
(``ExportSettings.gate_tolerance``; why its default ``settings.GATE_TOLERANCE`` is 3 % is said
there): its constant is folded into the BatchNorm that feeds the NAM (``gamma`` and ``beta``
scaled, exact for a constant), and a gate kept before it in the same NAM takes the scale back
in its ``a`` (``sigmoid(a/m * (m x) + b)`` is the same gate). The module becomes an
``nn.Identity`` and leaves the exported graph. Where no BatchNorm can take the constant
(the NAM's input has other readers, or the model cannot be traced), a ``ConstantScale``
(one multiply) takes the gate's place. A spatial constant is a single number: a per-pixel
map cannot fold into a per-channel BatchNorm, so a spatial gate is removable only when it
is flat across pixels too.

A small spread is necessary, not sufficient: the small changes of many gates add up, and a
model whose logits are close together (barely trained) changes its mind. ``fold_for_export``
therefore removes a gate only when the model without it (and without the gates removed
before it) still agrees with the unfolded model: the same top-1 on ``GATE_AGREEMENT`` of the
calibration and test images and logits within ``GATE_LOGIT_TOLERANCE``. Every other gate is
folded and kept, which is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

from ..settings import GATE_AGREEMENT, GATE_LOGIT_TOLERANCE
from .fold import FoldedChannelNAM, FoldedNAM, fold_nam
from .modules import NAM, ChannelNAM, SpatialNAM


@dataclass
class GateStat:
    """One gate measured on calibration images."""

    name: str  # the NAM branch's module path
    kind: str  # channel | spatial
    size: str  # channels, or HxW pixels
    constant: torch.Tensor  # (C,) for a channel gate, a 0-d tensor for a spatial one
    low: float  # smallest gate value seen
    high: float  # largest gate value seen
    spread: float  # std / mean of the gate per constant (the largest over a channel gate's channels)
    max_deviation: float  # max |gate - constant| / constant: the largest change the constant makes
    images: int

    @property
    def mean(self) -> float:
        return float(self.constant.mean())

    def removable(self, tolerance: float) -> bool:
        return self.spread <= tolerance

    def to_dict(self, tolerance: float | None = None) -> dict:
        out = {"name": self.name, "kind": self.kind, "size": self.size, "mean": round(self.mean, 6),
               "min": round(self.low, 6), "max": round(self.high, 6), "spread": round(self.spread, 6),
               "max_deviation": round(self.max_deviation, 6), "images": self.images}
        return out if tolerance is None else {**out, "removed": self.removable(tolerance)}


def has_gates(model: nn.Module) -> bool:
    return any(isinstance(m, (ChannelNAM, SpatialNAM, FoldedNAM)) for m in model.modules())


class _GateRecorder:
    """Per constant (a channel, or the whole map): running min, max, sum and sum of squares."""

    def __init__(self, gate: FoldedNAM):
        self.gate, self.count = gate, 0
        self.low = self.high = self.sum = self.squares = None

    def __call__(self, module, inputs, output) -> None:
        g = module.logits(inputs[0]).sigmoid()
        # a channel gate: one constant per channel (reduce over batch and pixels); spatial: one in all
        g = g.transpose(0, 1).flatten(1) if isinstance(module, FoldedChannelNAM) else g.reshape(1, -1)
        low, high, total, squares = g.amin(1), g.amax(1), g.double().sum(1), g.double().square().sum(1)
        if self.count:
            low, high = torch.minimum(self.low, low), torch.maximum(self.high, high)
            total, squares = self.sum + total, self.squares + squares
        self.low, self.high, self.sum, self.squares = low, high, total, squares
        self.count += g.shape[1]

    def stat(self, name: str, images: int) -> GateStat:
        mean = self.sum / self.count
        std = (self.squares / self.count - mean.square()).clamp_min(0).sqrt()
        deviation = torch.maximum(self.high - mean, mean - self.low) / mean
        channel = isinstance(self.gate, FoldedChannelNAM)
        size = str(self.gate.a.numel()) if channel else "x".join(map(str, self.gate.a.shape[-2:]))
        constant = mean.float() if channel else mean[0].float()
        return GateStat(name, self.gate.kind, size, constant, float(self.low.min()), float(self.high.max()),
                        float((std / mean).max()), float(deviation.max()), images)


@torch.no_grad()
def measure_gates(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> list[GateStat]:
    """Every NAM gate of ``model`` (folded or not) measured on ``images`` (normalized, NCHW)."""
    folded = fold_nam(model)  # a copy; the folded gate is the eval-mode gate, exactly
    recorders = {name: _GateRecorder(m) for name, m in folded.named_modules() if isinstance(m, FoldedNAM)}
    handles = [folded.get_submodule(name).register_forward_hook(r) for name, r in recorders.items()]
    try:
        for batch in images.split(batch_size):
            folded(batch)
    finally:
        for handle in handles:
            handle.remove()
    return [r.stat(name, len(images)) for name, r in recorders.items() if r.count]


class ConstantScale(nn.Module):
    """``x * scale``: a gate replaced by its constant where no BatchNorm could take it."""

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.view(-1, 1, 1) if scale.dim() else scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _GateTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, FoldedNAM) or super().is_leaf_module(m, qualname)


def _chains(model: nn.Module) -> list[tuple[str | None, list[str]]]:
    """Runs of folded gates applied one after the other, each with the BatchNorm feeding the
    run when that BatchNorm's output is read by the run alone (else None)."""
    gates = [name for name, m in model.named_modules() if isinstance(m, FoldedNAM)]
    try:
        graph = _GateTracer().trace(model)
    except Exception:  # a model fx cannot trace: every gate on its own, no BatchNorm to fold into
        return [(None, [name]) for name in gates]
    modules = dict(model.named_modules())
    chains: list[tuple[str | None, list[str]]] = []
    last_gate: dict[fx.Node, int] = {}  # a gate node -> its chain
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), FoldedNAM):
            continue
        source = node.args[0]
        if source in last_gate and len(source.users) == 1:
            index = last_gate.pop(source)
            chains[index][1].append(node.target)
        else:
            bn = modules.get(source.target) if isinstance(source, fx.Node) and source.op == "call_module" else None
            foldable = isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.affine and len(source.users) == 1
            chains.append((source.target if foldable else None, [node.target]))
            index = len(chains) - 1
        last_gate[node] = index
    return chains


def _absorbs(gate: nn.Module, scale: torch.Tensor) -> bool:
    """Can a kept gate take an input scaled by ``scale`` back into its ``a``?"""
    return isinstance(gate, FoldedChannelNAM) or scale.dim() == 0


@torch.no_grad()
def remove_constant_gates(model: nn.Module, stats: list[GateStat], tolerance: float) -> list[str]:
    """Replace, in place, every folded gate of ``model`` whose spread is at most ``tolerance``
    by its constant; returns the names of the gates removed."""
    constants = {s.name: s.constant for s in stats if s.removable(tolerance)}
    removed = []
    for bn_name, names in _chains(model):
        bn = model.get_submodule(bn_name) if bn_name else None
        kept: list[FoldedNAM] = []
        for name in names:
            gate = model.get_submodule(name)
            if name not in constants:
                kept.append(gate)
                continue
            scale = constants[name].to(gate.a.dtype)
            if bn is not None and all(_absorbs(k, scale) for k in kept):
                for k in kept:  # (C,) by (C,) or by a number, (1, H, W) by a number
                    k.a.div_(scale)
                bn.weight.mul_(scale)
                bn.bias.mul_(scale)
                replacement = nn.Identity()
            else:
                replacement = ConstantScale(scale)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, replacement)
            removed.append(name)
    _drop_empty_nams(model)
    return removed


def _drop_empty_nams(model: nn.Module) -> None:
    """A NAM whose branches are all gone becomes one identity (eager mode calls one module, not three)."""
    for name, m in list(model.named_modules()):
        if name and isinstance(m, NAM) and all(isinstance(branch, nn.Identity) for branch in m):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, nn.Identity())


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([model(batch) for batch in images.split(batch_size)])


def agreement(reference: torch.Tensor, logits: torch.Tensor) -> dict:
    """How far ``logits`` are from ``reference``: images with the same top-1, and the largest
    difference relative to the largest reference logit."""
    agree = int((reference.argmax(1) == logits.argmax(1)).sum())
    rel = float((reference - logits).abs().max() / reference.abs().max().clamp_min(1e-12))
    return {"images": len(reference), "top1_agree": agree, "max_rel_diff": rel}


def _keeps_predictions(found: dict) -> bool:
    return found["top1_agree"] >= GATE_AGREEMENT * found["images"] and found["max_rel_diff"] <= GATE_LOGIT_TOLERANCE


def _without(model: nn.Module, stats: list[GateStat], tolerance: float) -> nn.Module:
    folded = fold_nam(model)
    remove_constant_gates(folded, stats, tolerance)
    return folded


def checked_removal(model: nn.Module, stats: list[GateStat], tolerance: float,
                    images: torch.Tensor) -> tuple[nn.Module, list[str], dict]:
    """``model`` folded with the constant gates removed that keep its predictions on ``images``:
    all of them when together they pass, else one at a time, most constant first, each kept
    removed only if the model without it and the ones before still passes. Returns the model,
    the names removed and the agreement of that model with ``model`` on ``images``."""
    reference = _logits(model, images)
    candidates = sorted((s for s in stats if s.removable(tolerance)), key=lambda s: s.spread)
    folded = _without(model, candidates, tolerance)
    found = agreement(reference, _logits(folded, images))
    if candidates and not _keeps_predictions(found):
        chosen: list[GateStat] = []
        folded = fold_nam(model)  # every gate kept: exact
        found = agreement(reference, _logits(folded, images))
        for stat in candidates:  # greedy: each removal is judged with the earlier ones in place
            trial = _without(model, [*chosen, stat], tolerance)
            trial_found = agreement(reference, _logits(trial, images))
            if _keeps_predictions(trial_found):
                chosen, folded, found = [*chosen, stat], trial, trial_found
        candidates = chosen
    return folded, [s.name for s in candidates], found


def fold_for_export(model: nn.Module, images: torch.Tensor | None, tolerance: float,
                    check_images: torch.Tensor | None = None, remove: bool = True) -> tuple[nn.Module, dict | None]:
    """``model`` folded (a copy) with the constant gates removed that keep its predictions on
    ``images`` (calibration) and ``check_images`` (test), and the ``nam_gates`` record (None
    for a model without NAM). Without calibration images, or with ``remove=False``, every
    gate stays and the folded model is exact."""
    folded = fold_nam(model)
    if not has_gates(model):
        return folded, None
    if images is None or not remove:
        total = sum(isinstance(m, FoldedNAM) for m in folded.modules())
        note = "no calibration images (give --data-dir): every gate kept" if remove else "--keep-gates: every gate kept"
        return folded, {"total": total, "removed": 0, "tolerance": tolerance, "calibration_images": 0,
                        "mode": "remove" if remove else "keep", "note": note}
    stats = measure_gates(model, images)
    checked = images if check_images is None else torch.cat([images, check_images])
    folded, removed, found = checked_removal(model, stats, tolerance, checked)
    candidates = sum(s.removable(tolerance) for s in stats)
    return folded, {"total": len(stats), "removed": len(removed), "tolerance": tolerance,
                    "calibration_images": len(images), "mode": "remove",
                    "check": {**found, "test_images": 0 if check_images is None else len(check_images),
                              "required_agreement": GATE_AGREEMENT, "logit_tolerance": GATE_LOGIT_TOLERANCE,
                              "candidates": candidates, "refused": candidates - len(removed)},
                    "gates": [{**s.to_dict(), "removed": s.name in removed} for s in stats]}


__all__ = ["ConstantScale", "GateStat", "agreement", "checked_removal", "fold_for_export", "has_gates",
           "measure_gates", "remove_constant_gates"]
