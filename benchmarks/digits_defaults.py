"""The zero-flag check on the embedded digits, on several seeds, and the training defaults
judged by the final model: `namprune train --dataset digits --epochs 12 --seed S [flags]`,
then `namprune prune --target-macs 0.5`, and the same prune fine-tuned for each of
``--finetune-epochs`` at the default learning rate. How much of its top-1 does the pruned
model keep before any fine-tuning, what does it reach after, and does the default's exported
file run faster than the unpruned one in onnxruntime?

    OMP_NUM_THREADS=1 python benchmarks/digits_defaults.py [--seeds 0 1 2] [--epochs 12]
        [--variants defaults nam plain] [--finetune-epochs 2 4] [--work DIR]

Variants (training flags on top of the defaults): ``defaults`` none; ``nam`` the earlier
default, NAM attention with planned shrinking and no weight decay on the scale factors;
``plain`` no planned shrinking (plain training, what torch-pruning's examples do); ``late``
planned shrinking from three quarters of the run.
Training runs on one thread, as a CI test worker does (the thread count changes the
floating-point sums and so the trained model). The defaults' models are exported with
`namprune export` defaults and timed side by side (interleaved rounds, one thread, batch 1
and 32). With ``--work DIR`` the runs are kept there and a second call skips the finished
ones. Writes benchmarks/results/digits_defaults.{json,md} (``--results NAME``: NAME.{json,md}).
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

VARIANTS = {"defaults": [], "nam": ["--attention", "nam", "--no-bn-weight-decay"], "plain": ["--shrink-macs", "0"],
            "late": ["--shrink-start", "0.75"]}


def one_run(variant: str, seed: int, epochs: int, work: Path, finetune_epochs: list[int]) -> dict:
    run, pruned = work / f"train-{variant}-{seed}", work / f"pruned-{variant}-{seed}"
    if not run.exists():
        assert cli(["train", "--dataset", "digits", "--epochs", str(epochs), "--seed", str(seed), *VARIANTS[variant],
                    "--out", str(run), "--quiet", "--overwrite"]) == 0
    if not pruned.exists():
        assert cli(["prune", str(run), "--target-macs", "0.5", "--out", str(pruned), "--quiet"]) == 0
    report = read_json(pruned / "report.json")
    finetuned = {}
    for n in finetune_epochs:  # the same prune (it is deterministic), then fine-tuned as a user asks for it
        out = work / f"finetuned-{variant}-{seed}-{n}"
        if not out.exists():
            assert cli(["prune", str(run), "--target-macs", "0.5", "--finetune-epochs", str(n), "--out", str(out),
                        "--quiet"]) == 0
        finetuned[str(n)] = read_json(out / "report.json")["top1_finetuned"]
    row = {"variant": variant, "seed": seed, "importance": report["importance"], "top1_before": report["top1_before"],
           "top1_pruned": report["top1_pruned"], "top1_pruned_uncalibrated": report["top1_pruned_uncalibrated"],
           "macs_kept": report["macs_kept"], "kept": round(report["top1_pruned"] / report["top1_before"], 4),
           "finetuned": finetuned}
    if variant == "defaults":
        files = {}
        for name, folder in (("unpruned", run), ("pruned", pruned)):
            files[name] = folder / "model.onnx"
            export_checkpoint(folder, files[name], latency=None)
        records = measure_latency(files, LatencySettings(rounds=9))
        row["speedup"] = speedups(records, "unpruned", "pruned")
        row["trusted"] = all(r["trusted"] for by_batch in records.values() for r in by_batch.values())
    return row


def _speed(row: dict) -> str:
    if "speedup" not in row:
        return ""
    return f"{row['speedup']['1']:.2f}x / {row['speedup']['32']:.2f}x" + ("" if row["trusted"] else " !")


def markdown(rows: list[dict], args) -> str:
    tuned = [f"after {n} fine-tuning epochs" for n in args.finetune_epochs]
    lines = [f"Measured {datetime.date.today()} on {platform.machine()} (1 thread), torch {torch.__version__}, "
             f"namprune {namprune.__version__}: `namprune train --dataset digits --epochs {args.epochs} --seed S "
             "[variant's flags]`, then `namprune prune --target-macs 0.5` (and the same with `--finetune-epochs N`), "
             "every other setting default (fine-tuning at its default learning rate); speed-up of the defaults' "
             "exported file against the unpruned one, timed side by side (median of 9 interleaved rounds, one thread).",
             "", "Command: `OMP_NUM_THREADS=1 python benchmarks/digits_defaults.py --variants "
             + " ".join(args.variants) + " --finetune-epochs " + " ".join(map(str, args.finetune_epochs)) + "`", "",
             "Variants: " + "; ".join(f"`{v}`: {' '.join(VARIANTS[v]) or 'no flags'}" for v in args.variants) + ".", "",
             "| variant | seed | top-1 unpruned | right after pruning | after recalibration | kept | MACs kept |"
             + "".join(f" {t} |" for t in tuned) + " speed-up b1 / b32 |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(tuned) + "---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['top1_before']:.2f} | {r['top1_pruned_uncalibrated']:.2f} | "
                     f"{r['top1_pruned']:.2f} | {r['kept']:.1%} | {r['macs_kept']:.3f} |"
                     + "".join(f" {r['finetuned'][str(n)]:.2f} |" for n in args.finetune_epochs) + f" {_speed(r)} |")
    lines.append("")
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        means = ", ".join(f"{statistics.mean(r['finetuned'][str(n)] for r in mine):.2f} % after {n} epochs"
                          for n in args.finetune_epochs)
        lines.append(f"- `{variant}`: kept {min(r['kept'] for r in mine):.1%} at least (mean "
                     f"{statistics.mean(r['kept'] for r in mine):.1%}) before fine-tuning; mean top-1 {means}.")
    timed = [r for r in rows if "speedup" in r]
    if timed:
        lines.append(f"- Lowest batch-32 speed-up of the defaults: {min(r['speedup']['32'] for r in timed):.2f}x"
                     + ("" if all(r["trusted"] for r in timed) else "; `!`: timing flagged untrusted (a busy machine)")
                     + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--finetune-epochs", type=int, nargs="*", default=[2, 4],
                        help="also fine-tune the prune for each of these numbers of epochs")
    parser.add_argument("--work", type=Path, help="keep the runs here (a second call skips the finished ones)")
    parser.add_argument("--results", default="digits_defaults", help="name of the results files in benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        rows = [one_run(variant, seed, args.epochs, work, args.finetune_epochs)
                for variant in args.variants for seed in args.seeds]
    save(args.results, markdown(rows, args), {"rows": rows, "epochs": args.epochs,
                                                   "finetune_epochs": args.finetune_epochs, "variants": VARIANTS})


if __name__ == "__main__":
    main()
