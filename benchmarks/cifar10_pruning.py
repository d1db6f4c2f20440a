"""Does namprune's default pipeline pick better channels than Network Slimming, L1, Taylor and
random ranking? ResNet-20 on CIFAR-10 (JPEG q75), at the budget of a reference run of
torch-pruning alone on the build machine.

One command, from a clean checkout, regenerates the tables in BENCHMARKS.md:

    python benchmarks/cifar10_pruning.py

It unpacks ../shared/data/cifar10-jpeg.tar.gz, trains the base models of every seed
(12 epochs: SGD 0.1 with Nesterov momentum, one-cycle schedule, batch 128, weight decay
5e-4), prunes each method's base to 2x fewer MACs, fine-tunes 4 epochs at lr 0.01, exports
every model to ONNX and times it in onnxruntime side by side, and writes
benchmarks/results/cifar10_pruning.{json,md} and BENCHMARKS.md between its markers.
Every finished step is kept in --work and skipped when the script runs again, so a stopped
run continues where it was.

Bases (per seed):
  namprune  `namprune train` with its defaults (NAM attention, sparsity penalty)
  paper     NAM attention, the paper's penalty: p = 1e-4 on NAM's scale factors, weight decay on them
  slim      no attention, penalty on every BatchNorm (Network Slimming), the same strength
  plain     no attention, no penalty
Methods: a base, an importance and a fine-tuning loss; every method is pruned by the same
cost-aware global allocation to the same MACs and recalibrated on the same images.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import statistics
import tarfile
import time

from pathlib import Path

import torch

import namprune
from namprune import TrainConfig, evaluate
from namprune.core import checkpoint
from namprune.core.calibrate import recalibrate_batchnorm
from namprune.app.exporting import export_checkpoint
from namprune.core.files import read_json, staging_dir, write_json, write_text
from namprune.core.settings import (DEFAULT_DISTILL, DEFAULT_IMPORTANCE, IMPORTANCES, PAPER_STRENGTH, PAPER_TARGETS,
                                    FinetuneSettings, LatencySettings, PruneConfig)
from namprune.app.stages import compatible_data, prune_checkpoint, resume_training, train_model
from namprune.core.prune import prune
from namprune.core.timing import measure_latency, speedups

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- cifar10_pruning:begin -->", "<!-- cifar10_pruning:end -->"

# base -> (attention, TrainConfig changes from namprune's defaults)
BASES = {
    "namprune": ("nam", {}),
    "paper": ("nam", dict(sparsity=PAPER_STRENGTH, sparsity_targets=PAPER_TARGETS, bn_weight_decay=True)),
    "slim": ("none", dict(sparsity_targets="bn")),  # the same (default) strength
    "plain": ("none", dict(sparsity=0.0)),
}
OTHER_DISTILL = 0.0 if DEFAULT_DISTILL else 0.9  # the fine-tuning namprune does not default to, for comparison
# method -> (base, importance, distillation weight while fine-tuning). The first five share
# namprune's base, so they compare rankings (and recovery) on one model; the rest are the
# usual baselines on the model each of them assumes.
METHODS = {
    "namprune": ("namprune", DEFAULT_IMPORTANCE, DEFAULT_DISTILL),
    "namprune, " + ("plain fine-tuning" if DEFAULT_DISTILL else "distilled"): ("namprune", DEFAULT_IMPORTANCE, OTHER_DISTILL),
    "slim ranking, namprune base": ("namprune", "slim", DEFAULT_DISTILL),
    "taylor ranking, namprune base": ("namprune", "taylor", DEFAULT_DISTILL),
    "random ranking, namprune base": ("namprune", "random", DEFAULT_DISTILL),
    "paper (NAM w)": ("paper", "nam-w", DEFAULT_DISTILL),
    "slim": ("slim", "slim", DEFAULT_DISTILL),
    "l1": ("plain", "l1", DEFAULT_DISTILL),
    "taylor": ("plain", "taylor", DEFAULT_DISTILL),
    "random": ("plain", "random", DEFAULT_DISTILL),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cifar10-bench")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=12, help="training epochs of every base model")
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--only-train", nargs="*", help="train these bases of every seed and stop")
    parser.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = parser.parse_args()

    started = time.time()
    data_dir = unpack(args.archive, args.work / "cifar10")
    methods = args.methods
    if args.only_train is not None:
        for seed in args.seeds:
            for base in args.only_train or BASES:
                train(base, seed, data_dir, args)
        return
    results = []
    for seed in args.seeds:
        for method in methods:
            train(METHODS[method][0], seed, data_dir, args)
            results.append(prune_and_finetune(method, seed, data_dir, args))
    study = [row for seed in args.seeds for row in ranking_study(seed, data_dir, args)]
    latency = side_by_side([r["folder"] for r in results if r["seed"] == args.seeds[0]], data_dir, args)
    text = markdown(results, study, latency, args, time.time() - started)
    print(text)
    out = ROOT / "benchmarks" / "results"
    write_json(out / "cifar10_pruning.json", {"results": results, "ranking_study": study, "latency": latency,
                                              "args": {k: str(v) for k, v in vars(args).items()}})
    write_text(out / "cifar10_pruning.md", text)
    if not args.no_update:
        update_benchmarks(text)


def unpack(archive: Path, target: Path) -> Path:
    if not (target / "test").is_dir():
        print(f"unpacking {archive} -> {target}", flush=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target


def base_dir(base: str, seed: int, args) -> Path:
    return args.work / f"seed{seed}" / f"train-{base}"


def train(base: str, seed: int, data_dir: Path, args) -> None:
    out = base_dir(base, seed, args)
    if out.exists():
        return
    if (staging_dir(out) / "train_state.pt").exists():
        print(f"resuming base {base}, seed {seed}", flush=True)
        resume_training(out, data_dir, progress=False)
        return
    attention, changes = BASES[base]
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.1, seed=seed).with_(**changes)
    print(f"training base {base}, seed {seed}", flush=True)
    train_model("resnet20", "cifar10", cfg, out, data_dir=data_dir, attention=attention, progress=False)


def method_folder(method: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")


def prune_and_finetune(method: str, seed: int, data_dir: Path, args) -> dict:
    base, importance, distill = METHODS[method]
    out = args.work / f"seed{seed}" / f"prune-{method_folder(method)}"
    if not out.exists():
        print(f"pruning {method}, seed {seed}", flush=True)
        cfg = PruneConfig(ratio=None, target_macs=args.target_macs, importance=importance, seed=seed)
        finetune = FinetuneSettings(epochs=args.finetune_epochs, lr=args.finetune_lr, distill=distill)
        prune_checkpoint(base_dir(base, seed, args), cfg, out, finetune, data_dir=data_dir, progress=False, resume=True)
    report = read_json(out / "report.json")
    return {"method": method, "seed": seed, "base": base, "importance": importance, "distill": distill,
            "folder": str(out), "base_folder": str(base_dir(base, seed, args)),
            **{k: report[k] for k in ("top1_before", "top1_pruned_uncalibrated", "top1_pruned", "top1_finetuned",
                                      "params_before", "params_after", "macs_before", "macs_after", "ratio")}}


def ranking_study(seed: int, data_dir: Path, args) -> list[dict]:
    """Every importance on the same model (each base that was trained): top-1 right after
    pruning to the MACs target, before and after BatchNorm recalibration. The ranking alone
    is judged."""
    rows = []
    for base in ("namprune", "plain"):
        if not base_dir(base, seed, args).exists():
            continue
        path = args.work / f"seed{seed}" / f"ranking-study-{base}.json"
        if not path.exists():
            write_json(path, rank_one_base(base, seed, data_dir, args))
        rows += read_json(path)
    return rows


def rank_one_base(base: str, seed: int, data_dir: Path, args) -> list[dict]:
    payload = checkpoint.read(base_dir(base, seed, args))
    data = compatible_data(payload, data_dir, 128, "cpu")
    rows = []
    for importance in IMPORTANCES:
        model = checkpoint.build(payload).eval()
        cfg = PruneConfig(ratio=None, target_macs=args.target_macs, importance=importance, seed=seed, recalibrate=False)
        result = prune(model, cfg, data.calibration)
        raw = evaluate(model, data.test)["top1"]
        recalibrate_batchnorm(model, data.calibration, cfg.calibration_images)
        rows.append({"seed": seed, "base": base, "importance": importance, "top1_pruned_uncalibrated": raw,
                     "top1_pruned": evaluate(model, data.test)["top1"], "ratio": result.ratio})
        print(rows[-1], flush=True)
    return rows


def side_by_side(folders: list[str], data_dir: Path, args) -> dict:
    """onnxruntime latency of every pruned model and its base, timed side by side in
    interleaved rounds (the project's timing path: median of rounds, trust verdict)."""
    files = {}
    for folder in folders:
        for run in (Path(folder), Path(read_json(Path(folder) / "report.json")["source"]).parent):
            target = run.with_name(f"onnx-{run.name}") / "model.onnx"
            if not target.exists():
                export_checkpoint(run, target, data_dir=data_dir, latency=None)
            files[str(run)] = target
    records = measure_latency(files, LatencySettings(rounds=7))
    return {"settings": "1 thread, median of 7 interleaved rounds", "records": records,
            "ms": {run: {str(b): r["median_ms"] for b, r in by_batch.items()} for run, by_batch in records.items()},
            "trusted": all(r["trusted"] for by_batch in records.values() for r in by_batch.values()),
            "speedups": {folder: speedups(records, str(Path(read_json(Path(folder) / "report.json")["source"]).parent),
                                          folder) for folder in folders}}


def _mean(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    each = " / ".join(f"{v:.2f}" for v in values)
    return f"**{statistics.mean(values):.2f}** ({each})" if len(values) > 1 else f"{values[0]:.2f}"


def markdown(results: list[dict], study: list[dict], latency: dict, args, elapsed: float) -> str:
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()} ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, namprune {namprune.__version__}. Data: **CIFAR-10 (JPEG q75)** from "
        f"../shared/data. ResNet-20, {args.epochs} training epochs (SGD 0.1, Nesterov, one-cycle, batch 128, weight "
        f"decay 5e-4 except on BatchNorm scale factors where namprune's default), every method pruned to keep "
        f"{args.target_macs:.0%} of the MACs by the same cost-aware global allocation, BatchNorm statistics "
        f"recalibrated on 1024 training images, then fine-tuned {args.finetune_epochs} epochs (lr "
        f"{args.finetune_lr}, cosine). Seeds {seeds}: bold is the mean, the seeds follow in brackets. "
        f"{elapsed / 3600:.1f} hours in all.",
        "",
        "Command: `python benchmarks/cifar10_pruning.py`",
        "",
        "| method | base | importance | top-1 unpruned | right after pruning | after recalibration | after fine-tuning "
        "| params kept | MACs kept |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        r0 = rows[0]
        lines.append(f"| {method} | {r0['base']} | {r0['importance']}{', distilled' if r0['distill'] else ''} | "
                     f"{_mean(rows, 'top1_before')} | {_mean(rows, 'top1_pruned_uncalibrated')} | "
                     f"{_mean(rows, 'top1_pruned')} | {_mean(rows, 'top1_finetuned')} | "
                     f"{statistics.mean(r['params_after'] / r['params_before'] for r in rows):.2f} | "
                     f"{statistics.mean(r['macs_after'] / r['macs_before'] for r in rows):.3f} |")
    lines += ["", f"Ranking alone: every importance on the same model (seeds {seeds}), pruned by the same allocation "
              f"to {args.target_macs:.0%} of the MACs, no fine-tuning; top-1 right after pruning / after BatchNorm "
              "recalibration:", "",
              "| importance | " + " | ".join(f"{b} base" for b in dict.fromkeys(r["base"] for r in study)) + " |",
              "|---|" + "---:|" * len(dict.fromkeys(r["base"] for r in study))]
    for importance in dict.fromkeys(r["importance"] for r in study):
        cells = []
        for base in dict.fromkeys(r["base"] for r in study):
            rows = [r for r in study if r["importance"] == importance and r["base"] == base]
            cells.append(f"{_mean(rows, 'top1_pruned_uncalibrated')} / {_mean(rows, 'top1_pruned')}")
        lines.append(f"| {importance} | " + " | ".join(cells) + " |")
    if latency:
        trust = "every figure trusted" if latency["trusted"] else "some figures flagged untrusted (a busy machine)"
        lines += ["", f"onnxruntime latency (seed {args.seeds[0]}), {latency['settings']}, {trust}; speed-up = median "
                  "of per-round ratios against the method's own unpruned base:", "",
                  "| model | batch 1 ms | batch 32 ms | speed-up b1 / b32 |", "|---|---:|---:|---:|"]
        for r in (r for r in results if r["seed"] == args.seeds[0]):
            mine, up = latency["ms"][r["folder"]], latency["speedups"][r["folder"]]
            lines.append(f"| {r['method']} | {mine['1']:.2f} | {mine['32']:.1f} | {up['1']:.2f}x / {up['32']:.2f}x |")
    return "\n".join(lines) + "\n"


def update_benchmarks(table: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    if BEGIN not in text:
        print(f"BENCHMARKS.md has no {BEGIN} marker; not updated")
        return
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{table}{END}", text, flags=re.S)
    write_text(path, text)


if __name__ == "__main__":
    main()
