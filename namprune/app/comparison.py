"""The trade-off table: every run's params, MACs, measured latency and top-1, set against the
unpruned base, as a rich table, Markdown, CSV and JSON.

``compare`` loads every run's checkpoint, counts params and MACs, times all models side by
side (``measure.measure_latency``), and takes top-1 / top-5 from the runs' records (or
measures them again on the test split, with ``data``); the runs' exported files, per runtime
and precision, come from their export records (``deployed``). Speed-ups are the base's figure
divided by the run's: MACs speed-up from the counter, measured speed-up from the medians.
``pareto_front`` says which runs no other run beats on both cost and accuracy.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from ..core.console import console
from ..core.deploy.measure import measure_accuracy, measure_cost, measure_latency
from ..core.deploy.timing import mark, settings_record, summary, trust_problem
from ..core.errors import NampruneError
from ..core.settings import LatencySettings
from ..core.store import checkpoint
from ..core.store.files import write_json, write_text
from .deployed import deployed_markdown, deployed_rows
from .plots import plot_layer_widths, plot_pareto
from .run_folders import Run, display_names


def compare(runs: list[Run], base: Run, settings: LatencySettings = LatencySettings(),
            data_for: Callable[[dict], object] | None = None) -> dict:
    """Measure ``runs`` (the base first, added if it is not among them) against ``base``.

    ``data_for(payload)``, when given, returns the DataBundle to evaluate a checkpoint on;
    top-1 / top-5 are then measured instead of read from the runs' records.
    """
    runs = [base] + [run for run in runs if not run.same(base)]
    names = display_names(runs)
    payloads = [checkpoint.read(run.path) for run in runs]
    models = {name: checkpoint.build(payload) for name, payload in zip(names, payloads)}
    recorded = [run.accuracy() for run in runs] if data_for is None else None  # a bad record fails before timing
    latency = measure_latency(models, settings)  # moves every model to settings.device
    rows = []
    for i, (run, name, payload) in enumerate(zip(runs, names, payloads)):
        model = models[name]
        accuracy = recorded[i] if recorded else _evaluated(model, data_for(payload), settings.device)
        rows.append({"name": name, "path": str(run.path), "kind": run.kind, "base": run is base,
                     "source": str(run.source) if run.source else None, "model": payload["arch"]["name"],
                     "dataset": payload["data"]["name"], **measure_cost(model), **accuracy,
                     "latency": {str(b): record for b, record in latency[name].items()}})
    for row in rows:
        _add_changes(row, rows[0], settings.batches)
    result = {"base": names[0], "settings": settings_record(settings), "runs": rows}
    return {**result, "fronts": fronts(result), "deployed": deployed_rows(runs, names)}


def _evaluated(model, data, device) -> dict:
    result = measure_accuracy(model, data, device)
    return {"top1": result["top1"], "top5": result["top5"],
            "accuracy_from": f"evaluated on the {result['dataset']} test split ({result['samples']} images)"}


def _add_changes(row: dict, base: dict, batches) -> None:
    row["top1_change"] = round(row["top1"] - base["top1"], 4)
    row["params_kept"] = round(row["params"] / base["params"], 4)
    row["macs_speedup"] = round(base["macs"] / row["macs"], 4)
    row["measured_speedup"] = {str(b): round(base["latency"][str(b)]["median_ms"] / row["latency"][str(b)]["median_ms"], 4)
                               for b in batches}


def pareto_front(costs: list[float], scores: list[float]) -> list[bool]:
    """``on_front[i]``: no other point costs at most as much and scores at least as well, being
    strictly better in one of the two. Identical points do not dominate each other."""
    if len(costs) != len(scores):
        raise ValueError("costs and scores must have the same length")
    points = list(zip(costs, scores))
    return [not any(c <= cost and s >= score and (c < cost or s > score) for c, s in points)
            for cost, score in points]


def fronts(result: dict) -> dict[str, list[bool]]:
    """The Pareto front of top-1 against MACs and against the measured latency at each batch.
    A latency flagged untrusted is on no front, and is no reason for another point to be off one."""
    rows, top1 = result["runs"], [row["top1"] for row in result["runs"]]
    out = {"macs": pareto_front([row["macs"] for row in rows], top1)}
    for batch in result["settings"]["batches"]:
        timed = [row["latency"][str(batch)] for row in rows]
        trusted = [i for i, t in enumerate(timed) if t.get("trusted", True)]
        on = pareto_front([timed[i]["median_ms"] for i in trusted], [top1[i] for i in trusted])
        front = dict(zip(trusted, on))
        out[f"latency_b{batch}"] = [front.get(i, False) for i in range(len(rows))]
    return out


# --------------------------------------------------------------------------- renderings

def columns(batches) -> list[tuple[str, Callable[[dict], str]]]:
    """The table's columns: header and how a row's value is written."""
    latency = [(f"latency b{b} (ms)", lambda r, b=b: f"{r['latency'][str(b)]['median_ms']:.2f}{mark(r['latency'][str(b)])}")
               for b in batches]
    measured = [(f"measured speed-up b{b}", lambda r, b=b: f"{r['measured_speedup'][str(b)]:.2f}x{_ratio_mark(r, b)}")
                for b in batches]
    return [
        ("run", lambda r: r["name"] + (" (base)" if r["base"] else "")),
        ("params (M)", lambda r: f"{r['params'] / 1e6:.3f}"),
        ("MACs (M)", lambda r: f"{r['macs'] / 1e6:.2f}"),
        *latency,
        ("top-1 (%)", lambda r: f"{r['top1']:.2f}"),
        ("Δ top-1 (pp)", lambda r: f"{r['top1_change']:+.2f}"),
        ("MACs speed-up", lambda r: f"{r['macs_speedup']:.2f}x"),
        *measured,
    ]


def _ratio_mark(row: dict, batch: int) -> str:
    """A speed-up is a ratio of figures timed side by side: it holds while the rounds agree."""
    return "" if trust_problem(row["latency"][str(batch)], absolute=False) is None else "!"


def settings_line(result: dict) -> str:
    s = result["settings"]
    return (f"latency: median of {s['rounds']} interleaved rounds of >= {s['min_run_time']} s per run and batch "
            f"(torch.utils.benchmark), {s['device']}, {s['threads']} thread(s), torch {s['torch']}, {s['machine']}; "
            f"MACs for one image; speed-ups against {result['base']}; ! = not to be trusted (below)")


def untrusted_lines(result: dict) -> list[str]:
    """What was wrong with the figures marked "!" in the table and how to get clean ones
    (each record's own reason is in the JSON)."""
    flagged = summary([record for row in result["runs"] for record in row["latency"].values()])
    return [flagged] if flagged else []


def rich_table(result: dict) -> Table:
    table = Table(title="trade-off of the runs", caption=settings_line(result))
    cols = columns(result["settings"]["batches"])
    for header, cell in cols:
        # Never cut a name or a number: a column is at least as wide as its longest value and
        # header word; headers wrap between words instead.
        widest = max([len(cell(row)) for row in result["runs"]] + [len(word) for word in header.split()])
        table.add_column(header, justify="left" if header == "run" else "right", min_width=widest)
    for row in result["runs"]:
        table.add_row(*(cell(row) for _, cell in cols))
    return table


def print_table(result: dict, out: Console = console) -> None:
    """The table on stdout, as wide as it needs to be: on a narrow terminal the lines wrap
    rather than numbers being cut."""
    table = rich_table(result)
    needed = Measurement.get(out, out.options.update(width=10_000), table).minimum
    out.print(table, width=max(out.width, needed), crop=False)
    for line in untrusted_lines(result):
        out.print(line, style="yellow")


def markdown(result: dict) -> str:
    cols = columns(result["settings"]["batches"])
    lines = ["| " + " | ".join(header for header, _ in cols) + " |",
             "| " + " | ".join("---" if header == "run" else "---:" for header, _ in cols) + " |"]
    lines += ["| " + " | ".join(cell(row) for _, cell in cols) + " |" for row in result["runs"]]
    flagged = "".join(f"\n{line}\n" for line in untrusted_lines(result))
    deployed = deployed_markdown(result.get("deployed") or [])
    return "\n".join(lines) + f"\n\n{settings_line(result)}\n" + flagged + (f"\n{deployed}" if deployed else "")


def flat_row(row: dict, batches) -> dict:
    """One CSV row: raw numbers, units in the column names."""
    flat = {key: row[key] for key in ("name", "kind", "base", "path", "source", "model", "dataset", "params", "macs")}
    flat |= {f"latency_b{b}_ms": row["latency"][str(b)]["median_ms"] for b in batches}
    flat |= {f"latency_b{b}_iqr_ms": row["latency"][str(b)]["iqr_ms"] for b in batches}
    flat |= {f"latency_b{b}_spread": row["latency"][str(b)]["spread"] for b in batches}
    flat |= {f"latency_b{b}_trusted": row["latency"][str(b)]["trusted"] for b in batches}
    flat |= {key: row[key] for key in ("top1", "top5", "top1_change", "params_kept", "macs_speedup")}
    flat |= {f"measured_speedup_b{b}": row["measured_speedup"][str(b)] for b in batches}
    return flat


def csv_text(result: dict) -> str:
    rows = [flat_row(row, result["settings"]["batches"]) for row in result["runs"]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def save_comparison(result: dict, json_file: Path | None = None, markdown_file: Path | None = None,
                    csv_file: Path | None = None,
                    pareto: Path | None = None, widths: Path | None = None, layers: dict | None = None,
                    title: str = "") -> None:
    """Write what was asked of a comparison: its JSON, Markdown and CSV tables, top-1 against
    cost with the Pareto fronts marked, and the layer widths of ``layers`` (run name -> widths).
    The widths picture is the one that can refuse its input, so it is drawn first."""
    if widths:
        if not layers:
            raise NampruneError("the layer widths need at least one pruned run (with layer widths in its report.json)")
        plot_layer_widths(layers, widths, title=title and f"{title}: layer widths before and after pruning")
    if pareto:
        plot_pareto(result, result["fronts"], pareto, title=title and f"{title}: accuracy against cost")
    for path, text in ((markdown_file, markdown), (csv_file, csv_text)):
        if path:
            write_text(path, text(result))
    if json_file:
        write_json(json_file, result)


def pruned_layers(runs: list[Run]) -> dict[str, list[dict]]:
    """Layer widths of the pruned runs among ``runs``, by folder name."""
    return {run.path.name: [layer.model_dump() for layer in run.record.layers]
            for run in runs if run.pruned and run.record.layers}


def check_outputs(*paths: Path | None, overwrite: bool = False) -> None:
    """Refuse, before any work, to replace an existing output file without ``overwrite``."""
    for path in paths:
        if path is not None and path.exists() and not overwrite:
            raise NampruneError(f"{path} already exists; pass --overwrite to replace it")


__all__ = ["check_outputs", "columns", "compare", "csv_text", "flat_row", "fronts", "markdown", "pareto_front",
           "print_table", "pruned_layers", "rich_table", "save_comparison", "settings_line",
           "untrusted_lines"]
