"""The sparsity penalty ``p * sum|gamma| + p * sum|lambda|`` that makes scale factors
usable as a pruning signal.

``targets="nam"`` penalises NAM's scale factors only (gamma of the channel branch, lambda of
the pixel branch: the NAM paper); ``targets="bn"`` those of the network's own BatchNorms
(Network Slimming, Liu et al. 2017); ``targets="all"`` both. The penalty is
returned as a tensor to add to the loss, so autograd, AMP loss scaling and DDP gradient
averaging all treat it like the task loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import NampruneError
from ..settings import DEFAULT_STRENGTH, DEFAULT_TARGETS, SPARSITY_TARGETS
from .modules import ChannelNAM, SpatialNAM


def penalized_parameters(model: nn.Module, targets: str = DEFAULT_TARGETS) -> list[nn.Parameter]:
    """The scale factors the penalty applies to."""
    if targets not in SPARSITY_TARGETS:
        raise NampruneError(f"unknown sparsity targets {targets!r}; choose one of {', '.join(SPARSITY_TARGETS)}")
    nam_norms = {id(m.bn) for m in model.modules() if isinstance(m, (ChannelNAM, SpatialNAM))}
    return [m.weight for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
            and (targets == "all" or (id(m) in nam_norms) == (targets == "nam"))]


class SparsityPenalty:
    """``penalty()`` -> ``strength * sum of |scale factor|`` over the target BatchNorms."""

    def __init__(self, model: nn.Module, strength: float = DEFAULT_STRENGTH, targets: str = DEFAULT_TARGETS):
        if strength < 0:
            raise NampruneError(f"sparsity strength must be >= 0, got {strength}")
        self.strength = float(strength)
        self.targets = targets
        self.parameters = penalized_parameters(model, targets) if strength > 0 else []

    @property
    def active(self) -> bool:
        return self.strength > 0 and bool(self.parameters)

    def __call__(self) -> torch.Tensor | None:
        if not self.active:
            return None
        # one concatenation, then one abs and one sum: a few kernels per step, not two per layer
        l1 = torch.cat([p.reshape(-1) for p in self.parameters]).abs().sum()
        return self.strength * l1
