"""Pruning and INT8 in onnxruntime and OpenVINO, side by side: latency of the unpruned and the
pruned (half the MACs) model, FP32 and INT8, in both runtimes, batch 1 and 32.

Each model is exported as ``namprune export`` does and quantized as ``namprune export --int8``
does in each runtime (onnxruntime: static QDQ, ``benchmarks/int8.py``'s ``files``; OpenVINO:
the IR converted from the same FP32 ONNX file, quantized by NNCF), so the two runtimes run the
same graph. The eight files of one model are timed side by side (interleaved rounds, one
``measure_latency`` call); a speed-up is the median of the per-round ratios [lowest, highest].

Latency only: the models are untrained (ResNet-56 with NAM at CIFAR-10 shapes, pruned by NAM
ranking with every gate removed at export, as ``benchmarks/int8.py --untrained``; torchvision
ResNet-18 and MobileNetV2 at 224 px, pruned by L1 ranking), calibrated on seeded random images
(no dataset needed: quantization ranges change what INT8 computes, not how fast). Widths are
namprune's default (multiples of ``DEFAULT_ROUND_TO``) unless ``--round-to`` says otherwise.

Resumable: each model's result is added to the JSON as soon as it is measured, and a model
already there (same threads) is not measured again. Prints a Markdown table of all of them.

    python benchmarks/openvino_int8.py --threads 1 --rounds 5 --min-time 0.2
    python benchmarks/openvino_int8.py --models resnet56 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
from pathlib import Path

import onnxruntime as ort
import torch

import namprune
from namprune import models
from namprune.core.deploy import openvino
from namprune.core.deploy.onnx import session
from namprune.core.deploy.timing import measure_latency, round_ratios, trust_problem
from namprune.core.pruning.prune import prune
from namprune.core.settings import DEFAULT_ROUND_TO, LatencySettings, PruneConfig
from namprune.core.store.files import write_json

from int8 import files, random_batches, speed, untrained_pair  # the onnxruntime side, as benchmarks/int8.py measures it

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (architecture, input size, classes, attention and ranking)
    "resnet56": ("resnet56", 32, 10, "nam"),
    "resnet18": ("tv:resnet18", 224, 1000, "l1"),
    "mobilenetv2": ("tv:mobilenet_v2", 224, 1000, "l1"),
}
RUNTIMES = ("onnxruntime", "openvino")
VARIANTS = [(variant, precision) for variant in ("unpruned", "pruned") for precision in ("FP32", "INT8")]


def pair(name: str, target: float, seed: int, round_to: int) -> dict[str, torch.nn.Module]:
    """The unpruned model and a copy pruned to ``target`` of its MACs, widths multiples of ``round_to``."""
    arch, size, classes, ranking = MODELS[name]
    if ranking == "nam":
        return untrained_pair(arch, round_to, target, seed)
    torch.manual_seed(seed)
    base = models.create(arch, classes, "none", input_size=size, in_channels=3).eval()
    pruned = copy.deepcopy(base)
    prune(pruned, PruneConfig(ratio=None, target_macs=target, importance="l1", round_to=round_to),
          random_batches(size, seed, batches=1))
    return {"unpruned": base, "pruned": pruned.eval()}


def sessions_of(name: str, target: float, seed: int, round_to: int, calibration: int,
                threads: int) -> tuple[dict, dict]:
    """The eight sessions of one model (``"<runtime> <variant> <precision>"``) and the MACs."""
    _, size, _, ranking = MODELS[name]
    calib = torch.cat([images for images, _ in random_batches(size, seed + 1, batches=-(-calibration // 32))])[:calibration]
    tolerance = 0.99 if ranking == "nam" else 0.0  # NAM: every gate goes, the graph a sparse-trained model exports to
    found, macs = {}, {}
    for variant, model in pair(name, target, seed, round_to).items():
        fp32, int8, macs[variant] = files(model, calib, tolerance)
        found[f"onnxruntime {variant} FP32"] = session(fp32, threads)
        found[f"onnxruntime {variant} INT8"] = session(int8, threads)
        ir = openvino.from_onnx(fp32)
        found[f"openvino {variant} FP32"] = openvino.session(ir, threads)
        found[f"openvino {variant} INT8"] = openvino.session(openvino.quantize_int8(ir, calib), threads)
    return found, macs


def measure(name: str, args) -> dict:
    sessions, macs = sessions_of(name, args.target_macs, args.seed, args.round_to, args.calibration_images,
                                 args.threads)
    settings = LatencySettings(batches=(1, 32), threads=args.threads, rounds=args.rounds, min_run_time=args.min_time)
    records = measure_latency(sessions, settings)
    rows = []
    for runtime in RUNTIMES:
        base = records[f"{runtime} unpruned FP32"]
        for variant, precision in VARIANTS:
            timed = records[f"{runtime} {variant} {precision}"]
            rows.append({"runtime": runtime, "variant": variant, "precision": precision, "macs": macs[variant],
                         "ms": {str(b): timed[b]["median_ms"] for b in (1, 32)},
                         "speedup": {str(b): round_ratios(base[b], timed[b]) for b in (1, 32)},
                         "speedup_text": {str(b): speed(base[b], timed[b]) for b in (1, 32)},
                         "trusted": all(r["trusted"] for r in timed.values()),
                         "why_untrusted": {str(b): trust_problem(r) for b, r in timed.items() if not r["trusted"]}})
    first = records["onnxruntime unpruned FP32"][1]
    return {"threads": args.threads, "rounds": args.rounds, "min_time": args.min_time, "date": str(datetime.date.today()),
            "macs_speedup": round(macs["unpruned"] / macs["pruned"], 3), "rows": rows,
            "load": [first["load_before"], first["load_after"]], "cores": first["cores"]}


def table(results: dict) -> str:
    lines = ["| model | runtime | model variant | precision | MACs (M) | batch 1 (ms) | batch 32 (ms) | "
             "speed-up vs unpruned FP32 b1 [range] | b32 [range] | b32 / MACs speed-up | trusted |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, result in results.items():
        for row in result["rows"]:
            pruned_fp32 = row["variant"] == "pruned" and row["precision"] == "FP32"
            share = f"{row['speedup']['32'][0] / result['macs_speedup']:.2f}" if pruned_fp32 else ""
            lines.append(f"| {key} | {row['runtime']} | {row['variant']} | {row['precision']} | {row['macs'] / 1e6:.1f} | "
                         f"{row['ms']['1']:.3f} | {row['ms']['32']:.2f} | {row['speedup_text']['1']} | "
                         f"{row['speedup_text']['32']} | {share} | {'yes' if row['trusted'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--target-macs", type=float, default=0.5, help="fraction of the MACs the pruned model keeps")
    parser.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO, help="channel multiple of the pruning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "openvino_int8.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for name in args.models:
        widths = "" if args.round_to == DEFAULT_ROUND_TO else f", round-to {args.round_to}"
        key = f"{name} ({args.threads} thread{'s' if args.threads > 1 else ''}{widths})"
        if key in results:  # resumable: measured before, kept
            continue
        print(f"measuring {key} ...", flush=True)
        results[key] = measure(name, args)
        write_json(args.json, results)
    print(f"{platform.machine()} {platform.system()}, torch {torch.__version__}, onnxruntime "
          f"{ort.__version__}, {openvino.versions()}, namprune {namprune.__version__}; "
          f"median of {args.rounds} interleaved rounds of >= {args.min_time} s\n")
    print(table(results))


if __name__ == "__main__":
    main()
