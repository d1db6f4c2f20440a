"""``namprune export``: a checkpoint to an ONNX file checked with onnxruntime, or to OpenVINO IR
converted from it and checked with OpenVINO."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..core.console import console
from ..core.errors import NampruneError
from ..core.settings import (EXPORT, EXPORT_RUNTIMES, GATE_AGREEMENT, GATE_LOGIT_TOLERANCE, LATENCY, OPENVINO_INSTALL,
                             PARITY_TOLERANCE, ExportSettings, LatencySettings)
from ..core.store.paths import check_checkpoint
from ..core.store.records import ExportRecord
from .app import app, int_or_text
from .options import DataDir, MinTime, Overwrite, Rounds, TimingThreads


@app.command("export")
def export_(
    ckpt: Annotated[Path, typer.Argument(help="A run folder or its model.pt (pruned or not).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The ONNX file to write (with --runtime openvino the IR's .xml); its record (sizes, check, latency) goes beside it: a.onnx -> a.export.json.")],
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (default: the exporter's; below 18 usually needs the TorchScript exporter, which the export falls back to).")] = None,
    batch: Annotated[str, typer.Option("--batch", help="dynamic (any batch size) or a fixed batch size N.")] = EXPORT.batch,
    fold: Annotated[bool, typer.Option("--fold/--no-fold", help="Fold every NAM into x * sigmoid(a * x + b) first (exact and faster; --no-fold exports the BatchNorm form).")] = EXPORT.fold,
    check: Annotated[bool, typer.Option("--check/--no-check", help=f"Run the file in onnxruntime against torch on random inputs and, when the data is at hand, test images: max relative difference under {PARITY_TOLERANCE:g} and the same top-1, else exit code 1 and nothing written.")] = EXPORT.check,
    check_only: Annotated[bool, typer.Option("--check-only", help="Export nothing: check the existing --out file (ONNX in onnxruntime, or OpenVINO IR .xml in OpenVINO) against the checkpoint (e.g. after editing it with other tools).")] = False,
    optimize: Annotated[bool, typer.Option("--optimize/--no-optimize", help="Simplify the graph with the exporter's optimizer (constant folding, BatchNorm into Conv, dead nodes) and drop its per-node debug metadata (stack traces with local paths).")] = EXPORT.optimize,
    gate_tolerance: Annotated[Optional[float], typer.Option("--gate-tolerance", help=f"A NAM gate whose spread on the calibration images (std / mean) is at most this is a candidate for replacement by its constant (folded into the BatchNorm before it; see --remove-gates); 0 keeps every gate that varies at all. Default {EXPORT.gate_tolerance:g}; with --check-only, what the export recorded.")] = None,
    remove_gates: Annotated[bool, typer.Option("--remove-gates/--keep-gates", help=f"Replace the NAM gates within --gate-tolerance by their constants when the model without them gives the unfolded model's top-1 on {GATE_AGREEMENT:.1%} of the calibration and test images checked and logits within {GATE_LOGIT_TOLERANCE:g} of them (max |difference| / max |logit|); a gate that fails is folded and kept. --keep-gates keeps every gate: the file computes what the checkpoint does, to float rounding.")] = EXPORT.remove_gates,
    runtime: Annotated[str, typer.Option("--runtime", help=f"What the file is for: {' or '.join(EXPORT_RUNTIMES)}. openvino writes OpenVINO IR (--out m.xml, weights in m.bin) converted from the checked ONNX file and checked again in OpenVINO; an optional extra: {OPENVINO_INSTALL}.")] = EXPORT.runtime,
    int8: Annotated[bool, typer.Option("--int8", help="Also write the INT8 twin (<out>.int8.onnx quantized by onnxruntime: static, QDQ; with --runtime openvino <out>.int8.xml quantized by NNCF), calibrated on training images, with the test top-1 of both files and their latency (and, for a pruned run, the unpruned FP32 model's).")] = EXPORT.int8,
    calibration: Annotated[Optional[int], typer.Option("--calibration-images", help=f"Training images the gates and the INT8 ranges are calibrated on. Default {EXPORT.calibration_images}; with --check-only, what the export recorded.")] = None,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Measure the median CPU latency of onnxruntime (and OpenVINO, with --runtime openvino) and torch eager at batch 1 and 32, side by side (a few seconds).")] = True,
    threads: TimingThreads = LATENCY.threads,
    rounds: Rounds = LATENCY.rounds,
    min_time: MinTime = LATENCY.min_run_time,
    data_dir: DataDir = None,
    overwrite: Overwrite = False,
) -> int:
    """Export a checkpoint to ONNX (NAM folded), check it with onnxruntime (--runtime openvino: also to OpenVINO IR,
    checked in OpenVINO), and record size and latency."""
    check_checkpoint(ckpt)  # before torch loads
    from ..app.exporting import check_file, export_checkpoint
    from ..core.deploy.onnx import record_path

    # a failed export raises ExportError, a NampruneError with exit code 1: main reports it in one line
    if check_only:
        if not check:
            raise NampruneError("--check-only and --no-check contradict each other")
        print_parity(check_file(ckpt, out, data_dir, gate_tolerance, calibration))
        console.print(f"{out} agrees with {ckpt}")
        return 0
    settings = ExportSettings(opset=opset, batch=int_or_text(batch), fold=fold, check=check, optimize=optimize,
                              gate_tolerance=EXPORT.gate_tolerance if gate_tolerance is None else gate_tolerance,
                              calibration_images=EXPORT.calibration_images if calibration is None else calibration,
                              remove_gates=remove_gates, int8=int8, runtime=runtime)
    timing = LatencySettings(threads=threads, rounds=rounds, min_run_time=min_time) if latency else None
    report = export_checkpoint(ckpt, out, settings, timing, data_dir, overwrite)
    print_report(report)
    int8_file = f"   INT8: {report.int8['file']}" if report.int8 else ""
    written = f"OpenVINO IR: {report.ir}" if report.ir else f"ONNX: {report.onnx}"
    console.print(f"{written}{int8_file}   report: {record_path(report.ir or report.onnx)}")
    return 0


def print_report(report: ExportRecord) -> None:
    pruned = "pruned" if report.pruning_steps else "not pruned"
    table = Table(title=f"{report.model} ({report.attention}, {pruned}) -> {'OpenVINO IR' if report.ir else 'ONNX'}",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = {"exporter": f"{report.exporter}, opset {report.opset}, batch {report.batch}",
            **({} if report.attention == "none" else {"NAM": nam_row(report)}),  # nothing to fold without NAM
            "file": f"{report.file_bytes:,} bytes ({report.file_bytes / 2**20:.2f} MiB)",
            "params": f"{report.params:,} in torch, {report.onnx_params:,} stored in the file"}
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    if report.onnx_parity:
        print_parity(report.onnx_parity)
    if report.parity:
        print_parity(report.parity)
    if report.int8:
        print_int8(report.int8, report.file_bytes, report.runtime)
    if report.latency:
        print_latency(report.latency)


def nam_row(report: ExportRecord) -> str:
    gates = report.nam_gates
    if not report.folded or not gates:
        return "folded" if report.folded else "unfolded"
    text = f"folded; {gates['removed']} of {gates['total']} gates replaced by constants"
    check = gates.get("check")
    if check:
        text += (f" (spread <= {gates['tolerance']:g} on {gates['calibration_images']} training images, and the same "
                 f"top-1 as the unfolded model on {check['top1_agree']}/{check['images']} images checked")
        text += f"; {check['refused']} more would change it)" if check["refused"] else ")"
    else:
        text += f" ({gates['note']})"
    if "test_top1_agree" in gates:
        text += (f"; the file agrees with the unfolded model on {gates['test_top1_agree']}/{gates['test_images']} test "
                 f"images, top-1 {gates['top1_unfolded']:.2f}% unfolded, {gates['top1_exported']:.2f}% exported")
    return text


def print_int8(int8: dict, fp32_bytes: int, runtime: str = "onnxruntime") -> None:
    table = Table(title=f"INT8 ({int8['format']}, weights {int8['weights']}, activations {int8['activations']}, "
                        f"calibrated on {int8['calibration_images']} training images)")
    for column in ("model", "file (bytes)", f"test top-1 % ({int8['test_images']} images)"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row("FP32", f"{fp32_bytes:,}", f"{int8['top1_fp32']:.2f}")
    table.add_row("INT8", f"{int8['file_bytes']:,}", f"{int8['top1_int8']:.2f} ({int8['top1_change']:+.2f})")
    console.print(table)
    if int8.get("unpruned_source") is None:
        return
    source = os.path.relpath(int8["unpruned_source"])
    for batch, ratio in int8.get("speedup_vs_unpruned_fp32", {}).get("int8", {}).items():
        fp32 = int8["speedup_vs_unpruned_fp32"]["fp32"][batch]
        console.print(f"batch {batch}: against the unpruned FP32 model ({source}), pruned FP32 runs {fp32:.2f}x and "
                      f"pruned INT8 {ratio:.2f}x as fast in {runtime}")


def print_parity(parity: dict) -> None:
    table = Table(title=f"{parity.get('runtime', 'onnxruntime')} vs torch (limit {parity['tolerance']:g}, "
                        f"{parity['definition']})")
    for column in ("inputs", "images", "max rel. diff", "max abs. diff", "top-1 agrees"):
        table.add_column(column, justify="left" if column == "inputs" else "right")
    unfolded = parity.get("vs_unfolded")
    if unfolded:  # not held to the limit: the difference removing the constant gates made
        table.caption = ("the last row compares with the unfolded checkpoint: the difference replacing the constant "
                         "gates made (not held to the limit)")
    for r in parity["results"] + ([unfolded] if unfolded else []):
        table.add_row(r["inputs"], str(r["images"]), f"{r['max_rel_diff']:.2e}", f"{r['max_abs_diff']:.2e}",
                      f"{r['top1_agree']}/{r['images']}")
    console.print(table)


def print_latency(latency: dict) -> None:
    from ..core.deploy.timing import mark, summary

    records, threads = latency["records"], latency["settings"]["threads"]
    table = Table(title=f"median CPU latency, ms ({threads} thread{'s' if threads != 1 else ''}, "
                        f"{latency['settings']['rounds']} interleaved rounds; ! = not to be trusted)")
    table.add_column("batch", justify="right")
    for name in records:
        table.add_column(name.replace("_", " "), justify="right")
    for batch in records["onnxruntime"]:
        table.add_row(str(batch), *(f"{records[name][batch]['median_ms']:.3f}{mark(records[name][batch])}"
                                    if batch in records[name] else "" for name in records))
    console.print(table)
    flagged = summary([r for by_batch in records.values() for r in by_batch.values()])
    if flagged:
        console.print(flagged, style="yellow")
