"""Does NAM ranking beat Network Slimming and L1 on real data? ResNet-20 on CIFAR-10 (JPEG q75).

One command, from a clean checkout, regenerates the table in BENCHMARKS.md:

    python benchmarks/cifar10_pruning.py

It unpacks ../shared/data/cifar10-jpeg.tar.gz, trains the base models, prunes each to the
same MACs target (2x fewer by default) and fine-tunes each with the same budget, exports
every model to ONNX and times it in onnxruntime, and writes the results to
benchmarks/results/cifar10_pruning.{json,md} and into BENCHMARKS.md between its markers.
Finished steps are kept in --work and skipped when the script is run again.

Methods (all pruned with namprune's global allocation to the same MACs):
  nam     NAM attention, L1 penalty on the NAM BatchNorms (the paper), NAM ranking
  nam-bn  NAM attention, L1 penalty on every BatchNorm, NAM ranking
  slim    no attention, L1 penalty on every BatchNorm, BatchNorm-gamma ranking (Network Slimming)
  l1      no attention, no sparse training, filter L1-norm ranking
  random  no attention, no sparse training, random ranking (the floor)
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import tarfile
import time
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

import namprune
from namprune import TrainConfig, checkpoint, evaluate
from namprune.export import export_checkpoint, record_path, run_onnx, session
from namprune.files import read_json, write_json, write_text
from namprune.pipeline import compatible_data, prune_checkpoint, train_model
from namprune.pruning import PruneConfig, prune
from namprune.saliency import NORMALIZATIONS

COMPARED = [n for n in NORMALIZATIONS if n != "auto"]  # auto is one of these, chosen per importance

ROOT = Path(__file__).resolve().parents[1]
# base training of each method: (attention, sparsity targets or None for no penalty)
TRAININGS = {"nam": ("nam", "nam"), "nam-bn": ("nam", "bn"), "slim": ("none", "bn"), "plain": ("none", None)}
METHODS = {"nam": ("nam", "nam"), "nam-bn": ("nam-bn", "nam"), "slim": ("slim", "slim"), "l1": ("plain", "l1"),
           "random": ("plain", "random")}  # method -> (training, importance)
BEGIN, END = "<!-- cifar10_pruning:begin -->", "<!-- cifar10_pruning:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cifar10-bench")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of every base model")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--sparsity", type=float, default=2e-3, help="L1 strength p of the sparse trainings")
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md")
    args = parser.parse_args()

    started = time.time()
    data_dir = unpack(args.archive, args.work / "cifar10")
    methods = args.methods.split(",")
    trainings = sorted({METHODS[m][0] for m in methods})
    for name in trainings:
        train(name, data_dir, args)
    normalizations = compare_normalizations(data_dir, args, [t for t in trainings if TRAININGS[t][1]])
    results = [prune_and_measure(m, data_dir, args) for m in methods]
    bases = {name: base_figures(name, data_dir, args) for name in trainings}
    # onnxruntime latency of every file, timed side by side in interleaved rounds (one run, one machine state)
    files = {f"train-{t}": args.work / f"onnx-train-{t}" / "model.onnx" for t in trainings}
    files.update({f"prune-{r['method']}": args.work / f"onnx-prune-{r['method']}" / "model.onnx" for r in results})
    latency = side_by_side(files)
    for name in trainings:
        bases[name]["ort_ms"] = latency[f"train-{name}"]
    for r in results:
        r["ort_ms"] = latency[f"prune-{r['method']}"]
    table = markdown(results, bases, args, time.time() - started) + normalization_markdown(normalizations, args)
    print(table)
    out = ROOT / "benchmarks" / "results"
    write_json(out / "cifar10_pruning.json", {"results": results, "bases": bases, "normalizations": normalizations,
                                              "args": vars(args) | {
        "archive": str(args.archive), "work": str(args.work)}})
    write_text(out / "cifar10_pruning.md", table)
    if not args.no_update:
        update_benchmarks(table)


def unpack(archive: Path, target: Path) -> Path:
    if not (target / "test").is_dir():
        print(f"unpacking {archive} -> {target}", flush=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target


def train(name: str, data_dir: Path, args) -> None:
    out = args.work / f"train-{name}"
    if out.exists():
        return
    attention, targets = TRAININGS[name]
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.1, schedule="cosine", weight_decay=5e-4,
                      sparsity=args.sparsity if targets else 0.0, sparsity_targets=targets or "nam", seed=args.seed)
    print(f"training {name}", flush=True)
    train_model("resnet20", "cifar10", cfg, out, data_dir=data_dir, attention=attention)


def exported(run: Path, data_dir: Path) -> dict:
    """The run's ONNX export (onnxruntime latency and parity), made once."""
    target = run.with_name(f"onnx-{run.name}") / "model.onnx"
    if not target.exists():
        export_checkpoint(run, target, data_dir=data_dir)
    return read_json(record_path(target))


def prune_and_measure(method: str, data_dir: Path, args) -> dict:
    training, importance = METHODS[method]
    out = args.work / f"prune-{method}"
    if not out.exists():
        print(f"pruning {method}", flush=True)
        cfg = PruneConfig(ratio=None, target_macs=args.target_macs, importance=importance, seed=args.seed)
        prune_checkpoint(args.work / f"train-{training}", cfg, out, finetune_epochs=args.finetune_epochs,
                         data_dir=data_dir, progress=False)
    report, onnx = read_json(out / "report.json"), exported(out, data_dir)
    return {"method": method, "training": training, "importance": importance, **{
        k: report[k] for k in ("top1_before", "top1_pruned", "top1_finetuned", "params_before", "params_after",
                               "macs_before", "macs_after", "macs_speedup", "ratio")},
            "ort_ms": onnx["latency_ms"]["onnxruntime"], "parity": onnx["parity"]}


def base_figures(training: str, data_dir: Path, args) -> dict:
    run = args.work / f"train-{training}"
    summary = read_json(run / "summary.json")
    return {"top1": summary["final"]["test_top1"], "ort_ms": exported(run, data_dir)["latency_ms"]["onnxruntime"],
            "train_time_s": summary["train_time_s"]}


def compare_normalizations(data_dir: Path, args, trainings: list[str]) -> list[dict]:
    """Top-1 right after pruning to the MACs target, for every ranking normalization."""
    rows = []
    for training in trainings:
        run = args.work / f"train-{training}"
        payload = checkpoint.read(run)
        data = compatible_data(payload, data_dir, 500, "cpu")
        importance = "slim" if training == "slim" else "nam"
        for normalization in COMPARED:
            model = checkpoint.build(payload).eval()
            prune(model, PruneConfig(ratio=None, target_macs=args.target_macs, importance=importance,
                                     normalization=normalization))
            rows.append({"training": training, "importance": importance, "normalization": normalization,
                         "top1_pruned": evaluate(model, data.test)["top1"]})
            print(rows[-1], flush=True)
    return rows


def normalization_markdown(rows: list[dict], args) -> str:
    if not rows:
        return ""
    lines = ["", f"Ranking normalization on the same models: top-1 right after pruning to {args.target_macs:.0%} of the "
             "MACs (no fine-tuning), by normalization:", "",
             "| training | importance | " + " | ".join(COMPARED) + " |", "|---|---|" + "---:|" * len(COMPARED)]
    for training in dict.fromkeys(r["training"] for r in rows):
        mine = {r["normalization"]: r for r in rows if r["training"] == training}
        lines.append(f"| {training} | {next(iter(mine.values()))['importance']} | "
                     + " | ".join(f"{mine[n]['top1_pruned']:.2f}" for n in COMPARED) + " |")
    return "\n".join(lines) + "\n"


def side_by_side(files: dict[str, Path], rounds: int = 7, min_run_time: float = 0.2) -> dict[str, dict[str, float]]:
    """Median onnxruntime latency (ms) of every file at batch 1 and 32, timed in interleaved rounds."""
    sessions = {name: session(path) for name, path in files.items()}
    inputs = {b: torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(0)) for b in (1, 32)}
    blocks: dict[tuple[str, int], list] = {}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for b, x in inputs.items():
                timer = benchmark.Timer("run(sess, x)", globals={"run": run_onnx, "sess": sess, "x": x})
                blocks.setdefault((name, b), []).append(timer.blocked_autorange(min_run_time=min_run_time))
    return {name: {str(b): round(benchmark.Measurement.merge(blocks[(name, b)])[0].median * 1e3, 4) for b in inputs}
            for name in sessions}


def markdown(results: list[dict], bases: dict, args, elapsed: float) -> str:
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()} ({torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, namprune {namprune.__version__}. Data: **CIFAR-10 (JPEG q75)**, the image-folder "
        f"copy in ../shared/data (accuracy runs a little under the original CIFAR-10). ResNet-20, {args.epochs} training "
        f"epochs (SGD 0.1, cosine, batch {args.batch_size}, weight decay 5e-4), sparsity p = {args.sparsity} where "
        f"sparse-trained; every method pruned by global ranking to keep {args.target_macs:.0%} of the MACs, then "
        f"fine-tuned {args.finetune_epochs} epochs (lr 0.01, cosine). Seed {args.seed}. Latency: onnxruntime on the "
        f"CPU ({torch.get_num_threads()} threads), every file timed side by side in 7 interleaved rounds, median "
        f"(torch.utils.benchmark), batch 1 and 32; measured speed-up = unpruned base / pruned. "
        f"{elapsed / 60:.0f} minutes in all.",
        "",
        "Command: `python benchmarks/cifar10_pruning.py" + (f" --epochs {args.epochs}" if args.epochs != 5 else "")
        + (f" --finetune-epochs {args.finetune_epochs}" if args.finetune_epochs != 2 else "") + "`",
        "",
        "| method | top-1 unpruned | right after pruning | after fine-tuning | params | MACs | MACs speed-up | "
        "ORT latency b1 / b32 (ms) | measured speed-up b1 / b32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        base = bases[r["training"]]
        speedup = [base["ort_ms"][b] / r["ort_ms"][b] for b in ("1", "32")]
        lines.append(
            f"| {r['method']} | {r['top1_before']:.2f} | {r['top1_pruned']:.2f} | {r['top1_finetuned']:.2f} | "
            f"{r['params_after'] / 1e3:.0f}k / {r['params_before'] / 1e3:.0f}k | {r['macs_after'] / 1e6:.1f}M / "
            f"{r['macs_before'] / 1e6:.1f}M | {r['macs_speedup']:.2f}x | {r['ort_ms']['1']:.2f} / {r['ort_ms']['32']:.1f} | "
            f"{speedup[0]:.2f}x / {speedup[1]:.2f}x |")
    lines += ["", "Unpruned bases (ONNX, onnxruntime): " + "; ".join(
        f"{name}: top-1 {b['top1']:.2f} %, {b['ort_ms']['1']:.2f} / {b['ort_ms']['32']:.1f} ms, trained in "
        f"{b['train_time_s'] / 60:.0f} min (wall clock)" for name, b in bases.items())]
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
