"""``namprune export``: a checkpoint to an ONNX file, checked with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..console import console
from ..errors import NampruneError
from ..export import MAX_OPSET, MIN_OPSET, TOLERANCE, ExportError, check_file, export_checkpoint, record_path
from .app import DataDir, Overwrite, app, fail


@app.command("export")
def export_(
    ckpt: Annotated[Path, typer.Argument(help="A run folder or its model.pt (pruned or not).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The ONNX file to write; its record (sizes, check, latency) goes beside it: a.onnx -> a.export.json.")],
    opset: Annotated[Optional[int], typer.Option("--opset", help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default: the exporter's; below 18 usually needs the TorchScript exporter, which the export falls back to).")] = None,
    batch: Annotated[str, typer.Option("--batch", help="dynamic (any batch size) or a fixed batch size N.")] = "dynamic",
    fold: Annotated[bool, typer.Option("--fold/--no-fold", help="Fold every NAM into x * sigmoid(a * x + b) first (exact and faster; --no-fold exports the BatchNorm form).")] = True,
    check: Annotated[bool, typer.Option("--check/--no-check", help=f"Run the file in onnxruntime against torch on random inputs and, when the data is at hand, test images: max relative difference under {TOLERANCE:g} and the same top-1, else exit code 1 and nothing written.")] = True,
    check_only: Annotated[bool, typer.Option("--check-only", help="Export nothing: check the existing --out file against the checkpoint (e.g. after editing it with other tools).")] = False,
    optimize: Annotated[bool, typer.Option("--optimize/--no-optimize", help="Simplify the graph with the exporter's optimizer (constant folding, BatchNorm into Conv, dead nodes) and drop its per-node debug metadata (stack traces with local paths).")] = True,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Measure median CPU latency of onnxruntime and torch eager at batch 1 and 32 (a few seconds).")] = True,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads of the latency measurement, torch and onnxruntime alike (default: torch's, one per core); 1 gives steadier numbers on a busy machine.")] = None,
    data_dir: DataDir = None,
    overwrite: Overwrite = False,
) -> int:
    """Export a checkpoint to ONNX (NAM folded), check it with onnxruntime, and record size and latency."""
    try:
        if check_only:
            if not check:
                raise NampruneError("--check-only and --no-check contradict each other")
            print_parity(check_file(ckpt, out, data_dir))
            console.print(f"{out} agrees with {ckpt}")
            return 0
        report = export_checkpoint(ckpt, out, opset, batch, fold, check, optimize, latency, data_dir, overwrite,
                                   threads)
    except ExportError as exc:  # not the user's mistake: exit code 1, still one line
        return fail(str(exc), 1)
    print_report(report)
    console.print(f"ONNX: {out}   report: {record_path(out)}")
    return 0


def print_report(report: dict) -> None:
    pruned = "pruned" if report["pruning_steps"] else "not pruned"
    table = Table(title=f"{report['model']} ({report['attention']}, {pruned}) -> ONNX",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = {"exporter": f"{report['exporter']}, opset {report['opset']}, batch {report['batch']}",
            "NAM": "folded" if report["folded"] else "unfolded",
            "file": f"{report['file_bytes']:,} bytes ({report['file_bytes'] / 2**20:.2f} MiB)",
            "params": f"{report['params']:,} in torch, {report['onnx_params']:,} stored in the file"}
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    if report["parity"]:
        print_parity(report["parity"])
    if report["latency_ms"]:
        print_latency(report["latency_ms"])


def print_parity(parity: dict) -> None:
    table = Table(title=f"onnxruntime vs torch (limit {parity['tolerance']:g}, {parity['definition']})")
    for column in ("inputs", "images", "max rel. diff", "max abs. diff", "top-1 agrees"):
        table.add_column(column, justify="left" if column == "inputs" else "right")
    for r in parity["results"]:
        table.add_row(r["inputs"], str(r["images"]), f"{r['max_rel_diff']:.2e}", f"{r['max_abs_diff']:.2e}",
                      f"{r['top1_agree']}/{r['images']}")
    console.print(table)


def print_latency(latency: dict) -> None:
    runtimes = [k for k in latency if k != "threads"]
    threads = latency["threads"]
    table = Table(title=f"median CPU latency, ms ({threads} thread{'s' if threads != 1 else ''})")
    table.add_column("batch", justify="right")
    for name in runtimes:
        table.add_column(name.replace("_", " "), justify="right")
    for size in latency["onnxruntime"]:
        table.add_row(size, *(f"{latency[name][size]:.3f}" for name in runtimes))
    console.print(table)
