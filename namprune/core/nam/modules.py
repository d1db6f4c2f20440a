"""NAM: Normalization-based Attention Module (Liu et al., 2021).

The scale factors of a BatchNorm measure how much each channel (or pixel) varies; NAM
turns them into attention weights and, with an L1 penalty on them, into a pruning signal.

* ``ChannelNAM``: ``out = x * sigmoid(w * BN(x))`` with ``w_i = |gamma_i| / sum_j |gamma_j|``.
* ``SpatialNAM``: the same over pixel positions ("pixel normalization"): a BatchNorm whose
  features are the H*W positions, statistics pooled over batch and channels, one lambda
  per pixel.
* ``NAM``: channel branch, then spatial branch.

``w`` sums to 1 over a layer, so ``w ~ 1/C``: the gate's logit is about ``BN(x) / C`` and the
gate stays near 0.5 whatever was learned. The ``scaled`` form (attention ``nam-scaled``)
multiplies ``w`` by the number of channels (pixels), ``w_i = C |gamma_i| / sum |gamma|``:
mean weight 1, so the logit has the scale of ``BN(x)`` in a layer of any width.

Unlike the reference code, ``w`` is computed from the parameter itself (not ``.data``), so
the gradient flows through the normalization, and ``w * BN(x)`` is done in a single
``batch_norm`` call with scale ``gamma * w`` and shift ``beta * w``, which is the same
function and saves one pass over the activations (see BENCHMARKS.md, NAM overhead).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import NampruneError
from ..settings import ATTENTIONS

# attention name (settings.ATTENTIONS) -> which NAM branches it has; the names in SCALED use
# the width-invariant weights
BRANCHES = {"none": None, "nam": "both", "nam-channel": "channel", "nam-spatial": "spatial", "nam-scaled": "both"}
SCALED = frozenset({"nam-scaled"})


def normalized_weight(gamma: torch.Tensor) -> torch.Tensor:
    """``|gamma| / sum |gamma|``: the NAM weight of each channel or pixel (sums to 1)."""
    magnitude = gamma.abs()
    return magnitude / magnitude.sum().clamp_min(torch.finfo(magnitude.dtype).tiny)


def gate_weight(gamma: torch.Tensor, scaled: bool) -> torch.Tensor:
    """NAM's weight per channel (pixel): ``w``, or ``len(gamma) * w`` in the scaled form."""
    w = normalized_weight(gamma)
    return w * w.numel() if scaled else w


def _scaled_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * bn(x)`` as one ``F.batch_norm`` call, updating running statistics as ``bn`` would."""
    momentum = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or not bn.track_running_stats
    return F.batch_norm(
        x, bn.running_mean, bn.running_var, bn.weight * scale, bn.bias * scale,
        use_batch_stats, momentum, bn.eps,
    )


class ChannelNAM(nn.Module):
    """Channel attention from the normalized BatchNorm scale factors."""

    def __init__(self, channels: int, scaled: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.scaled = scaled

    @property
    def channels(self) -> int:
        return self.bn.num_features

    def saliency(self) -> torch.Tensor:
        """The normalized weight ``w`` of every channel (detached; sums to 1)."""
        return normalized_weight(self.bn.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = _scaled_batch_norm(self.bn, x, gate_weight(self.bn.weight, self.scaled))
        return x * torch.sigmoid(logits)

    def extra_repr(self) -> str:
        return f"channels={self.channels}" + (", scaled" if self.scaled else "")


class SpatialNAM(nn.Module):
    """Pixel attention: BatchNorm over the H*W positions of a fixed-size feature map."""

    # Set while torch-pruning traces the model (``graph.dependency_graph``): the module then
    # shows as one channel-wise op. Its real forward views (N, C, H, W) as (N*C, H*W), a
    # reshape the graph would take for a flatten into the classifier when one follows a
    # pooled map, and the loop through it grew the index lists without end.
    traced_as_pass_through = False

    def __init__(self, height: int, width: int, scaled: bool = False):
        super().__init__()
        self.height, self.width = int(height), int(width)
        self.bn = nn.BatchNorm1d(self.height * self.width)
        self.scaled = scaled

    def saliency(self) -> torch.Tensor:
        """The normalized weight of every pixel as an (H, W) map (detached)."""
        return normalized_weight(self.bn.weight.detach()).view(self.height, self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.traced_as_pass_through:
            return x * 1.0  # a new op for torch-pruning to attach this module to
        n, c, h, w = x.shape
        if (h, w) != (self.height, self.width):
            raise NampruneError(
                f"SpatialNAM expects {self.height}x{self.width} feature maps but received {h}x{w}; "
                "build the model with the input size it is fed (input_size=...)"
            )
        # Pixel positions are the BatchNorm features, batch and channels its samples. Both
        # views below are free (no copy) for their layout, and give the same statistics; the
        # (N*C, HW) one reaches BatchNorm's fast 2-D kernel, about 4x faster than the 3-D one
        # on an NCHW tensor (see BENCHMARKS.md, NAM overhead).
        scale = gate_weight(self.bn.weight, self.scaled)
        if x.is_contiguous():
            logits = _scaled_batch_norm(self.bn, x.view(n * c, h * w), scale).view(n, c, h, w)
        else:  # channels-last: (N, HW, C)
            logits = _scaled_batch_norm(self.bn, x.flatten(2).transpose(1, 2), scale).transpose(1, 2).reshape(n, c, h, w)
        return x * torch.sigmoid(logits)

    def extra_repr(self) -> str:
        return f"size={self.height}x{self.width}" + (", scaled" if self.scaled else "")


class NAM(nn.Sequential):
    """Channel NAM then spatial NAM, either of which may be left out."""

    MODES = ("channel", "spatial", "both")

    def __init__(self, channels: int, spatial_size: tuple[int, int] | int | None = None, mode: str = "both",
                 scaled: bool = False):
        if mode not in self.MODES:
            raise NampruneError(f"unknown NAM mode {mode!r}; choose one of {', '.join(self.MODES)}")
        branches = OrderedDict()
        if mode in ("channel", "both"):
            branches["channel"] = ChannelNAM(channels, scaled)
        if mode in ("spatial", "both"):
            if spatial_size is None:
                raise NampruneError("the spatial NAM branch needs the feature-map size (spatial_size=(H, W))")
            h, w = (spatial_size, spatial_size) if isinstance(spatial_size, int) else spatial_size
            branches["spatial"] = SpatialNAM(h, w, scaled)
        super().__init__(branches)
        self.mode = mode


def create_attention(name: str, channels: int, spatial_size: tuple[int, int] | int | None = None) -> nn.Module:
    """The attention layer a block asks for by short name: ``none``, ``nam``, ``nam-channel``,
    ``nam-spatial``, ``nam-scaled``."""
    check_attention(name)
    mode = BRANCHES[name]
    return nn.Identity() if mode is None else NAM(channels, spatial_size, mode, scaled=name in SCALED)


def check_attention(name: str) -> str:
    if name not in ATTENTIONS:
        raise NampruneError(f"unknown attention {name!r}; choose one of {', '.join(ATTENTIONS)}")
    return name
