"""Does `--target-latency` keep the fraction of the measured latency it is asked to, and what
does it buy against pruning to the same MACs? ResNet-20 (namprune's default training) on
CIFAR-10 JPEG q75, onnxruntime on the CPU, one thread.

    python benchmarks/latency_target.py [--checkpoint RUN] [--data-dir DIR]

For every target and batch size: prune a copy with `target_latency` (the cost model and the
check are namprune's own), then, independently, export the unpruned and the pruned model
and time the two ONNX files side by side (interleaved rounds, median of per-round ratios).
Beside it, the same base pruned by `target_macs` to the MACs the latency-targeted model
kept, timed the same way. Top-1 is right after pruning and BatchNorm recalibration (no
fine-tuning). Writes benchmarks/results/latency_target.{json,md}. Time it on a quiet machine:
the command refuses to steer by timings it cannot trust.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
from pathlib import Path

import torch

import namprune
from namprune import evaluate
from namprune.app.stages import compatible_data
from namprune.core.deploy.onnx import to_onnx
from namprune.core.deploy.timing import measure_latency, round_ratios
from namprune.core.errors import NampruneError
from namprune.core.nam.fold import fold_nam
from namprune.core.pruning.cost import count_macs
from namprune.core.pruning.prune import prune
from namprune.core.settings import LatencySettings, PruneConfig
from namprune.core.store import checkpoint

from _results import save

ROOT = Path(__file__).resolve().parents[1]


def onnx_bytes(model: torch.nn.Module, batch: int) -> bytes:
    return to_onnx(fold_nam(model), batch)[0].SerializeToString()


def kept_fraction(base: bytes, pruned: bytes, batch: int, rounds: int) -> tuple[float, float, float]:
    """Median, lowest and highest per-round ratio pruned / unpruned, timed side by side."""
    records = measure_latency({"base": base, "pruned": pruned}, LatencySettings(batches=(batch,), rounds=rounds,
                                                                                min_run_time=0.1))
    return round_ratios(records["pruned"][batch], records["base"][batch])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "cifar10-bench" / "seed0" / "train-namprune")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "cifar10-bench" / "cifar10")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.6])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=21, help="rounds of the independent check")
    args = parser.parse_args()

    payload = checkpoint.read(args.checkpoint)
    data = compatible_data(payload, args.data_dir, 256, "cpu")
    base_model = checkpoint.build(payload).eval()
    base_macs = count_macs(base_model)
    rows = []
    for batch in args.batches:
        base_file = onnx_bytes(base_model, batch)
        for target in args.targets:
            by_latency = copy.deepcopy(base_model)
            result = prune(by_latency, PruneConfig(ratio=None, target_latency=target, latency_batch=batch),
                           data.calibration)
            macs_kept = count_macs(by_latency) / base_macs
            by_macs = copy.deepcopy(base_model)
            prune(by_macs, PruneConfig(ratio=None, target_macs=round(macs_kept, 3)), data.calibration)
            for how, model in (("target_latency", by_latency), ("target_macs", by_macs)):
                kept, low, high = kept_fraction(base_file, onnx_bytes(model, batch), batch, args.rounds)
                rows.append({"batch": batch, "target": target, "pruned_by": how,
                             "kept_by_prune": result.latency["kept"] if how == "target_latency" else None,
                             "kept_checked": round(kept, 4), "kept_range": [round(low, 4), round(high, 4)],
                             "macs_kept": round(count_macs(model) / base_macs, 4),
                             "top1": evaluate(model, data.test)["top1"], "record": result.latency if how == "target_latency" else None})
                print(rows[-1], flush=True)
    rounding = []
    for batch in args.batches:
        base_file = onnx_bytes(base_model, batch)
        for round_to in (None, 8, "auto"):
            model = copy.deepcopy(base_model)
            try:
                result = prune(model, PruneConfig(ratio=None, target_macs=0.5, round_to=round_to, latency_batch=batch),
                               data.calibration)
            except NampruneError as exc:  # a multiple too coarse for the target: say so in the table
                print(f"--round-to {round_to}: {exc}", flush=True)
                continue
            kept, low, high = kept_fraction(base_file, onnx_bytes(model, batch), batch, args.rounds)
            rounding.append({"batch": batch, "round_to": round_to, "chosen": (result.rounding or {}).get("chosen"),
                             "kept_checked": round(kept, 4), "kept_range": [round(low, 4), round(high, 4)],
                             "macs_kept": round(count_macs(model) / base_macs, 4), "top1": evaluate(model, data.test)["top1"]})
            print(rounding[-1], flush=True)
    text = markdown(rows, args, evaluate(base_model, data.test)["top1"]) + rounding_table(rounding)
    save("latency_target", text, {"rows": rows, "rounding": rounding})


def markdown(rows: list[dict], args, base_top1: float) -> str:
    lines = [f"Measured {datetime.date.today()} on {platform.machine()}, torch {torch.__version__}, namprune "
             f"{namprune.__version__}; onnxruntime, 1 thread. Base: {args.checkpoint} (top-1 {base_top1:.2f} %). "
             f"'checked' is an independent side-by-side timing of the two exported files ({args.rounds} rounds, "
             "median of per-round ratios, [lowest, highest]). Top-1 right after pruning and BatchNorm "
             "recalibration, no fine-tuning.", "",
             "Command: `python benchmarks/latency_target.py`", "",
             "| batch | target | pruned by | latency kept (prune's check) | latency kept (checked) | MACs kept | top-1 |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        prune_kept = f"{r['kept_by_prune']:.3f}" if r["kept_by_prune"] is not None else "-"
        lines.append(f"| {r['batch']} | {r['target']} | {r['pruned_by']} | {prune_kept} | {r['kept_checked']:.3f} "
                     f"[{r['kept_range'][0]:.2f}, {r['kept_range'][1]:.2f}] | {r['macs_kept']:.3f} | {r['top1']:.2f} |")
    return "\n".join(lines) + "\n"


def rounding_table(rows: list[dict]) -> str:
    lines = ["", "The same base pruned to half the MACs with each `--round-to` (auto: the multiple of 1, 4, 8, 16 "
             "whose pruned model timed fastest at that batch), latency kept checked side by side as above:", "",
             "| batch | --round-to | chosen | latency kept (checked) | MACs kept | top-1 |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['round_to'] or '-'} | {r['chosen'] or '-'} | {r['kept_checked']:.3f} "
                     f"[{r['kept_range'][0]:.2f}, {r['kept_range'][1]:.2f}] | {r['macs_kept']:.3f} | {r['top1']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
