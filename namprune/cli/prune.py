"""``namprune rank`` and ``namprune prune``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..core.console import console
from ..core.settings import (DEFAULT_RATIO, DEFAULT_THREADS, FINETUNE, LATENCY_TOLERANCE, MACS_TOLERANCE, PRUNE, TRAIN,
                             FinetuneSettings, PruneConfig, TrainConfig)
from ..core.store.paths import check_checkpoint
from ..core.store.records import PruneReport
from .app import app, int_or_text, interrupted
from .options import (CalibrationImages, CostExponent, DataDir, Device, Distill, FinetuneBatch, FinetuneEpochs, FinetuneLr,
                      FinetuneSparsity, Importance, JsonOut, LatencyRuntime, MaxLayerRatio, Normalization, Overwrite, Quiet,
                      Recalibrate, RoundTo, Scope, Seed, Threads)



@app.command()
def rank(
    ckpt: Annotated[Path, typer.Argument(help="A run folder or its model.pt.")],
    importance: Importance = PRUNE.importance,
    normalization: Normalization = PRUNE.normalization,
    calibration_images: CalibrationImages = PRUNE.calibration_images,
    data_dir: DataDir = None,
    top: Annotated[int, typer.Option("--top", min=0, help="Also list the K channels ranked lowest (pruned first).")] = 10,
    json_out: JsonOut = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw each group's saliency distribution "
                                                 "and every SpatialNAM's pixel map to this PNG.")] = None,
) -> None:
    """Rank channels and pixels by their learned NAM weights; show how ready the model is to prune."""
    check_checkpoint(ckpt)  # before torch loads
    from ..app.plots import plot_ranking
    from ..app.stages import compatible_data, shrunk_for
    from ..core.store import checkpoint
    from ..core.store.files import write_json
    from ..core.pruning.saliency import NEAR_ZERO, needs_data, rank_model
    from ..core.training.state import resolve_device
    from ..app.gate_spread import print_gate_spread

    payload = checkpoint.read(ckpt)
    model = checkpoint.build(payload).eval()
    calibration = None
    if needs_data(importance, model):
        calibration = compatible_data(payload, data_dir, 128, resolve_device("cpu")).calibration
    ranking = rank_model(model, importance, normalization, calibration=calibration, images=calibration_images)
    how = ("auto: " if importance == "auto" else "") + f"{ranking.importance} importance, normalization " + (f"auto: {ranking.normalization}" if normalization == "auto"
                                                       else ranking.normalization)
    table = Table(title=f"channel saliency of {checkpoint.model_file(ckpt)} ({how})")
    for column, justify in [("group (first layer)", "left"), ("layers", "right"), ("width", "right"), ("from", "left"),
                            ("near zero", "right"), ("min", "right"), ("median", "right"), ("max", "right")]:
        table.add_column(column, justify=justify)
    for g in ranking.groups:
        table.add_row(g.name, str(len(g.layers)), str(g.width), g.source, f"{g.near_zero(ranking.reference):.0%}",
                      f"{g.scores.min():.3g}", f"{g.scores.median():.3g}", f"{g.scores.max():.3g}")
    console.print(table)
    if ranking.pixels:
        pixels = Table(title="pixel saliency (normalized lambda x H*W; 1 = average pixel)")
        for column in ("SpatialNAM", "size", "near zero", "min", "max"):
            pixels.add_column(column, justify="left" if column == "SpatialNAM" else "right")
        for name, m in ranking.pixels.items():
            pixels.add_row(name, f"{m.shape[0]}x{m.shape[1]}", f"{(m < NEAR_ZERO).float().mean():.0%}",
                           f"{m.min():.3f}", f"{m.max():.3f}")
        console.print(pixels)
    if top:
        lowest = Table(title=f"the {top} channels ranked lowest")
        for column in ("group", "channel", "score"):
            lowest.add_column(column, justify="left" if column == "group" else "right")
        for name, index, score in ranking.lowest(top):
            lowest.add_row(name, str(index), f"{score:.3g}")
        console.print(lowest)
    console.print(f"{ranking.near_zero():.1%} of {ranking.channels} channels are near zero "
                  f"(under {NEAR_ZERO:.0%} of the model's mean score); the largest global ratio that empties no layer "
                  f"is {ranking.largest_safe_ratio():.2f}")
    planned = shrunk_for(payload)
    if planned and ranking.importance != "slim":
        # shrinking zeroes the BatchNorm scales of the channels to go, not their filters: say where it shows
        scales = rank_model(model, "slim")
        console.print(f"planned shrinking (for {planned} of the MACs) pulled {scales.near_zero():.1%} of the BatchNorm "
                      f"scale factors near zero; the {ranking.importance} score ranks those channels low without zeroing "
                      "them, --importance slim ranks by the scale factors")
    gates = print_gate_spread(model, payload, data_dir)
    if json_out:
        write_json(json_out, {**ranking.to_dict(), "nam_gates": gates})
    if plot:
        plot_ranking(ranking, plot, title=f"channel saliency of {checkpoint.model_file(ckpt)} ({how})")
        console.print(f"plot: {plot}")


@app.command()
def prune(
    ckpt: Annotated[Path, typer.Argument(help="A trained run folder or its model.pt (a pruned one can be pruned again).")],
    ratio: Annotated[Optional[float], typer.Option("--ratio", "-r", help=f"Fraction of the prunable channels to remove, in (0, 1). With no amount given: the MACs fraction the model was shrunk for in training (--shrink-macs), else a ratio of {DEFAULT_RATIO}.")] = None,
    target_macs: Annotated[Optional[float], typer.Option("--target-macs", help=f"Instead of --ratio: fraction of the MACs to keep, in (0, 1), met within {MACS_TOLERANCE}.")] = PRUNE.target_macs,
    target_latency: Annotated[Optional[float], typer.Option("--target-latency", help=f"Instead of --ratio: fraction of the measured latency to keep, in (0, 1), met within {LATENCY_TOLERANCE} (timed side by side with the unpruned model; untrustworthy timings are refused).")] = PRUNE.target_latency,
    latency_runtime: LatencyRuntime = PRUNE.latency_runtime,
    latency_batch: Annotated[int, typer.Option("--latency-batch", help="Batch size --target-latency times at.")] = PRUNE.latency_batch,
    latency_threads: Annotated[Optional[int], typer.Option("--latency-threads", help=f"CPU threads --target-latency times with (default {DEFAULT_THREADS}: steady on a shared machine). --threads is the fine-tuning's.")] = PRUNE.latency_threads,
    scope: Scope = PRUNE.scope,
    importance: Importance = PRUNE.importance,
    normalization: Normalization = PRUNE.normalization,
    round_to: RoundTo = PRUNE.round_to,
    max_layer_ratio: MaxLayerRatio = PRUNE.max_layer_ratio,
    cost_exponent: CostExponent = PRUNE.cost_exponent,
    calibration_images: CalibrationImages = PRUNE.calibration_images,
    recalibrate: Recalibrate = PRUNE.recalibrate,
    finetune_epochs: FinetuneEpochs = FINETUNE.epochs,
    distill: Distill = FINETUNE.distill,
    lr: FinetuneLr = FINETUNE.lr,
    finetune_sparsity: FinetuneSparsity = FINETUNE.sparsity,
    batch_size: FinetuneBatch = FINETUNE.batch_size,
    threads: Threads = TRAIN.threads,
    seed: Seed = PRUNE.seed,
    data_dir: DataDir = None,
    device: Device = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: model.pt and report.json.")] = Path("runs/pruned"),
    overwrite: Overwrite = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted fine-tuning in --out from its last complete epoch (the same flags are needed).")] = False,
    quiet: Quiet = False,
) -> None:
    """Remove the lowest-ranked channels structurally, fine-tune, and report the trade-off."""
    check_checkpoint(ckpt)  # before torch loads
    cfg = PruneConfig(ratio=ratio, target_macs=target_macs, target_latency=target_latency, scope=scope,
                      importance=importance, normalization=normalization, round_to=int_or_text(round_to),
                      max_layer_ratio=max_layer_ratio, cost_exponent=cost_exponent, seed=seed, calibration_images=calibration_images,
                      recalibrate=recalibrate, latency_runtime=latency_runtime, latency_batch=latency_batch,
                      latency_threads=latency_threads)
    finetune = FinetuneSettings(epochs=finetune_epochs, lr=lr, sparsity=finetune_sparsity, distill=distill,
                                batch_size=batch_size)
    if threads is not None:
        TrainConfig(threads=threads)  # its check, before any work
    try:
        from ..app.stages import planned_macs, prune_checkpoint

        if ratio is None and target_macs is None and target_latency is None:
            planned = planned_macs(ckpt)  # what training shrank the model for, when it did
            cfg = cfg.with_(ratio=None, target_macs=planned) if planned else cfg
        report = prune_checkpoint(ckpt, cfg, out, finetune, data_dir, device, overwrite, progress=not quiet,
                                  resume=resume, threads=threads)
    except KeyboardInterrupt:
        raise interrupted(out, "the same command and --resume") from None
    print_prune_report(report)
    console.print(f"pruned model: {out / 'model.pt'}   report: {out / 'report.json'}")


def print_prune_report(report: PruneReport) -> None:
    table = Table(title=f"{report.model} ({report.attention}) on {report.dataset}: {report.ratio:.0%} of "
                        f"channels removed by {report.importance} ranking ({report.scope})")
    for column in ("", "params", "MACs", "top-1 %", "top-5 %"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("before", f"{report.params_before:,}", f"{report.macs_before:,}",
                  f"{report.top1_before:.2f}", f"{report.top5_before:.2f}")
    if report.recalibrated:
        table.add_row("pruned", f"{report.params_after:,}", f"{report.macs_after:,}",
                      f"{report.top1_pruned_uncalibrated:.2f}", "")
    table.add_row("BN recalibrated" if report.recalibrated else "pruned",
                  f"{report.params_after:,}", f"{report.macs_after:,}",
                  f"{report.top1_pruned:.2f}", f"{report.top5_pruned:.2f}")
    if report.top1_finetuned is not None:
        how = ", distilled" if report.finetune_distill else ""
        table.add_row(f"fine-tuned ({report.finetune_epochs} ep{how})", f"{report.params_after:,}",
                      f"{report.macs_after:,}", f"{report.top1_finetuned:.2f}", f"{report.top5_finetuned:.2f}")
    table.add_row("change", f"{report.params_after / report.params_before - 1:+.1%}",
                  f"{report.macs_after / report.macs_before - 1:+.1%} ({report.macs_speedup:.2f}x)",
                  f"{report.top1 - report.top1_before:+.2f}", "")
    console.print(table)
    changed = [layer for layer in report.layers if layer.after != layer.before]
    widths = Table(title=f"layer widths ({len(changed)} of {len(report.layers)} layers changed)")
    for column in ("layer", "before", "after", "kept"):
        widths.add_column(column, justify="left" if column == "layer" else "right")
    for layer in changed:
        widths.add_row(layer.name, str(layer.before), str(layer.after), f"{layer.after / layer.before:.0%}")
    console.print(widths)
    if report.latency:
        console.print(latency_line(report.latency))
    if report.round_to == "auto" and report.rounding:  # the multiples it timed (a finer step alone is a note)
        r = report.rounding
        times = ", ".join(f"{m}: {ms:.3f} ms" for m, ms in r["ms"].items())
        console.print(f"--round-to auto chose {r['chosen']} ({r['runtime']}, batch {r['batch']}: {times})"
                      + ("" if r["trusted"] else " [yellow]! timings not to be trusted on this busy machine[/yellow]"))


def latency_line(latency: dict) -> str:
    """What --target-latency measured, and whether it met the target."""
    line = (f"latency ({latency['runtime']}, batch {latency['batch']}, {latency['threads']} thread(s), side by side): "
            f"{latency['before_ms']:.3f} ms -> {latency['after_ms']:.3f} ms, kept {latency['kept']:.3f} "
            f"(target {latency['target']}, ±{latency['uncertainty']:.1%})")
    if latency["met"]:
        return line
    return f"[yellow]{line}: missed by {latency['missed_by']:+.3f}: {latency['why']}[/yellow]"
