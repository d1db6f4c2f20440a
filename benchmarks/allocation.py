"""How should a MACs target trade a channel's score against what it costs? Channels go in
order of score^2 / cost^q; this compares q = 1 (the greedy knapsack ratio) with q = 0.5 and
0.75, right after pruning to half the MACs and recalibrating BatchNorm (no fine-tuning), so
the allocation alone is judged.

    python benchmarks/allocation.py [--cifar-work runs/cifar10-bench]

Models: ResNet-20 + NAM trained on digits with every `namprune train` default (seeds 0, 1;
one thread, as the test suite trains it), and, when benchmarks/cifar10_pruning.py has
trained them, its CIFAR-10 bases (sparse-trained `namprune` and `plain`, no penalty).
Writes benchmarks/results/allocation.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import tempfile
from pathlib import Path

import torch

import namprune.core.pruning.prune as pruning
from namprune import evaluate
from namprune.app.stages import compatible_data
from namprune.cli import main as cli
from namprune.core.pruning.cost import count_macs
from namprune.core.store import checkpoint

from _results import save

ROOT = Path(__file__).resolve().parents[1]


def measure(name: str, run: Path, data_dir, exponents: list[float]) -> list[dict]:
    payload = checkpoint.read(run)
    data = compatible_data(payload, data_dir, 256, "cpu")
    model = checkpoint.build(payload).eval()
    rows = []
    for q in exponents:
        pruned = copy.deepcopy(model)
        pruning.prune(pruned, pruning.PruneConfig(ratio=None, target_macs=0.5, cost_exponent=q), data.calibration)
        rows.append({"model": name, "q": q, "macs_kept": round(count_macs(pruned) / count_macs(model), 3),
                     "top1": evaluate(pruned, data.test)["top1"]})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-work", type=Path, default=ROOT / "runs" / "cifar10-bench")
    parser.add_argument("--exponents", type=float, nargs="+", default=[1.0, 0.75, 0.5])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (0, 1):
            run = Path(tmp) / f"digits-{seed}"
            assert cli(["train", "--out", str(run), "--seed", str(seed), "--quiet"]) == 0
            rows += measure(f"digits, seed {seed} (sparse)", run, None, args.exponents)
    for base, label in (("namprune", "sparse"), ("plain", "no penalty")):
        run = args.cifar_work / "seed0" / f"train-{base}"
        if run.exists():
            rows += measure(f"CIFAR-10 {base} base ({label})", run, args.cifar_work / "cifar10", args.exponents)
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = [f"Measured {datetime.date.today()}, one thread. Top-1 right after pruning to half the MACs and "
             "recalibrating BatchNorm, no fine-tuning; channels in order of score^2 / cost^q.", "",
             "Command: `python benchmarks/allocation.py`", "",
             "| model | " + " | ".join(f"q = {q:g}" for q in args.exponents) + " |",
             "|---|" + "---:|" * len(args.exponents)]
    for model in models:
        cells = [next(f"{r['top1']:.2f}" for r in rows if r["model"] == model and r["q"] == q) for q in args.exponents]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    save("allocation", "\n".join(lines) + "\n", {"rows": rows})


if __name__ == "__main__":
    main()
