"""Which normalization makes channel scores comparable across layers for global ranking?

Sparse-trains ResNet-20 with NAM on the embedded digits data (several seeds; the penalty on
the NAM BatchNorms as in the paper, and on every BatchNorm as in Network Slimming), then
prunes copies of each model globally at several ratios with every (importance, normalization) pair and
reports top-1 right after pruning (no fine-tuning, so the ranking alone is judged) and
the fraction of MACs kept. Prints a Markdown table for BENCHMARKS.md.

    python benchmarks/normalization.py --seeds 0 1 2 --epochs 15 --targets nam bn
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import namprune
from namprune import TrainConfig, evaluate, fit, load_data, models
from namprune.core.deploy.measure import count_macs
from namprune.core.pruning.prune import prune
from namprune.core.settings import NORMALIZATIONS, PruneConfig

COMPARED = [n for n in NORMALIZATIONS if n != "auto"]  # auto is one of these, chosen per importance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--sparsity", type=float, default=0.01)
    parser.add_argument("--targets", nargs="+", default=["nam", "bn"], help="which BatchNorms the penalty is on")
    args = parser.parse_args()

    started = time.time()
    # (targets, importance, normalization) -> ratio -> list over seeds of (top1, macs kept)
    results: dict[tuple[str, str, str], dict[float, list[tuple[float, float]]]] = {}
    bases: dict[str, list[float]] = {}
    for targets in args.targets:
        for seed in args.seeds:
            model, data = sparse_trained(targets, seed, args)
            bases.setdefault(targets, []).append(evaluate(model, data.test)["top1"])
            base_macs = count_macs(model)
            for importance in ("nam", "slim", "l1"):
                for normalization in COMPARED:
                    for ratio in args.ratios:
                        pruned = copy.deepcopy(model)
                        prune(pruned, PruneConfig(ratio=ratio, importance=importance, normalization=normalization))
                        results.setdefault((targets, importance, normalization), {}).setdefault(ratio, []).append(
                            (evaluate(pruned, data.test)["top1"], count_macs(pruned) / base_macs))
            print(f"done: penalty on {targets}, seed {seed}", flush=True)

    unpruned = ", ".join(f"{statistics.median(b):.1f} % (penalty on {t})" for t, b in bases.items())
    print(f"\nResNet-20 (NAM attention) on digits, sparse-trained {args.epochs} epochs with p={args.sparsity}; "
          f"seeds {args.seeds}; unpruned top-1 (median): {unpruned}.\n")
    header = " | ".join(f"{r:.0%} removed: top-1 / MACs kept" for r in args.ratios)
    print(f"| penalty on | importance | normalization | {header} |")
    print("|---|---|---|" + "---|" * len(args.ratios))
    for (targets, importance, normalization), by_ratio in results.items():
        cells = []
        for ratio in args.ratios:
            top1 = statistics.median(a for a, _ in by_ratio[ratio])
            kept = statistics.median(k for _, k in by_ratio[ratio])
            cells.append(f"{top1:.1f} % / {kept:.2f}")
        print(f"| {targets} | {importance} | {normalization} | {' | '.join(cells)} |")
    print(f"\n(medians over {len(args.seeds)} seeds; {time.time() - started:.0f} s; torch {torch.__version__}, "
          f"namprune {namprune.__version__})")


def sparse_trained(targets: str, seed: int, args):
    """ResNet-20 with NAM sparse-trained on digits with the penalty on ``targets``, in eval mode."""
    torch.manual_seed(seed)
    data = load_data("digits", batch_size=32, seed=seed)
    model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
    cfg = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.1, schedule="cosine", sparsity=args.sparsity,
                      sparsity_targets=targets, seed=seed)
    fit(model, data, cfg, progress=False)
    return model.eval(), data


if __name__ == "__main__":
    main()
