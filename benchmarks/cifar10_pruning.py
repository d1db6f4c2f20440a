"""Does namprune's pipeline give a better pruned model than torch-pruning alone, at the same
budget and the same measured latency? ResNet-20 on CIFAR-10 (JPEG q75).

One command, from a clean checkout, regenerates the tables in BENCHMARKS.md:

    python benchmarks/cifar10_pruning.py

It unpacks ../shared/data/cifar10-jpeg.tar.gz, trains the base models of every seed
(12 epochs: SGD 0.1 with Nesterov momentum, one-cycle schedule, batch 128, weight decay
5e-4), prunes each method's base to 2x fewer MACs, fine-tunes 4 epochs at lr 0.01, exports
every model to ONNX and times it in onnxruntime side by side, and writes
benchmarks/results/cifar10_pruning.{json,md}, the plot docs/cifar10_pruning.png and
BENCHMARKS.md between its markers. Every finished step is kept in --work and skipped when
the script runs again, so a stopped run continues where it was; ``--no-report`` computes
rows only (two processes can share the work, one base each).

Bases (per seed), all trained by namprune's training loop with the settings above:
  namprune    NAM attention, planned shrinking, no weight decay on the scale factors
              (`namprune train`'s defaults until issue 20)
  namprune-noattn  the same without attention, weight decay on every parameter as tp-plain
              (shrinking planned by the NAM score, as it was then)
  namprune-shrink  `namprune train`'s defaults now: no attention, weight decay on every
              parameter, planned shrinking planned by the l1 ranking a model without NAM gets
  tp-plain    no attention, no penalty, weight decay on every parameter (torch-pruning's
              example trains its CIFAR models this way)
  tp-slim     tp-plain plus torch-pruning's BNScalePruner.regularize (L1 1e-4 on every
              BatchNorm scale) after each backward pass: its Network Slimming recipe
  tp-group    tp-plain plus GroupNormPruner.regularize (group sparsity, reg 5e-4, its CIFAR
              default)
Methods: a base, a pruner and a fine-tuning. namprune methods prune with namprune (its
ranking, cost-aware allocation, BatchNorm recalibration); torch-pruning methods with
torch-pruning's own pruner, importance and global ranking, stepped until the MACs target
is met as its benchmark does, with round_to=8. Every method is fine-tuned the same way.
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
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch_pruning as tp

import namprune
from namprune import TrainConfig, evaluate
from namprune.app.exporting import export_checkpoint
from namprune.app.stages import compatible_data, finetune_pruned, prune_checkpoint, resume_training, train_model
from namprune.core import models
from namprune.core.data.datasets import load_data
from namprune.core.deploy.timing import measure_latency, speedups
from namprune.core.identity import classifier_name, example_input, set_pruning_history
from namprune.core.pruning.cost import count_macs, count_params
from namprune.core.pruning.prune import prune
from namprune.core.settings import (DEFAULT_DISTILL, DEFAULT_IMPORTANCE, IMPORTANCE_REGISTRY, FinetuneSettings, LatencySettings,
                                    PruneConfig)
from namprune.core.store import checkpoint
from namprune.core.store.files import read_json, run_dir, staging_dir, write_json, write_text
from namprune.core.store.records import TRAIN_STATE, PruneReport
from namprune.core.training.loop import fit
from namprune.core.training.state import load_train_state, seed_everything

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- cifar10_pruning:begin -->", "<!-- cifar10_pruning:end -->"
TP_TRAINING = dict(sparsity=0.0, shrink_macs=0.0, bn_weight_decay=True)  # torch-pruning's example: weight decay on everything

# base -> (attention, TrainConfig changes from namprune's defaults, torch-pruning regularizer or None)
BASES = {
    "namprune": ("nam", dict(sparsity=0.0, shrink_macs=0.5, shrink_start=0.5, bn_weight_decay=False), None),
    "namprune-noattn": ("none", dict(bn_weight_decay=True), None),
    # no attention, weight decay on every parameter, planned shrinking planned by the ranking a
    # model without NAM gets (l1): each setting named, so the base keeps its meaning if defaults move
    "namprune-shrink": ("none", dict(sparsity=0.0, shrink_macs=0.5, shrink_start=0.5, bn_weight_decay=True), None),
    # the same, shrinking planned with the allocation in blocks (--scope blocks)
    "namprune-shrink-blocks": ("none", dict(sparsity=0.0, shrink_macs=0.5, shrink_start=0.5, bn_weight_decay=True,
                                            shrink_scope="blocks"), None),
    # the same, shrinking from three quarters of the run instead of half
    "namprune-shrink-late": ("none", dict(sparsity=0.0, shrink_macs=0.5, shrink_start=0.75, bn_weight_decay=True), None),
    "tp-plain": ("none", TP_TRAINING, None),
    "tp-slim": ("none", TP_TRAINING, ("slim", 1e-4)),
    "tp-group": ("none", TP_TRAINING, ("group", 5e-4)),
}
OTHER_DISTILL = 0.0 if DEFAULT_DISTILL else 0.9  # the fine-tuning namprune does not default to, for comparison
ROUND_TO = 8
PLAIN_DEFAULT = dict(normalization="mean", cost_exponent=0.0)  # named, so the rows keep their meaning if defaults move


class Method(NamedTuple):
    """A base, a pruner ("namprune": namprune.prune with ``options`` on top of its defaults;
    "tp": torch-pruning's own pruner for ``importance``) and a fine-tuning (``distill``:
    weight of distillation from the unpruned model)."""

    base: str
    pruner: str
    importance: str
    distill: float = DEFAULT_DISTILL
    round_to: int = ROUND_TO
    options: dict = {}
    finetune_lr: float | None = None  # None: --finetune-lr, as every other method


METHODS = {
    "namprune": Method("namprune", "namprune", DEFAULT_IMPORTANCE),
    "namprune, " + ("plain fine-tuning" if DEFAULT_DISTILL else "distilled"):
        Method("namprune", "namprune", DEFAULT_IMPORTANCE, OTHER_DISTILL),
    "namprune, fine-tuning lr 0.04": Method("namprune", "namprune", DEFAULT_IMPORTANCE, finetune_lr=0.04),
    "namprune, no attention": Method("namprune-noattn", "namprune", "nam"),
    # namprune's defaults since issue 20: no attention, planned shrinking, auto importance (l1 for
    # a model without NAM), fine-tuning at 0.4 x the training learning rate
    "namprune defaults (no attention, l1 shrinking), fine-tuning lr 0.04":
        Method("namprune-shrink", "namprune", "l1", options=PLAIN_DEFAULT, finetune_lr=0.04),
    "namprune defaults, shrinking from 0.75 of the run, fine-tuning lr 0.04":
        Method("namprune-shrink-late", "namprune", "l1", options=PLAIN_DEFAULT, finetune_lr=0.04),
    # the same with the allocation in blocks, for shrinking and pruning alike
    "namprune blocks (shrinking and pruning in blocks), fine-tuning lr 0.04":
        Method("namprune-shrink-blocks", "namprune", "l1", options={**PLAIN_DEFAULT, "scope": "blocks"}, finetune_lr=0.04),
    "namprune blocks, tp-plain base, fine-tuning lr 0.04":
        Method("tp-plain", "namprune", "l1", options={**PLAIN_DEFAULT, "scope": "blocks"}, finetune_lr=0.04),
    "namprune, unrounded widths": Method("namprune", "namprune", DEFAULT_IMPORTANCE, round_to=1),
    "namprune ranking, tp-slim base": Method("tp-slim", "namprune", "nam"),
    "namprune ranking, tp-plain base": Method("tp-plain", "namprune", "nam"),
    # What `namprune prune` does by default with a model trained without NAM (auto importance: l1,
    # mean normalization, channels by score alone), as plain + torch-pruning's L1 example does.
    "namprune l1 global, tp-plain base": Method("tp-plain", "namprune", "l1", 0.0, options=PLAIN_DEFAULT),
    "namprune l1 global, tp-plain base, distilled": Method("tp-plain", "namprune", "l1", 0.9, options=PLAIN_DEFAULT),
    "namprune l1 global, tp-plain base, fine-tuning lr 0.04":
        Method("tp-plain", "namprune", "l1", 0.0, options=PLAIN_DEFAULT, finetune_lr=0.04),
    "tp Slimming (BNScalePruner)": Method("tp-slim", "tp", "slim", 0.0),
    "tp group norm (GroupNormPruner)": Method("tp-group", "tp", "group", 0.0),
    "tp Taylor": Method("tp-plain", "tp", "taylor", 0.0),
    "tp L1": Method("tp-plain", "tp", "l1", 0.0),
    "tp L1, fine-tuning lr 0.04": Method("tp-plain", "tp", "l1", 0.0, finetune_lr=0.04),
    # torch-pruning's allocation (it keeps the last stage's residual stream) on the base that
    # namprune's planned shrinking trained for namprune's own allocation
    "tp L1 on namprune's shrinking base, fine-tuning lr 0.04": Method("namprune-shrink", "tp", "l1", 0.0, finetune_lr=0.04),
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
    parser.add_argument("--no-report", action="store_true", help="compute the rows and stop (no timing, no tables)")
    parser.add_argument("--ranking-study", action="store_true",
                        help="also rank the namprune and tp-plain bases by every importance (no fine-tuning)")
    parser.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md")
    parser.add_argument("--report-only", action="store_true",
                        help="time and tabulate the rows already finished in --work (train and prune nothing)")
    args = parser.parse_args()

    started = time.time()
    data_dir = unpack(args.archive, args.work / "cifar10")
    if args.only_train is not None:
        for seed in args.seeds:
            for base in args.only_train or BASES:
                train(base, seed, data_dir, args)
        return
    results = []
    for seed in args.seeds:
        for method in args.methods:
            if args.report_only:
                if not (method_dir(method, seed, args) / "report.json").exists():
                    print(f"not run yet: {method}, seed {seed}", flush=True)
                    continue
            else:
                train(METHODS[method].base, seed, data_dir, args)
            results.append(prune_and_finetune(method, seed, data_dir, args))
    if args.no_report:
        return
    study = [row for seed in args.seeds for row in ranking_study(seed, data_dir, args)] if args.ranking_study else []
    latency = side_by_side([r["folder"] for r in results if r["seed"] == args.seeds[0]], data_dir, args)
    text = markdown(results, study, latency, args, time.time() - started)
    print(text)
    out = ROOT / "benchmarks" / "results"
    write_json(out / "cifar10_pruning.json", {"results": results, "ranking_study": study, "latency": latency,
                                              "args": {k: str(v) for k, v in vars(args).items()}})
    write_text(out / "cifar10_pruning.md", text)
    plot(results, latency, args, ROOT / "docs" / "cifar10_pruning.png")
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
    attention, changes, regularizer = BASES[base]
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.1, seed=seed).with_(**changes)
    if regularizer is not None:
        train_regularized(out, cfg, regularizer, data_dir)
    elif (staging_dir(out) / TRAIN_STATE).exists():
        print(f"resuming base {base}, seed {seed}", flush=True)
        resume_training(out, data_dir, progress=False)
    else:
        print(f"training base {base}, seed {seed}", flush=True)
        train_model("resnet20", "cifar10", cfg, out, data_dir=data_dir, attention=attention, progress=False)


def tp_pruner(model: torch.nn.Module, importance: str, **options) -> tp.pruner.BasePruner:
    """torch-pruning's pruner for ``importance``, built as its CIFAR benchmark builds it:
    global ranking, the classifier kept whole."""
    kinds = {"slim": (tp.pruner.BNScalePruner, tp.importance.BNScaleImportance()),
             "group": (tp.pruner.GroupNormPruner, tp.importance.GroupMagnitudeImportance(p=2)),
             "taylor": (tp.pruner.MagnitudePruner, tp.importance.GroupTaylorImportance()),
             "l1": (tp.pruner.MagnitudePruner, tp.importance.GroupMagnitudeImportance(p=1))}
    cls, imp = kinds[importance]
    return cls(model, example_input(model), importance=imp, global_pruning=True,
               ignored_layers=[model.get_submodule(classifier_name(model))], **options)


def train_regularized(out: Path, cfg: TrainConfig, regularizer: tuple[str, float], data_dir: Path) -> None:
    """A base trained with torch-pruning's sparsity learning: its pruner's ``regularize`` after
    every backward pass (resumable like ``namprune train``)."""
    importance, reg = regularizer
    saved = load_train_state(staging_dir(out))
    cfg = cfg.with_(extra={"model": "resnet20", "dataset": "cifar10", "attention": "none", "data_dir": str(data_dir),
                           "regularizer": f"torch-pruning {importance} reg {reg}"})
    data = load_data("cifar10", data_dir, None, cfg.batch_size, "cpu", seed=cfg.seed)
    if saved is None:
        seed_everything(cfg.seed)
        model = models.create("resnet20", 10, "none", 32, 3)
    else:
        model = checkpoint.build(saved)
    print(f"{'resuming' if saved else 'training'} {out.name} ({importance} reg {reg})", flush=True)
    pruner = tp_pruner(model, importance, reg=reg)
    with run_dir(out, resume=saved is not None) as stage:
        fit(model, data, cfg, stage, progress=False, resume=saved and saved["train_state"],
            after_backward=pruner.regularize)
        (stage / TRAIN_STATE).unlink(missing_ok=True)


def method_folder(method: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")


def method_dir(method: str, seed: int, args) -> Path:
    return args.work / f"seed{seed}" / f"prune-{method_folder(method)}"


def prune_and_finetune(method: str, seed: int, data_dir: Path, args) -> dict:
    base, pruner, importance, distill, round_to, options, finetune_lr = METHODS[method]
    out = method_dir(method, seed, args)
    finetune = FinetuneSettings(epochs=args.finetune_epochs, lr=finetune_lr or args.finetune_lr, distill=distill)
    if not out.exists():
        print(f"pruning {method}, seed {seed}", flush=True)
        if pruner == "namprune":
            cfg = PruneConfig(ratio=None, target_macs=args.target_macs, importance=importance, seed=seed,
                              round_to=round_to, **options)
            prune_checkpoint(base_dir(base, seed, args), cfg, out, finetune, data_dir=data_dir, progress=False,
                             resume=True)
        else:
            pruned = out.with_name(out.name + "-pruned")
            if not pruned.exists():
                tp_prune(base_dir(base, seed, args), importance, round_to, pruned, data_dir, args)
            finetune_pruned(pruned, out, finetune, data_dir=data_dir, progress=False, resume=True)
    report = read_json(out / "report.json")
    applied = report["importance"] if pruner == "namprune" else importance  # "auto" as the model resolved it
    return {"method": method, "seed": seed, "base": base, "pruner": pruner, "importance": applied,
            "distill": distill, "round_to": round_to, "options": options, "finetune_lr": finetune.lr, "folder": str(out), "base_folder": str(base_dir(base, seed, args)),
            **{k: report[k] for k in ("top1_before", "top1_pruned_uncalibrated", "top1_pruned", "top1_finetuned",
                                      "params_before", "params_after", "macs_before", "macs_after", "ratio")}}


def tp_prune(base: Path, importance: str, round_to: int, out: Path, data_dir: Path, args) -> None:
    """Prune ``base`` with torch-pruning alone, as its benchmark does: small global steps
    until the MACs target is met (no recalibration; fine-tuning follows)."""
    payload = checkpoint.read(base)
    data = compatible_data(payload, data_dir, 128, "cpu", augment=False)
    model = checkpoint.build(payload).eval()
    before = {"params": count_params(model), "macs": count_macs(model), **evaluate(model, data.test)}
    pruner = tp_pruner(model, importance, pruning_ratio=1.0, max_pruning_ratio=1.0, iterative_steps=200,
                       round_to=round_to)
    while count_macs(model) > args.target_macs * before["macs"] and pruner.current_step < pruner.iterative_steps:
        if importance == "taylor":  # gradients of the loss on 1024 training images, as the importance needs
            model.zero_grad()
            for index, (images, labels) in enumerate(data.calibration):
                F.cross_entropy(model(images), labels).backward()
                if index == 7:
                    break
        pruner.step()
    model.zero_grad()
    set_pruning_history(model, pruner.pruning_history())
    after = {"params": count_params(model), "macs": count_macs(model), **evaluate(model, data.test)}
    report = PruneReport(source=str(checkpoint.model_file(base).resolve()), model="resnet20", attention="none",
                         dataset="cifar10", ratio=0.0, target_macs=args.target_macs, importance=f"torch-pruning {importance}",
                         round_to=round_to, params_before=before["params"], params_after=after["params"],
                         macs_before=before["macs"], macs_after=after["macs"],
                         macs_kept=round(after["macs"] / before["macs"], 4), top1_before=before["top1"],
                         top1_pruned=after["top1"], top1_pruned_uncalibrated=after["top1"], recalibrated=False)
    with run_dir(out) as stage:
        checkpoint.save(stage / "model.pt", model, payload["data"], metrics={"top1": after["top1"]},
                        config=payload["config"])
        write_json(stage / "report.json", report.to_json())


def ranking_study(seed: int, data_dir: Path, args) -> list[dict]:
    """Every importance on the same model (each base that was trained): top-1 right after
    pruning to the MACs target, before and after BatchNorm recalibration. The ranking alone
    is judged."""
    rows = []
    for base in ("namprune", "tp-plain"):
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
    for importance in IMPORTANCE_REGISTRY:
        model = checkpoint.build(payload).eval()
        cfg = PruneConfig(ratio=None, target_macs=args.target_macs, importance=importance, seed=seed)
        result = prune(model, cfg, data.calibration, before_recalibration=lambda pruned: evaluate(pruned, data.test))
        raw = result.uncalibrated["top1"]
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


def _describe(row: dict) -> str:
    how = f"namprune {row['importance']}" if row["pruner"] == "namprune" else f"torch-pruning {row['importance']}"
    options = "".join(f", {value} normalization" if key == "normalization"
                      else f", {key.replace('_', ' ')} {value:g}" if isinstance(value, float) else f", {key} {value}"
                      for key, value in row.get("options", {}).items())
    lr = f", fine-tuning lr {row['finetune_lr']:g}" if row.get("finetune_lr", 0.01) != 0.01 else ""
    return (how + options + (", distilled" if row["distill"] else "") + lr
            + (f", round to {row['round_to']}" if row["round_to"] > 1 else ""))


def markdown(results: list[dict], study: list[dict], latency: dict, args, elapsed: float) -> str:
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()} ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, torch-pruning {tp.__version__}, namprune {namprune.__version__}. Data: "
        f"**CIFAR-10 (JPEG q75)** from ../shared/data. ResNet-20, {args.epochs} training epochs (namprune's loop: SGD "
        f"0.1, Nesterov, one-cycle, batch 128, weight decay 5e-4), every method pruned to keep {args.target_macs:.0%} "
        f"of the MACs, then fine-tuned {args.finetune_epochs} epochs (lr {args.finetune_lr}, cosine). namprune rows "
        "prune with namprune (ranking, cost-aware allocation, BatchNorm recalibration on 1024 training images); "
        "torch-pruning rows with its own pruner and global ranking, stepped to the target as its benchmark does. "
        f"Seeds {seeds}: bold is the mean, the seeds follow in brackets. "
        + ("Rows finished earlier in --work, tabulated and timed with --report-only."
           if args.report_only else f"{elapsed / 3600:.1f} hours in all."),
        "",
        "Command: `python benchmarks/cifar10_pruning.py`",
        "",
        "| method | base | pruned by | seeds | top-1 unpruned | right after pruning | after recalibration | after fine-tuning "
        "| params kept | MACs kept | b32 ms | speed-up b1 / b32 | measured / MACs speed-up b1 / b32 |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        r0 = rows[0]
        calibrated = _mean(rows, "top1_pruned") if r0["pruner"] == "namprune" else "-"
        timing = "| - | - | - |"
        if latency and r0["seed"] == args.seeds[0]:
            ms, up = latency["ms"][r0["folder"]], latency["speedups"][r0["folder"]]
            macs_up = r0["macs_before"] / r0["macs_after"]
            timing = (f"| {ms['32']:.1f} | {up['1']:.2f}x / {up['32']:.2f}x | "
                      f"{up['1'] / macs_up:.2f} / {up['32'] / macs_up:.2f} |")
        lines.append(f"| {method} | {r0['base']} | {_describe(r0)} | {', '.join(str(r['seed']) for r in rows)} | "
                     f"{_mean(rows, 'top1_before')} | "
                     f"{_mean(rows, 'top1_pruned_uncalibrated')} | {calibrated} | {_mean(rows, 'top1_finetuned')} | "
                     f"{statistics.mean(r['params_after'] / r['params_before'] for r in rows):.2f} | "
                     f"{statistics.mean(r['macs_after'] / r['macs_before'] for r in rows):.3f} " + timing)
    if latency:
        trust = "every figure trusted" if latency["trusted"] else "some figures flagged untrusted (a busy machine)"
        lines += ["", f"Latency: onnxruntime on the exported files (seed {args.seeds[0]}), {latency['settings']}, "
                  f"{trust}; speed-up = median of per-round ratios against the method's own unpruned base, timed in "
                  "the same rounds. Plot: docs/cifar10_pruning.png (top-1 after fine-tuning against batch-32 latency)."]
    if study:
        bases = list(dict.fromkeys(r["base"] for r in study))
        lines += ["", f"Ranking alone: every importance on the same model (seeds {seeds}), pruned by namprune's "
                  f"allocation to {args.target_macs:.0%} of the MACs, no fine-tuning; top-1 right after pruning / after "
                  "BatchNorm recalibration:", "",
                  "| importance | " + " | ".join(f"{b} base" for b in bases) + " |", "|---|" + "---:|" * len(bases)]
        for importance in dict.fromkeys(r["importance"] for r in study):
            cells = []
            for base in bases:
                rows = [r for r in study if r["importance"] == importance and r["base"] == base]
                cells.append(f"{_mean(rows, 'top1_pruned_uncalibrated')} / {_mean(rows, 'top1_pruned')}")
            lines.append(f"| {importance} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], latency: dict, args, path: Path) -> None:
    """Top-1 after fine-tuning (mean over seeds) against measured batch-32 latency: one
    point per method, hollow where the timing was flagged untrusted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7))
    # points sit close together: each is numbered, and the key below the axes names it
    for number, method in enumerate(dict.fromkeys(r["method"] for r in results), 1):
        rows = [r for r in results if r["method"] == method]
        first = next(r for r in rows if r["seed"] == args.seeds[0])
        record = latency["records"][first["folder"]][32]
        top1 = statistics.mean(r["top1_finetuned"] for r in rows)
        colour = "tab:blue" if first["pruner"] == "namprune" else "tab:orange"
        ax.scatter(record["median_ms"], top1, s=40, color=colour if record["trusted"] else "none", edgecolors=colour,
                   label=f"{number}. {method}")
        ax.annotate(str(number), (record["median_ms"], top1), fontsize=8, xytext=(4, 2), textcoords="offset points")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, ncol=1, frameon=False)
    ax.set_xlabel("onnxruntime latency, batch 32, 1 thread (ms)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    ax.set_title(f"ResNet-20, CIFAR-10 (JPEG q75), {args.target_macs:.0%} of the MACs: blue namprune, orange "
                 "torch-pruning", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


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
