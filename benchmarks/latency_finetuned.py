"""Latency-targeted against MACs-targeted pruning at the same measured latency, after the same
fine-tuning: ResNet-20 on CIFAR-10 and ResNet-56 on digits, onnxruntime on the CPU, one thread.

    OMP_NUM_THREADS=1 python benchmarks/latency_finetuned.py [--runs DIR] [--models r20 r56]

For every model and batch size (1, 32): prune the base with ``target_latency=0.7`` (timed at
that batch), then prune the same base with ``target_macs`` set to the MACs the first kept; time
the unpruned and both pruned ONNX files side by side (interleaved rounds, median of per-round
ratios) so that "same measured latency" is checked, not assumed; then fine-tune both with the
same budget (the epochs and lr of ``benches``; batch size and seed from the base's training
config: ``finetune_pruned`` takes no seed, so one seed is run). Every pruned model, timing and
fine-tuned model is kept in a folder under ``--runs`` and skipped when it is already there, so
an interrupted run resumes where it stopped (``--report-only`` rewrites the results from them).
The timing steps of every model run before any fine-tuning. Writes
benchmarks/results/latency_finetuned.{json,md} after every step (rows not yet done are "-").
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import namprune
from namprune.app.stages import finetune_pruned, prune_checkpoint
from namprune.core.deploy.timing import measure_latency, round_ratios, trust_problem
from namprune.core.errors import NampruneError
from namprune.core.settings import FinetuneSettings, LatencySettings, PruneConfig
from namprune.core.store import checkpoint
from namprune.core.store.files import read_json, write_json

from _results import save
from latency_target import onnx_bytes

MAIN_RUNS = Path("/work/main/runs")
TARGET = 0.7  # fraction of the measured latency the latency-targeted model keeps
METHODS = ("target_latency", "target_macs")
RETRIES, PAUSE_S = 6, 90  # a busy machine makes timings untrustworthy: wait and time again
CHECK_TRIES = 2  # the side-by-side check: rounds that disagree this often are quoted, marked "!"


@dataclass(frozen=True)
class Bench:
    """One base model and the fine-tuning budget both pruned copies get."""

    name: str
    base: Path
    data_dir: Path | None
    epochs: int
    lr: float


def benches(runs: Path) -> dict[str, Bench]:
    return {"r20": Bench("ResNet-20, CIFAR-10", MAIN_RUNS / "cifar10-bench" / "seed0" / "train-namprune",
                         MAIN_RUNS / "cifar10-bench" / "cifar10", epochs=2, lr=0.01),
            "r56": Bench("ResNet-56, digits", runs / "r56-digits", None, epochs=3, lr=0.01)}


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def retried(what: str, step):
    """``step()``, again after a pause while the machine is too busy to time."""
    for attempt in range(1, RETRIES + 1):
        try:
            return step()
        except NampruneError as exc:
            if "trust" not in str(exc) or attempt == RETRIES:
                raise
            log(f"{what}: timing not trusted (try {attempt}/{RETRIES}), waiting {PAUSE_S} s: {exc}")
            time.sleep(PAUSE_S)


def train_base(bench: Bench) -> None:
    """The digits ResNet-56 base: `namprune train` with its defaults."""
    if (bench.base / "model.pt").exists():
        return
    log(f"training {bench.name} into {bench.base}")
    subprocess.run([sys.executable, "-m", "namprune", "train", "--model", "resnet56", "--dataset", "digits",
                    "--out", str(bench.base), "--quiet"], check=True)


def prune_pair(bench: Bench, folder: Path, batch: int) -> None:
    """The latency-targeted model, then the MACs-targeted one at the MACs it kept."""
    latency_dir, macs_dir = folder / "target_latency", folder / "target_macs"
    if not (latency_dir / "model.pt").exists():
        cfg = PruneConfig(target_latency=TARGET, latency_runtime="onnxruntime", latency_batch=batch,
                          latency_threads=1)
        retried(f"prune {latency_dir}", lambda: prune_checkpoint(bench.base, cfg, latency_dir, data_dir=bench.data_dir,
                                                                  progress=False))
        log(f"pruned {latency_dir}")
    if not (macs_dir / "model.pt").exists():
        macs_kept = read_json(latency_dir / "report.json")["macs_kept"]
        cfg = PruneConfig(target_macs=round(macs_kept, 3))
        prune_checkpoint(bench.base, cfg, macs_dir, data_dir=bench.data_dir, progress=False)
        log(f"pruned {macs_dir}")


def time_pair(bench: Bench, folder: Path, batch: int, rounds: int) -> None:
    """Unpruned and both pruned models exported and timed side by side in one run."""
    if (folder / "timing.json").exists():
        return
    files = {"base": onnx_bytes(checkpoint.build(checkpoint.read(bench.base)).eval(), batch)}
    for how in METHODS:
        files[how] = onnx_bytes(checkpoint.build(checkpoint.read(folder / how)).eval(), batch)
    settings = LatencySettings(batches=(batch,), rounds=rounds, min_run_time=0.1)

    for attempt in range(1, CHECK_TRIES + 1):
        records = {name: r[batch] for name, r in measure_latency(files, settings).items()}
        problems = {name: p for name, r in records.items() if (p := trust_problem(r, absolute=False))}
        if not problems or attempt == CHECK_TRIES:
            break  # rounds that still disagree are kept and marked: the per-round ratios share the noise
        log(f"time {folder}: rounds disagree (try {attempt}/{CHECK_TRIES}), waiting {PAUSE_S} s")
        time.sleep(PAUSE_S)
    kept = {how: [round(x, 4) for x in round_ratios(records[how], records["base"])] for how in METHODS}
    write_json(folder / "timing.json", {"batch": batch, "rounds": rounds, "kept": kept, "untrusted": problems,
                                        "median_ms": {k: round(r["median_ms"], 4) for k, r in records.items()}})
    log(f"timed {folder}: {kept}")


def finetune(bench: Bench, folder: Path) -> None:
    for how in METHODS:
        out = folder / f"{how}-ft{bench.epochs}"
        if (out / "model.pt").exists():
            continue
        log(f"fine-tuning {out} ({bench.epochs} epochs, lr {bench.lr})")
        finetune_pruned(folder / how, out, FinetuneSettings(epochs=bench.epochs, lr=bench.lr), data_dir=bench.data_dir,
                        progress=False, resume=True)
        log(f"fine-tuned {out}: top-1 {read_json(out / 'report.json')['top1_finetuned']:.2f}")


def rows(runs: Path, keys: list[str], batches: list[int]) -> list[dict]:
    """What is on disk so far, one row per model, batch and method."""
    table = []
    for key in keys:
        bench = benches(runs)[key]
        for batch in batches:
            folder = runs / key / f"b{batch}"
            timing = read_json(folder / "timing.json") if (folder / "timing.json").exists() else None
            for how in METHODS:
                if not (folder / how / "report.json").exists():
                    continue
                report = read_json(folder / how / "report.json")
                tuned = folder / f"{how}-ft{bench.epochs}" / "report.json"
                kept = timing["kept"][how] if timing else None
                table.append({"model": key, "batch": batch, "pruned_by": how, "top1_base": report["top1_before"],
                              "kept_by_prune": (report["latency"] or {}).get("kept"),
                              "target_met": (report["latency"] or {}).get("met"),
                              "kept_checked": kept, "checked_untrusted": bool(timing and timing["untrusted"]),
                              "macs_kept": report["macs_kept"],
                              "macs_speedup": report["macs_speedup"],
                              "measured_speedup": round(1 / kept[0], 3) if kept else None,
                              "top1_pruned": report["top1_pruned"],
                              "top1_finetuned": read_json(tuned)["top1_finetuned"] if tuned.exists() else None,
                              "finetune": {"epochs": bench.epochs, "lr": bench.lr}})
    return table


def markdown(table: list[dict], runs: Path) -> str:
    lines = [f"Measured {datetime.date.today()} on {platform.machine()} ({os.cpu_count()} cores), torch "
             f"{torch.__version__}, namprune {namprune.__version__}; onnxruntime, 1 thread. 'checked': the unpruned "
             "and both pruned ONNX files timed side by side in one run (median of per-round ratios, [lowest, "
             "highest]; '!': some rounds disagreed by more than namprune's 20 % limit even after a retry). "
             "Top-1 right after pruning is after BatchNorm recalibration; fine-tuning is the same for both methods "
             "(epochs and lr below, cosine, batch size 128, seed 0 from the base's training config). Runs "
             f"kept in {runs}.", "",
             "Command: `OMP_NUM_THREADS=1 python benchmarks/latency_finetuned.py`", "",
             "| model | batch | pruned by | latency kept (prune's check) | latency kept (checked) | MACs kept "
             "| measured speed-up | MACs speed-up | measured / MACs | top-1 pruned | top-1 fine-tuned |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        ft = r["finetune"]
        checked = (f"{r['kept_checked'][0]:.3f} [{r['kept_checked'][1]:.2f}, {r['kept_checked'][2]:.2f}]"
                   f"{'!' if r['checked_untrusted'] else ''}"
                   if r["kept_checked"] else "-")
        ratio = f"{r['measured_speedup'] / r['macs_speedup']:.2f}" if r["measured_speedup"] else "-"
        tuned = "-" if r["top1_finetuned"] is None else f"{r['top1_finetuned']:.2f} ({ft['epochs']} ep, lr {ft['lr']})"
        by_prune = "-" if r["kept_by_prune"] is None else f"{r['kept_by_prune']:.3f}"
        by_prune += "" if r["target_met"] in (None, True) else " (missed)"
        lines.append(f"| {r['model']} (base {r['top1_base']:.2f}) | {r['batch']} | {r['pruned_by']} | "
                     f"{by_prune} | {checked} | {r['macs_kept']:.3f} "
                     f"| {r['measured_speedup'] or '-'} | {r['macs_speedup']:.3f} | {ratio} | {r['top1_pruned']:.2f} "
                     f"| {tuned} |")
    return "\n".join(lines) + "\n"


def report(runs: Path, keys: list[str], batches: list[int]) -> None:
    table = rows(runs, keys, batches)
    save("latency_finetuned", markdown(table, runs), {"target_latency": TARGET, "rows": table})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=MAIN_RUNS / "latency-ft", help="where every run is kept")
    parser.add_argument("--models", nargs="+", default=["r20", "r56"], choices=["r20", "r56"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=21, help="rounds of the side-by-side timing")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the results from the runs kept")
    args = parser.parse_args()
    if args.report_only:
        return report(args.runs, args.models, args.batches)
    all_benches = benches(args.runs)
    for key in args.models:  # pruning and timing first, while the machine is quiet
        if key == "r56":
            train_base(all_benches[key])
        for batch in args.batches:
            folder = args.runs / key / f"b{batch}"
            prune_pair(all_benches[key], folder, batch)
            time_pair(all_benches[key], folder, batch, args.rounds)
            report(args.runs, args.models, args.batches)
    for key in reversed(args.models):  # the cheap digits fine-tuning first
        for batch in args.batches:
            finetune(all_benches[key], args.runs / key / f"b{batch}")
            report(args.runs, args.models, args.batches)


if __name__ == "__main__":
    main()
