"""NAM's normalized weight as the paper writes it (`nam`: w = |gamma| / sum |gamma|, so the
gate's logit is about BN(x) / C) against the width-invariant form (`nam-scaled`:
w = C |gamma| / sum |gamma|, mean weight 1): does the gate act, and does the model train
and prune as well?

    python benchmarks/nam_forms.py [--seeds 0 1]

ResNet-20 on the embedded digits, every `namprune train` default but the attention (one
thread, as the test suite trains); gate spread on 256 training images (std / mean of each
gate, the largest channel's; the median and the largest over the model's gates), top-1
unpruned, and right after `prune --target-macs 0.5` with its defaults (BatchNorm
recalibrated, no fine-tuning). Writes benchmarks/results/nam_forms.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
from pathlib import Path

import torch

from namprune import evaluate
from namprune.app.datasource import calibration_images, checkpoint_data
from namprune.cli import main as cli
from namprune.core.nam.gates import measure_gates
from namprune.core.store import checkpoint
from namprune.core.store.files import read_json

from _results import save



def one(attention: str, seed: int, tmp: Path) -> dict:
    run = tmp / f"{attention}-{seed}"
    assert cli(["train", "--out", str(run), "--attention", attention, "--seed", str(seed), "--quiet"]) == 0
    payload = checkpoint.read(run)
    model = checkpoint.build(payload).eval()
    spreads = [g.spread for g in measure_gates(model, calibration_images(checkpoint_data(payload), 256))]
    assert cli(["prune", str(run), "--target-macs", "0.5", "--out", str(tmp / f"p-{attention}-{seed}"), "-q"]) == 0
    report = read_json(tmp / f"p-{attention}-{seed}" / "report.json")
    return {"attention": attention, "seed": seed, "gate_spread_median": round(statistics.median(spreads), 4),
            "gate_spread_max": round(max(spreads), 4), "top1": evaluate(model, checkpoint_data(payload).test)["top1"],
            "top1_pruned": report["top1_pruned"], "macs_kept": report["macs_kept"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for attention in ("nam", "nam-scaled"):
                rows.append(one(attention, seed, Path(tmp)))
                print(rows[-1], flush=True)
    lines = [f"Measured {datetime.date.today()}, one thread; seeds {args.seeds}.", "",
             "Command: `python benchmarks/nam_forms.py`", "",
             "| attention | seed | gate spread, median / largest | top-1 unpruned | top-1 pruned to 0.5 MACs, recalibrated |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['attention']} | {r['seed']} | {r['gate_spread_median']:.2%} / {r['gate_spread_max']:.2%} | "
                     f"{r['top1']:.2f} | {r['top1_pruned']:.2f} |")
    save("nam_forms", "\n".join(lines) + "\n", {"rows": rows})


if __name__ == "__main__":
    main()
