"""``namprune report`` and ``namprune sweep``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.console import console, note
from ..core.errors import NampruneError
from ..core.settings import FINETUNE, LATENCY, PRUNE, FinetuneSettings, LatencySettings, PruneConfig
from ..core.store.paths import check_checkpoint
from .app import app, int_or_text
from .options import (CalibrationImages, CostExponent, DataDir, Device, Distill, FinetuneBatch, FinetuneEpochs, FinetuneLr,
                      Importance, JsonOut, LatencyBatch, LatencyRuntime, MaxLayerRatio, MinTime, Normalization, Overwrite,
                      Quiet, Recalibrate, RoundTo, Rounds, Scope, Seed, TimingThreads)

SWEEP_FINETUNE_EPOCHS = 1  # a sweep compares points after fine-tuning: one epoch each unless told


def latency_settings(batch: int, threads: int | None, device: str, min_time: float, rounds: int) -> LatencySettings:
    from ..core.training.state import resolve_device

    return LatencySettings(batches=tuple(sorted({1, batch})), threads=threads, device=str(resolve_device(device)),
                           min_run_time=min_time, rounds=rounds)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (namprune train / prune output, or a sweep folder for all its points).")],
    base: Annotated[Optional[Path], typer.Option("--base", help="The unpruned run to compare with (default: the first unpruned run given, else the checkpoint the pruned runs were pruned from).")] = None,
    markdown_out: Annotated[Optional[Path], typer.Option("--markdown", help="Also write the table as Markdown to this file.")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write the table as CSV (raw numbers, units in the column names) to this file.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw top-1 against MACs and measured latency, Pareto front marked, to this PNG.")] = None,
    widths: Annotated[Optional[Path], typer.Option("--widths", help="Also draw every layer's width before and after pruning (pruned runs) to this PNG.")] = None,
    json_out: JsonOut = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Measure top-1 / top-5 again on the test split instead of reading the runs' records.")] = False,
    data_dir: DataDir = None,
    batch: LatencyBatch = max(LATENCY.batches),
    threads: TimingThreads = LATENCY.threads,
    min_time: MinTime = LATENCY.min_run_time,
    rounds: Rounds = LATENCY.rounds,
    device: Device = LATENCY.device,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
) -> None:
    """Compare runs: params, MACs, measured latency and top-1 against the unpruned base, and the
    files exported into the run folders (namprune export RUN --out RUN/export/...) per runtime
    and precision."""
    from ..app.comparison import check_outputs, compare, print_table, pruned_layers, save_comparison
    from ..app.deployed import print_deployed
    from ..app.run_folders import expand, find_base

    check_outputs(markdown_out, csv_out, plot, widths, json_out, overwrite=overwrite)
    settings = latency_settings(batch, threads, device, min_time, rounds)
    found = expand(runs)
    base_run = find_base(found, base)
    layers = pruned_layers(found)
    if widths and not layers:
        raise NampruneError("--widths needs at least one pruned run (with layer widths in its report.json)")
    data_for = _data_loader(data_dir, settings.device) if evaluate else None
    note(f"measuring the runs side by side on {settings.device} ({settings.rounds} rounds)")
    result = compare(found, base_run, settings, data_for)
    print_table(result)
    print_deployed(result["deployed"])
    save_comparison(result, json_out, markdown_out, csv_out, plot, widths, layers)
    written = [f"{what}: {path}" for what, path in (("plot", plot), ("layer widths", widths), ("json", json_out),
                                                   ("markdown", markdown_out), ("csv", csv_out)) if path]
    if written:
        console.print("   ".join(written))


def _data_loader(data_dir, device: str):
    """The test split of each checkpoint's dataset, loaded once per dataset."""
    cache: dict[tuple, object] = {}

    from ..app.stages import compatible_data
    from ..core.training.state import resolve_device

    def data_for(payload: dict):
        info = payload["data"]
        key = (info["name"], info["image_size"])
        if key not in cache:
            cache[key] = compatible_data(payload, data_dir, 256, resolve_device(device))
        return cache[key]
    return data_for


def _fractions(text: Optional[str], flag: str) -> list[float]:
    if text is None:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NampruneError(f"{flag} takes comma-separated fractions such as 0.2,0.4,0.6, got {text!r}") from None


@app.command()
def sweep(
    ckpt: Annotated[Path, typer.Argument(help="A sparse-trained run folder or its model.pt.")],
    ratios: Annotated[Optional[str], typer.Option("--ratios", help="Comma-separated fractions of channels to remove, e.g. 0.2,0.4,0.6.")] = None,
    target_macs: Annotated[Optional[str], typer.Option("--target-macs", help="Comma-separated fractions of the MACs to keep, e.g. 0.7,0.5 (points besides --ratios).")] = None,
    target_latency: Annotated[Optional[str], typer.Option("--target-latency", help="Comma-separated fractions of the measured latency to keep (at --batch, on --latency-runtime), e.g. 0.8,0.6.")] = None,
    latency_runtime: LatencyRuntime = PRUNE.latency_runtime,
    finetune_epochs: FinetuneEpochs = SWEEP_FINETUNE_EPOCHS,
    lr: FinetuneLr = FINETUNE.lr,
    batch_size: FinetuneBatch = FINETUNE.batch_size,
    scope: Scope = PRUNE.scope,
    importance: Importance = PRUNE.importance,
    normalization: Normalization = PRUNE.normalization,
    round_to: RoundTo = PRUNE.round_to,
    max_layer_ratio: MaxLayerRatio = PRUNE.max_layer_ratio,
    cost_exponent: CostExponent = PRUNE.cost_exponent,
    calibration_images: CalibrationImages = PRUNE.calibration_images,
    recalibrate: Recalibrate = PRUNE.recalibrate,
    distill: Distill = FINETUNE.distill,
    seed: Seed = PRUNE.seed,
    data_dir: DataDir = None,
    device: Device = "auto",
    batch: LatencyBatch = max(LATENCY.batches),
    threads: TimingThreads = LATENCY.threads,
    min_time: MinTime = LATENCY.min_run_time,
    rounds: Rounds = LATENCY.rounds,
    latency_device: Annotated[str, typer.Option("--latency-device", help="Where latency is timed: cpu (default) or cuda[:N].")] = LATENCY.device,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one run folder per point, sweep.json, pareto.png, widths.png.")] = Path("runs/sweep"),
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Prune one checkpoint at several ratios / MACs targets, fine-tune each, and draw the Pareto front."""
    check_checkpoint(ckpt)  # before torch loads
    from ..app.comparison import print_table
    from ..app.sweep import run_sweep, sweep_configs

    settings = latency_settings(batch, threads, latency_device, min_time, rounds)  # first: it names --threads
    base_cfg = PruneConfig(scope=scope, importance=importance, normalization=normalization, round_to=int_or_text(round_to),
                           max_layer_ratio=max_layer_ratio, cost_exponent=cost_exponent, seed=seed, calibration_images=calibration_images,
                           recalibrate=recalibrate, latency_runtime=latency_runtime, latency_batch=batch,
                           latency_threads=threads)
    configs = sweep_configs(base_cfg, _fractions(ratios, "--ratios"), _fractions(target_macs, "--target-macs"),
                            _fractions(target_latency, "--target-latency"))
    finetune = FinetuneSettings(epochs=finetune_epochs, lr=lr, distill=distill, batch_size=batch_size)
    record = run_sweep(ckpt, configs, out, finetune, data_dir, device, settings, overwrite, progress=not quiet)
    print_table({"base": record.base["name"], "settings": record.settings, "runs": [record.base, *record.points]})
    console.print(f"Pareto front (top-1 against MACs): {', '.join(record.front['macs'])}")
    console.print(f"sweep: {out / 'sweep.json'}   plots: {out / 'pareto.png'}, {out / 'widths.png'}")


__all__ = ["report", "sweep"]
