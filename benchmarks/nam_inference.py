"""What NAM costs at inference, before and after its constant gates are removed.

For each checkpoint (a NAM model, sparse-trained), four forms of the same network are timed
side by side in interleaved rounds, in torch eager and in onnxruntime, at batch 1 and 32:

    none            the checkpoint with every NAM taken out (same weights otherwise)
    nam unfolded    the checkpoint as trained
    nam folded      every gate folded to x * sigmoid(a * x + b), all gates kept
    nam exported    folded, the gates under --gate-tolerance replaced by constants
                    (what ``namprune export`` writes)

and top-1 on the test split of the unfolded model and of the exported ONNX file. "vs none"
is the ratio to the network without attention within each round (both timed in it): the
median over rounds, lowest and highest in brackets. With
--tolerances, also how many gates each tolerance removes and what that does to top-1 (the
folded torch model, equal to its ONNX file within 1e-4). Prints Markdown tables and writes
benchmarks/results/nam_inference.json.

    python benchmarks/nam_inference.py runs/digits runs/r56-digits runs/r20-cifar --rounds 15 --min-time 0.2 \
        [--tolerances 0 0.005 0.01 0.02 0.03 0.05 0.1]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

import namprune
from namprune import evaluate, fold_nam
from namprune.app.datasource import calibration_images, checkpoint_data
from namprune.core.deploy.onnx import session, session_options, to_onnx
from namprune.core.deploy.quantize import onnx_accuracy
from namprune.core.deploy.timing import measure_latency, round_ratios
from namprune.core.nam.gates import fold_for_export
from namprune.core.nam.modules import NAM
from namprune.core.settings import GATE_TOLERANCE, LatencySettings
from namprune.core.store import checkpoint
from namprune.core.store.files import write_json

ROOT = Path(__file__).resolve().parents[1]


def without_attention(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every NAM replaced by an identity: the same network without attention."""
    plain = copy.deepcopy(model).eval()
    for name, m in list(plain.named_modules()):
        if isinstance(m, NAM):
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, nn.Identity())
    return plain


def forms(ckpt, data_dir, tolerance: float, images: int) -> tuple[dict[str, nn.Module], dict, object]:
    payload = checkpoint.read(ckpt)
    model = checkpoint.build(payload).eval()
    data = checkpoint_data(payload, data_dir)
    exported, gates = fold_for_export(model, calibration_images(data, images), tolerance)
    return {"none": without_attention(model), "nam unfolded": model, "nam folded": fold_nam(model),
            "nam exported": exported}, gates, data


def tolerance_sweep(ckpt, data, tolerances: list[float], images: int) -> list[dict]:
    """Gates removed and test top-1 at each tolerance (and at none removed)."""
    model = checkpoint.load(ckpt).eval()
    calib = calibration_images(data, images)
    unfolded = evaluate(model, data.test, "cpu")["top1"]
    rows = []
    for tolerance in tolerances:
        exported, gates = fold_for_export(model, calib, tolerance)
        top1 = evaluate(exported, data.test, "cpu")["top1"]
        rows.append({"tolerance": tolerance, "removed": gates["removed"], "total": gates["total"],
                     "top1_unfolded": unfolded, "top1": top1, "change": round(top1 - unfolded, 4)})
    return rows


def graph_ops(onnx_bytes: bytes) -> list[str]:
    """The operators of a model, in order, as onnxruntime runs them (after its optimizer)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        options = session_options(1)
        options.optimized_model_filepath = str(path)
        ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(str(path)).graph.node]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--data-dir", default=None, help="for checkpoints of datasets that live on disk")
    parser.add_argument("--gate-tolerance", type=float, default=GATE_TOLERANCE)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--tolerances", type=float, nargs="*", default=[], help="also sweep the gate tolerance")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = LatencySettings(batches=(1, 32), threads=args.threads, rounds=args.rounds, min_run_time=args.min_time)
    results, lines = [], ["| model | runtime | form | batch 1 ms | vs none [range] | batch 32 ms | vs none [range] | trusted |",
                          "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for ckpt in args.checkpoints:
        models, gates, data = forms(ckpt, args.data_dir, args.gate_tolerance, args.calibration_images)
        files = {name: to_onnx(m, None)[0].SerializeToString() for name, m in models.items() if name != "nam unfolded"}
        sessions = {name: session(blob, args.threads) for name, blob in files.items()}
        timed = {**{("torch eager", n): m for n, m in models.items()},
                 **{("onnxruntime", n): s for n, s in sessions.items()}}
        records = measure_latency({f"{rt}|{n}": m for (rt, n), m in timed.items()}, settings)  # one run, side by side
        accuracy = None
        if data is not None:
            accuracy = {"unfolded": evaluate(models["nam unfolded"], data.test, "cpu")["top1"],
                        "exported": onnx_accuracy(sessions["nam exported"], data.test)["top1"]}
        label = f"{checkpoint.read(ckpt)['arch']['name']} ({checkpoint.read(ckpt)['data']['name']})"
        for key, by_batch in records.items():
            runtime, name = key.split("|")
            cells = []
            for batch in (1, 32):
                ratio, low, high = round_ratios(by_batch[batch], records[f"{runtime}|none"][batch])
                cells.append(f"{by_batch[batch]['median_ms']:.3f} | {ratio:.2f}x [{low:.2f}, {high:.2f}]")
            trusted = all(r["trusted"] for r in by_batch.values())
            lines.append(f"| {label} | {runtime} | {name} | {' | '.join(cells)} | {'yes' if trusted else 'no'} |")
        sweep = tolerance_sweep(ckpt, data, args.tolerances, args.calibration_images) if data and args.tolerances else []
        for row in sweep:
            print(f"{label}: tolerance {row['tolerance']:g}: {row['removed']} of {row['total']} gates removed, top-1 "
                  f"{row['top1']:.2f} % ({row['change']:+.2f} against {row['top1_unfolded']:.2f} % unfolded)")
        results.append({"checkpoint": str(ckpt), "label": label, "gates": gates, "top1": accuracy, "sweep": sweep,
                        "latency": {key: {str(b): r for b, r in v.items()} for key, v in records.items()}})
        removed = f"{gates['removed']} of {gates['total']} gates removed" if gates else "no NAM"
        same = graph_ops(files["nam exported"]) == graph_ops(files["none"])
        removed += "; the exported graph " + ("holds exactly the operators of the network without attention, in order"
                                               if same else "differs from the network without attention")
        top1 = (f"top-1 unfolded {accuracy['unfolded']:.2f} %, exported {accuracy['exported']:.2f} % "
                f"({accuracy['exported'] - accuracy['unfolded']:+.2f})" if accuracy else "top-1 not measured (no data)")
        print(f"{label}: {removed} (tolerance {args.gate_tolerance:g}); {top1}")
    first = results[0]["latency"]["onnxruntime|none"]["1"]
    print(f"\n{datetime.date.today()}, {platform.machine()} {platform.system()}, {first['cores']} cores, load "
          f"{first['load_before']} -> {first['load_after']}, torch {torch.__version__}, onnxruntime {first['onnxruntime']}, "
          f"{args.threads} thread(s), median of {args.rounds} interleaved rounds of >= {args.min_time} s; namprune "
          f"{namprune.__version__}\n")
    print("\n".join(lines))
    write_json(ROOT / "benchmarks" / "results" / "nam_inference.json", {"args": {k: str(v) for k, v in vars(args).items()},
                                                                         "results": results})


if __name__ == "__main__":
    main()
