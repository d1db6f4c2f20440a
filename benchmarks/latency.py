"""Does the MACs speed-up of a pruned model turn into measured CPU speed-up?

Builds ResNet-20 and ResNet-56 with NAM attention for 32x32 RGB inputs (random weights;
BatchNorm scales scrambled from the seed, as training would leave them, so the ranking
has no ties), prunes a copy of each at several global ratios, and times every variant
of one architecture side by side (interleaved rounds of torch.utils.benchmark blocks,
medians) at batch 1 and batch 32. Prints a Markdown table for BENCHMARKS.md.

    python benchmarks/latency.py --ratios 0.3 0.5 0.7 --rounds 7 --min-time 0.5 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch

from namprune import models
from namprune.core.deploy.measure import measure_cost, measure_latency
from namprune.core.deploy.timing import settings_record
from namprune.core.pruning.prune import prune
from namprune.core.settings import LatencySettings, PruneConfig


def scramble_scales(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 2)


def variants(name: str, ratios: list[float], seed: int) -> dict[str, torch.nn.Module]:
    """The unpruned model and one pruned copy per ratio."""
    torch.manual_seed(seed)
    base = models.create(name, num_classes=10, attention="nam", input_size=32, in_channels=3)
    scramble_scales(base, seed)
    out = {"unpruned": base.eval()}
    for ratio in ratios:
        pruned = copy.deepcopy(base)
        prune(pruned, PruneConfig(ratio=ratio))
        out[f"{ratio:.0%} removed"] = pruned.eval()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--batch", type=int, default=32, help="the larger batch (batch 1 is always timed)")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's current thread count")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    settings = LatencySettings(batches=(1, args.batch), threads=args.threads, min_run_time=args.min_time,
                               rounds=args.rounds)
    described = settings_record(settings)
    started = time.time()
    lines = [f"| model | channels removed | params (M) | MACs (M) | MACs speed-up | "
             f"batch 1 (ms) | measured speed-up b1 | batch {args.batch} (ms) | measured speed-up b{args.batch} |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in args.models:
        nets = variants(name, args.ratios, args.seed)
        costs = {label: measure_cost(net) for label, net in nets.items()}
        latency = measure_latency(nets, settings)  # every variant of one model side by side
        base_macs, base_ms = costs["unpruned"]["macs"], {b: latency["unpruned"][b]["median_ms"] for b in settings.batches}
        for label, cost in costs.items():
            ms = {b: latency[label][b]["median_ms"] for b in settings.batches}
            lines.append(f"| {name} | {label} | {cost['params'] / 1e6:.3f} | {cost['macs'] / 1e6:.1f} | "
                         f"{base_macs / cost['macs']:.2f}x | {ms[1]:.2f} | {base_ms[1] / ms[1]:.2f}x | "
                         f"{ms[args.batch]:.1f} | {base_ms[args.batch] / ms[args.batch]:.2f}x |")

    print(f"ResNet-20 / ResNet-56 with NAM attention, 32x32x3 input, random weights with scrambled BatchNorm "
          f"scales (seed {args.seed}), pruned globally by NAM ranking. Latency: median over {args.rounds} "
          f"interleaved blocks of >= {args.min_time} s per variant and batch (torch.utils.benchmark, eval mode, "
          f"inference_mode), {described['threads']} thread(s), {described['device']}, torch {described['torch']}, "
          f"Python {platform.python_version()} on {described['machine']}.\n")
    print("\n".join(lines))
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
