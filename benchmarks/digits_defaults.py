"""The zero-flag check on the embedded digits, on several seeds: `namprune train --dataset
digits --epochs 12 --seed S` then `namprune prune --target-macs 0.5`, nothing else. How much
of its top-1 does the pruned model keep before any fine-tuning, and does its exported file
run faster than the unpruned one in onnxruntime? And with ``--finetune-lrs``: what top-1 does
the same prune reach after ``--finetune-epochs`` of fine-tuning at each learning rate?

    OMP_NUM_THREADS=1 python benchmarks/digits_defaults.py [--seeds 0 1 2] [--epochs 12]
        [--finetune-lrs 0.01 0.04 --finetune-epochs 2]

Training runs on one thread, as a CI test worker does (the thread count changes the
floating-point sums and so the trained model). Both models are exported with `namprune
export` defaults and timed side by side (interleaved rounds, one thread, batch 1 and 32).
Writes benchmarks/results/digits_defaults.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import tempfile
from pathlib import Path

import torch

import namprune
from namprune.app.exporting import export_checkpoint
from namprune.cli import main as cli
from namprune.core.deploy.timing import measure_latency, speedups
from namprune.core.settings import LatencySettings
from namprune.core.store.files import read_json

from _results import save


def one_seed(seed: int, epochs: int, work: Path, finetune_lrs: list[float], finetune_epochs: int) -> dict:
    run, pruned = work / f"train-{seed}", work / f"pruned-{seed}"
    assert cli(["train", "--dataset", "digits", "--epochs", str(epochs), "--seed", str(seed), "--out", str(run),
                "--quiet"]) == 0
    assert cli(["prune", str(run), "--target-macs", "0.5", "--out", str(pruned), "--quiet"]) == 0
    files = {}
    for name, folder in (("unpruned", run), ("pruned", pruned)):
        files[name] = folder / "model.onnx"
        export_checkpoint(folder, files[name], latency=None)
    records = measure_latency(files, LatencySettings(rounds=9))
    report = read_json(pruned / "report.json")
    finetuned = {}
    for lr in finetune_lrs:  # the same prune (it is deterministic), then fine-tuned as a user asks for it
        out = work / f"finetuned-{seed}-{lr}"
        assert cli(["prune", str(run), "--target-macs", "0.5", "--finetune-epochs", str(finetune_epochs),
                    "--lr", str(lr), "--out", str(out), "--quiet"]) == 0
        finetuned[str(lr)] = read_json(out / "report.json")["top1_finetuned"]
    return {"finetuned": finetuned, "seed": seed, "top1_before": report["top1_before"], "top1_pruned": report["top1_pruned"],
            "top1_pruned_uncalibrated": report["top1_pruned_uncalibrated"], "macs_kept": report["macs_kept"],
            "kept": round(report["top1_pruned"] / report["top1_before"], 4),
            "speedup": speedups(records, "unpruned", "pruned"),
            "trusted": all(r["trusted"] for by_batch in records.values() for r in by_batch.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--finetune-lrs", type=float, nargs="*", default=[],
                        help="also fine-tune the prune at each of these learning rates")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        rows = [one_seed(seed, args.epochs, Path(work), args.finetune_lrs, args.finetune_epochs) for seed in args.seeds]
    tuned = [f"after {args.finetune_epochs} fine-tuning epochs at lr {lr:g}" for lr in args.finetune_lrs]
    lines = [f"Measured {datetime.date.today()} on {platform.machine()} (1 thread), torch {torch.__version__}, "
             f"namprune {namprune.__version__}: `namprune train --dataset digits --epochs {args.epochs} --seed S`, "
             "then `namprune prune --target-macs 0.5`, every other setting default; speed-up of the exported file "
             "against the unpruned one, timed side by side (median of 9 interleaved rounds, one thread).", "",
             "Command: `OMP_NUM_THREADS=1 python benchmarks/digits_defaults.py"
             + (f" --finetune-lrs {' '.join(f'{lr:g}' for lr in args.finetune_lrs)} --finetune-epochs "
                f"{args.finetune_epochs}" if args.finetune_lrs else "") + "`", "",
             "| seed | top-1 unpruned | right after pruning | after recalibration | kept | MACs kept | speed-up b1 / b32 |"
             + "".join(f" {t} |" for t in tuned),
             "|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(tuned)]
    for r in rows:
        mark = "" if r["trusted"] else " !"
        lines.append(f"| {r['seed']} | {r['top1_before']:.2f} | {r['top1_pruned_uncalibrated']:.2f} | "
                     f"{r['top1_pruned']:.2f} | {r['kept']:.1%} | {r['macs_kept']:.3f} | "
                     f"{r['speedup']['1']:.2f}x / {r['speedup']['32']:.2f}x{mark} |"
                     + "".join(f" {top1:.2f} |" for top1 in r["finetuned"].values()))
    lines += ["", f"Lowest share kept: {min(r['kept'] for r in rows):.1%} (mean {statistics.mean(r['kept'] for r in rows):.1%});"
              f" lowest batch-32 speed-up {min(r['speedup']['32'] for r in rows):.2f}x."
              + ("" if all(r["trusted"] for r in rows) else " `!`: timing flagged untrusted (a busy machine).")]
    for lr in args.finetune_lrs:
        lines.append(f"Fine-tuned at lr {lr:g}: mean top-1 {statistics.mean(r['finetuned'][str(lr)] for r in rows):.2f}.")
    save("digits_defaults", "\n".join(lines) + "\n", {"rows": rows, "epochs": args.epochs,
                                                        "finetune_epochs": args.finetune_epochs})


if __name__ == "__main__":
    main()
