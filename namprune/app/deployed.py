"""What ``namprune report`` shows of the exported files: for every export record found in a
run's folder (``namprune export RUN --out RUN/...``), the measured latency of each runtime
and precision and its speed-up over the unpruned FP32 model in the same runtime, side by side,
so the user sees which runtime and precision to ship.

The figures are the export's own: timed there side by side with the unpruned model (``--int8``
on a pruned run times it), not again here, where the runs are timed in torch. An export
without the unpruned model timed has no speed-up to show, only its latency.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ..core.console import console
from ..core.deploy.timing import mark
from ..core.store.records import ExportRecord
from .run_folders import Run

EXPORT_RECORD = "*.export.json"
PRECISIONS = ("fp32", "int8")


def export_records(run: Run) -> list[tuple[Path, ExportRecord]]:
    """The export records in a run's folder and its subfolders (one level: ``RUN/export/``)."""
    found = sorted({*run.path.glob(EXPORT_RECORD), *run.path.glob(f"*/{EXPORT_RECORD}")})
    return [(path, ExportRecord.read(path)) for path in found]


def deployed_rows(runs: list[Run], names: list[str]) -> list[dict]:
    """One row per run, export record and precision timed in it, a run's runtimes in order."""
    rows = []
    for run, name in zip(runs, names):
        found = []
        for path, record in export_records(run):
            timings = (record.latency or {}).get("records") or {}
            int8 = record.int8 or {}
            vs_unpruned = int8.get("speedup_vs_unpruned_fp32")
            for precision in PRECISIONS:
                timed = timings.get(record.runtime if precision == "fp32" else f"{record.runtime}_int8")
                if timed is None:
                    continue
                speedup = vs_unpruned[precision] if vs_unpruned else None
                if speedup is None and not record.pruning_steps:  # the unpruned model is this one
                    speedup = {b: 1.0 for b in timed} if precision == "fp32" else int8.get("speedup_vs_fp32")
                found.append({"run": name, "file": str(path), "runtime": record.runtime, "precision": precision,
                              "top1": int8.get(f"top1_{precision}"), "latency": timed,
                              "speedup_vs_unpruned_fp32": speedup})
        rows += sorted(found, key=lambda row: (row["runtime"], PRECISIONS.index(row["precision"])))
    return rows


TITLE = "exported files: speed-up over the unpruned FP32 model in the same runtime (timed side by side at export)"
TEXT_COLUMNS = ("run", "runtime", "precision")


def deployed_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The table's headers and its rows as text (for the terminal and for Markdown alike)."""
    batches = sorted({int(b) for row in rows for b in row["latency"]})
    headers = [*TEXT_COLUMNS, "test top-1 (%)", *(f"latency b{b} (ms)" for b in batches),
               *(f"speed-up b{b}" for b in batches)]
    cells = []
    for row in rows:
        latency = [f"{row['latency'][str(b)]['median_ms']:.3f}{mark(row['latency'][str(b)])}"
                   if str(b) in row["latency"] else "-" for b in batches]
        speedup = row["speedup_vs_unpruned_fp32"] or {}
        cells.append([row["run"], row["runtime"], row["precision"],
                      "-" if row["top1"] is None else f"{row['top1']:.2f}", *latency,
                      *(f"{speedup[str(b)]:.2f}x" if str(b) in speedup else "-" for b in batches)])
    return headers, cells


def deployed_table(rows: list[dict]) -> Table:
    headers, cells = deployed_cells(rows)
    table = Table(title=TITLE)
    for header in headers:
        table.add_column(header, justify="left" if header in TEXT_COLUMNS else "right")
    for row in cells:
        table.add_row(*row)
    return table


def deployed_markdown(rows: list[dict]) -> str:
    """The table in Markdown ("" without exported files)."""
    if not rows:
        return ""
    headers, cells = deployed_cells(rows)
    lines = [f"{TITLE}:", "", "| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" if h in TEXT_COLUMNS else "---:" for h in headers) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def print_deployed(rows: list[dict]) -> None:
    if rows:
        console.print(deployed_table(rows))


__all__ = ["deployed_cells", "deployed_markdown", "deployed_rows", "deployed_table", "export_records", "print_deployed"]
