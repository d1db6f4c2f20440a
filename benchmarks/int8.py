"""INT8 against FP32, for an unpruned model and a model pruned from it: top-1 and latency.

Both checkpoints are exported as ``namprune export`` does (NAM folded, constant gates
removed), each FP32 file is quantized as ``namprune export --int8`` does (onnxruntime
static quantization, QDQ, calibrated on training images), the four files are timed side by
side in onnxruntime (interleaved rounds, batch 1 and 32), and their top-1 is measured on
the whole test split. A speed-up is the ratio within each round (both files timed in it):
the median over rounds, lowest and highest in brackets. Prints a Markdown table and writes
benchmarks/results/int8.json (or --json).

    python benchmarks/int8.py runs/r56-digits-pruned-r8 --rounds 15 --min-time 0.2
    python benchmarks/int8.py --untrained resnet56 --round-to 8 --data-dir runs/cifar10 --rounds 15
    (the unpruned model is found through the pruned run's report.json, or give --unpruned)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
from pathlib import Path

import torch

import namprune
from namprune import load_data, models
from namprune.app.datasource import calibration_images, checkpoint_data
from namprune.app.run_folders import unpruned_source
from namprune.core.deploy.measure import count_macs
from namprune.core.deploy.onnx import session, to_onnx
from namprune.core.deploy.quantize import onnx_accuracy, quantize_int8
from namprune.core.deploy.timing import measure_latency, round_ratios
from namprune.core.nam.gates import fold_for_export
from namprune.core.pruning.prune import prune
from namprune.core.settings import GATE_TOLERANCE, LatencySettings, PruneConfig
from namprune.core.store import checkpoint
from namprune.core.store.files import write_json

ROOT = Path(__file__).resolve().parents[1]


def files(model, calib, tolerance: float) -> tuple[bytes, bytes, int]:
    """FP32 and INT8 ONNX bytes of a model, and its MACs."""
    exported, _ = fold_for_export(model.eval(), calib, tolerance)
    fp32 = to_onnx(exported, None)[0].SerializeToString()
    return fp32, quantize_int8(fp32, calib), count_macs(model)


def untrained_pair(arch: str, round_to: int | None, target: float, seed: int) -> dict[str, torch.nn.Module]:
    """Latency only: an untrained NAM network for CIFAR-10 shapes and a copy pruned by NAM
    ranking to ``target`` of its MACs (exported with every gate removed: the graph a
    sparse-trained NAM model exports to)."""
    torch.manual_seed(seed)
    base = models.create(arch, 10, "nam", input_size=32, in_channels=3).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # distinct BatchNorm scales, as training leaves them: no ties in the ranking
        for m in base.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 2)
    pruned = copy.deepcopy(base)
    prune(pruned, PruneConfig(ratio=None, target_macs=target, round_to=round_to), random_batches(32, seed))
    return {"unpruned": base, "pruned": pruned.eval()}


def random_batches(size: int, seed: int, batches: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded random RGB images (with labels) of side ``size``: what the NAM ranking measures an
    untrained model on (its gates see the input, not the task)."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 3, size, size, generator=generator), torch.randint(0, 10, (32,), generator=generator))
            for _ in range(batches)]


def speed(slow: dict, fast: dict) -> str:
    ratio, low, high = round_ratios(slow, fast)
    return f"{ratio:.2f}x [{low:.2f}, {high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pruned", type=Path, nargs="?", help="a pruned run (its report.json names the unpruned one)")
    parser.add_argument("--untrained", default=None, help="latency only: this architecture with NAM at CIFAR-10 "
                        "shapes, untrained, pruned here, every gate removed (calibrated on --data-dir cifar10)")
    parser.add_argument("--round-to", type=int, default=None, help="with --untrained: channel multiple of the pruning")
    parser.add_argument("--target-macs", type=float, default=0.5, help="with --untrained: fraction of the MACs kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unpruned", type=Path, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--gate-tolerance", type=float, default=GATE_TOLERANCE)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "int8.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.untrained:
        pair = untrained_pair(args.untrained, args.round_to, args.target_macs, args.seed)
        unpruned, args.gate_tolerance = f"untrained {args.untrained}", 0.99  # every gate goes
        data = load_data("cifar10", args.data_dir, batch_size=64, augment=False)
    else:
        unpruned = args.unpruned or unpruned_source(args.pruned)
        if unpruned is None:
            raise SystemExit(f"no unpruned source found for {args.pruned}; give --unpruned")
        pair = {"unpruned": checkpoint.load(unpruned), "pruned": checkpoint.load(args.pruned)}
        data = checkpoint_data(checkpoint.read(args.pruned), args.data_dir)
    calib = calibration_images(data, args.calibration_images)
    sessions, macs = {}, {}
    for label, model in pair.items():
        fp32, int8, macs[label] = files(model, calib, args.gate_tolerance)
        sessions[f"{label} FP32"] = session(fp32, args.threads)
        sessions[f"{label} INT8"] = session(int8, args.threads)
    settings = LatencySettings(batches=(1, 32), threads=args.threads, rounds=args.rounds, min_run_time=args.min_time)
    records = measure_latency(sessions, settings)
    top1 = {name: None if args.untrained else onnx_accuracy(sess, data.test)["top1"] for name, sess in sessions.items()}
    base = records["unpruned FP32"]
    lines = ["| model | MACs (M) | top-1 (%) | Δ top-1 vs FP32 | batch 1 (ms) | batch 32 (ms) | speed-up vs unpruned FP32 b1 [range] | b32 [range] | trusted |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, by_batch in records.items():
        label = name.split()[0]
        accuracy = "n/a | n/a" if top1[name] is None else f"{top1[name]:.2f} | {top1[name] - top1[f'{label} FP32']:+.2f}"
        lines.append(f"| {name} | {macs[label] / 1e6:.1f} | {accuracy} | "
                     f"{by_batch[1]['median_ms']:.3f} | {by_batch[32]['median_ms']:.2f} | "
                     f"{speed(base[1], by_batch[1])} | {speed(base[32], by_batch[32])} | "
                     f"{'yes' if all(r['trusted'] for r in by_batch.values()) else 'no'} |")
    first = base[1]
    print(f"{datetime.date.today()}, {platform.machine()} {platform.system()}, {first['cores']} cores, load "
          f"{first['load_before']} -> {first['load_after']}, torch {torch.__version__}, onnxruntime "
          f"{first['onnxruntime']}, {args.threads} thread(s), median of {args.rounds} interleaved rounds of >= "
          f"{args.min_time} s; unpruned {unpruned}, pruned {args.pruned or 'here to half its MACs'}; namprune {namprune.__version__}\n")
    print("\n".join(lines))
    write_json(args.json,
               {"args": {k: str(v) for k, v in vars(args).items()}, "unpruned": str(unpruned), "top1": top1,
                "macs": macs, "latency": {k: {str(b): r for b, r in v.items()} for k, v in records.items()}})


if __name__ == "__main__":
    main()
