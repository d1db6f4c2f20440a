"""Which training images should BatchNorm be re-estimated on after pruning: unaugmented (what
namprune reads today, ``DataBundle.calibration``) or augmented as in training (``DataBundle.train``)?

For each CIFAR-10 base of ``benchmarks/cifar10_pruning.py`` (``--work``): top-1 of the unpruned
model as trained and re-estimated both ways, then of the model pruned to half the MACs as
namprune's defaults prune it (l1, mean normalization, score alone, multiples of 8), before and
after each re-estimate (1024 and 4096 images). No fine-tuning: it trains in train mode, on each
batch's own statistics, and its running statistics forget the re-estimate within an epoch
(fine-tuning from either start gave the same top-1 at every epoch, to the hundredth).

    python benchmarks/recalibration_images.py --work WORK --seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from namprune import evaluate
from namprune.app.stages import compatible_data
from namprune.core.pruning.calibrate import recalibrate_batchnorm
from namprune.core.pruning.prune import prune
from namprune.core.settings import PruneConfig
from namprune.core.store import checkpoint
from namprune.core.store.files import write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = PruneConfig(ratio=None, target_macs=0.5, importance="l1", normalization="mean", cost_exponent=0.0,
                       round_to=8, recalibrate=False)


def reestimated(model, loaders: dict, test) -> dict:
    """Top-1 of ``model`` as it is and re-estimated on each loader with 1024 and 4096 images."""
    top1 = {"as is": evaluate(model.eval(), test)["top1"]}
    for name, loader in loaders.items():
        for images in (1024, 4096):
            copy_ = copy.deepcopy(model)
            recalibrate_batchnorm(copy_, loader, images)
            top1[f"{name} {images}"] = evaluate(copy_.eval(), test)["top1"]
    return top1


def measure(base: Path, data_dir: Path) -> dict:
    payload = checkpoint.read(base)
    clean = compatible_data(payload, data_dir, 128, "cpu", augment=False)
    augmented = compatible_data(payload, data_dir, 128, "cpu", augment=True)
    loaders = {"unaugmented": clean.calibration, "augmented": augmented.train}
    model = checkpoint.build(payload)
    unpruned = reestimated(model, loaders, clean.test)
    prune(model, DEFAULTS, clean.calibration)
    return {"unpruned": unpruned, "pruned": reestimated(model, loaders, clean.test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of cifar10_pruning.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--base", default="namprune-shrink", help="which base of cifar10_pruning.py")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "recalibration_images.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {f"seed {seed}": measure(args.work / f"seed{seed}" / f"train-{args.base}", args.work / "cifar10")
               for seed in args.seeds}
    write_json(args.json, results)
    for seed, result in results.items():
        for model, top1 in result.items():
            print(seed, model, " ".join(f"{k}: {v:.2f}" for k, v in top1.items()))


if __name__ == "__main__":
    main()
