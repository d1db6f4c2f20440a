"""Which normalization makes channel scores comparable across layers for global ranking?

Sparse-trains ResNet-20 on the embedded digits data (several seeds), then prunes copies
of each model globally at several ratios with every (importance, normalization) pair and
reports top-1 right after pruning (no fine-tuning, so the ranking alone is judged) and
the fraction of MACs kept. Prints a Markdown table for BENCHMARKS.md.

    python benchmarks/normalization.py --seeds 0 1 2 --epochs 15
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import namprune
from namprune import TrainConfig, evaluate, fit, load_data, models
from namprune.measure import count_macs
from namprune.pruning import PruneConfig, prune

NORMALIZATIONS = ("mean", "sum", "max", "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--sparsity", type=float, default=0.01)
    args = parser.parse_args()

    started = time.time()
    # setting -> ratio -> list over seeds of (top1, macs kept)
    results: dict[tuple[str, str], dict[float, list[tuple[float, float]]]] = {}
    bases = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        data = load_data("digits", batch_size=32, seed=seed)
        model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
        cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.1, schedule="cosine", sparsity=args.sparsity,
                          sparsity_targets="bn", seed=seed)
        fit(model, data, cfg, progress=False)
        model.eval()
        bases.append(evaluate(model, data.test)["top1"])
        base_macs = count_macs(model)
        for importance in ("nam", "slim"):
            for normalization in NORMALIZATIONS:
                for ratio in args.ratios:
                    pruned = copy.deepcopy(model)
                    prune(pruned, PruneConfig(ratio=ratio, importance=importance, normalization=normalization))
                    results.setdefault((importance, normalization), {}).setdefault(ratio, []).append(
                        (evaluate(pruned, data.test)["top1"], count_macs(pruned) / base_macs))

    print(f"ResNet-20 (NAM attention) on digits, sparse-trained {args.epochs} epochs with p={args.sparsity} on every "
          f"BatchNorm; seeds {args.seeds}; unpruned top-1 {statistics.median(bases):.1f} % (median).\n")
    header = " | ".join(f"{r:.0%} removed: top-1 / MACs kept" for r in args.ratios)
    print(f"| importance | normalization | {header} |")
    print("|---|---|" + "---|" * len(args.ratios))
    for (importance, normalization), by_ratio in results.items():
        cells = []
        for ratio in args.ratios:
            top1 = statistics.median(a for a, _ in by_ratio[ratio])
            kept = statistics.median(k for _, k in by_ratio[ratio])
            cells.append(f"{top1:.1f} % / {kept:.2f}")
        print(f"| {importance} | {normalization} | {' | '.join(cells)} |")
    print(f"\n(medians over {len(args.seeds)} seeds; {time.time() - started:.0f} s; torch {torch.__version__}, "
          f"namprune {namprune.__version__})")


if __name__ == "__main__":
    main()
