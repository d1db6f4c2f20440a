"""What a model does on a few training images: the statistics that data-driven channel scores
and BatchNorm recalibration need.

* ``input_energy``: for every convolution and linear layer, how strongly each of its input
  channels drives it (variance of the input channel times the squared norm of the weights
  that read it), measured on calibration batches in eval mode.
* ``accumulate_gradients``: loss gradients summed over calibration batches (Taylor scores).
* ``recalibrate_batchnorm``: re-estimate every BatchNorm's running statistics after pruning,
  when they still describe the network before channels were removed.

Calibration batches come from any iterable of ``(images, labels)``; ``images`` bounds how
many are used.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import NampruneError
from ..settings import DEFAULT_IMAGES


def calibration_batches(loader: Iterable, images: int,
                        device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``images`` images from ``loader`` as ``(images, labels)`` batches on ``device``."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)  # the same images every time: scores are reproducible
    seen = 0
    for images_, labels in loader:
        if seen >= images:
            return
        take = min(len(images_), images - seen)
        seen += take
        yield images_[:take].to(device), labels[:take].to(device)
    if seen == 0:
        raise NampruneError("the calibration data is empty")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def weight_energy(layer: nn.Module) -> torch.Tensor:
    """Squared norm of the weights that read each input channel of a conv / linear layer."""
    w = layer.weight.detach().float()
    if isinstance(layer, nn.Linear):
        return w.pow(2).sum(0)
    groups = layer.groups
    per_group = w.view(groups, w.shape[0] // groups, w.shape[1], -1)  # (G, out/G, in/G, k*k)
    return per_group.pow(2).sum(dim=(1, 3)).flatten()  # input channel g * in/G + i


@torch.no_grad()
def input_energy(model: nn.Module, loader: Iterable, images: int = DEFAULT_IMAGES) -> dict[nn.Module, torch.Tensor]:
    """For every conv / linear layer, ``Var(x_c) * ||W[:, c]||^2`` per input channel ``c``.

    That is how much of the layer's output signal each input channel provides (assuming the
    channels are uncorrelated), measured in eval mode, so a NAM gate or anything else between
    the layers is seen as it acts at inference. Linear layers (usually the classifier, which no
    BatchNorm follows) count the mean too: ``E[x_c^2]`` instead of the variance.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    moments = {m: [0.0, 0.0, 0] for m in layers}  # sum, sum of squares, count per input channel

    def record(layer, inputs):
        x = inputs[0].detach().float()
        x = x.transpose(0, 1).reshape(x.shape[1], -1) if x.dim() == 4 else x.reshape(-1, x.shape[-1]).t()
        m = moments[layer]
        m[0] = m[0] + x.sum(1)
        m[1] = m[1] + x.pow(2).sum(1)
        m[2] += x.shape[1]

    hooks = [m.register_forward_pre_hook(record) for m in layers]
    was_training = model.training
    model.eval()
    try:
        for x, _ in calibration_batches(loader, images, _device(model)):
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    energy = {}
    for layer, (total, squares, count) in moments.items():
        if not count:
            continue  # not on the forward path
        mean, second = total / count, squares / count
        spread = second if isinstance(layer, nn.Linear) else (second - mean.pow(2)).clamp_min(0)
        energy[layer] = spread.cpu() * weight_energy(layer).cpu()
    return energy


def accumulate_gradients(model: nn.Module, loader: Iterable, images: int = DEFAULT_IMAGES) -> None:
    """Sum the cross-entropy gradients of ``images`` calibration images into ``.grad`` (eval
    mode, so running statistics stay as they are)."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for x, y in calibration_batches(loader, images, _device(model)):
                F.cross_entropy(model(x), y, reduction="sum").backward()
    finally:
        model.train(was_training)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Iterable, images: int = DEFAULT_IMAGES) -> int:
    """Re-estimate the running mean and variance of every BatchNorm (NAM's too) from
    ``images`` training images, as an equally weighted average over the batches. Returns the
    number of BatchNorms recalibrated. Weights do not change."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    try:
        for x, _ in calibration_batches(loader, images, _device(model)):
            model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)

