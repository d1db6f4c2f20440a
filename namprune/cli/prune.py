"""``namprune rank`` and ``namprune prune``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import checkpoint
from ..console import console
from ..files import write_json
from ..pipeline import prune_checkpoint
from ..plots import plot_ranking
from ..pruning import PruneConfig
from ..saliency import DEFAULT_NORMALIZATION, IMPORTANCES, NEAR_ZERO, rank_model
from .app import DataDir, Device, JsonOut, Overwrite, Quiet, app
from .gates import print_gate_spread

Importance = Annotated[str, typer.Option("--importance", help=f"How channels are ranked: {', '.join(IMPORTANCES)} "
                                         "(nam: NAM's normalized weight w, BatchNorm |gamma| where a group has no NAM).")]
Normalization = Annotated[str, typer.Option("--normalization", help="How scores of layers of different width are compared: "
                                            "auto (the one measured best for the importance), none, mean, sum, max.")]
Scope = Annotated[str, typer.Option("--scope", help="global: rank all channels together; local: remove the same fraction of every layer.")]
RoundTo = Annotated[Optional[int], typer.Option("--round-to", min=1, help="Keep channel counts that are multiples of N (hardware-friendly widths).")]
MaxLayerRatio = Annotated[float, typer.Option("--max-layer-ratio", help="No layer loses more than this fraction of its channels.")]
FinetuneEpochs = Annotated[int, typer.Option("--finetune-epochs", min=0, help="Epochs of fine-tuning after pruning (0: none).")]
FinetuneLr = Annotated[Optional[float], typer.Option("--lr", help="Fine-tuning learning rate (default: a tenth of the training one).")]
FinetuneBatch = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Fine-tuning batch size (default: the training one).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the random importance.")]


@app.command()
def rank(
    ckpt: Annotated[Path, typer.Argument(help="A run folder or its model.pt.")],
    importance: Importance = "nam",
    normalization: Normalization = DEFAULT_NORMALIZATION,
    top: Annotated[int, typer.Option("--top", min=0, help="Also list the K channels ranked lowest (pruned first).")] = 10,
    json_out: JsonOut = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw each group's saliency distribution "
                                                 "and every SpatialNAM's pixel map to this PNG.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Rank channels and pixels by their learned NAM weights; show how ready the model is to prune."""
    model = checkpoint.load(ckpt)
    ranking = rank_model(model, importance, normalization)
    how = f"{importance} importance, normalization " + (f"auto: {ranking.normalization}" if normalization == "auto"
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
    gates = print_gate_spread(model, checkpoint.read(ckpt), data_dir)
    if json_out:
        write_json(json_out, {**ranking.to_dict(), "nam_gates": gates})
    if plot:
        plot_ranking(ranking, plot, title=f"channel saliency of {checkpoint.model_file(ckpt)} ({how})")


@app.command()
def prune(
    ckpt: Annotated[Path, typer.Argument(help="A trained run folder or its model.pt (a pruned one can be pruned again).")],
    ratio: Annotated[Optional[float], typer.Option("--ratio", "-r", help="Fraction of the prunable channels to remove, in (0, 1).")] = None,
    target_macs: Annotated[Optional[float], typer.Option("--target-macs", help="Instead of --ratio: fraction of the MACs to keep, in (0, 1), met within 0.02.")] = None,
    scope: Scope = "global",
    importance: Importance = "nam",
    normalization: Normalization = DEFAULT_NORMALIZATION,
    round_to: RoundTo = None,
    max_layer_ratio: MaxLayerRatio = 0.9,
    finetune_epochs: FinetuneEpochs = 0,
    lr: FinetuneLr = None,
    finetune_sparsity: Annotated[float, typer.Option("--finetune-sparsity", min=0.0, help="Keep the sparsity penalty on while fine-tuning (default off).")] = 0.0,
    batch_size: FinetuneBatch = None,
    seed: Seed = 0,
    data_dir: DataDir = None,
    device: Device = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: model.pt and report.json.")] = Path("runs/pruned"),
    overwrite: Overwrite = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted fine-tuning in --out from its last complete epoch (the same flags are needed).")] = False,
    quiet: Quiet = False,
) -> None:
    """Remove the lowest-ranked channels structurally, fine-tune, and report the trade-off."""
    if ratio is None and target_macs is None:
        ratio = 0.3
    cfg = PruneConfig(ratio=ratio, target_macs=target_macs, scope=scope, importance=importance,
                      normalization=normalization, round_to=round_to, max_layer_ratio=max_layer_ratio, seed=seed)
    report = prune_checkpoint(ckpt, cfg, out, finetune_epochs, lr, finetune_sparsity, data_dir, device, batch_size,
                              overwrite, progress=not quiet, resume=resume)
    print_prune_report(report)
    console.print(f"pruned model: {out / 'model.pt'}   report: {out / 'report.json'}")


def print_prune_report(report: dict) -> None:
    table = Table(title=f"{report['model']} ({report['attention']}) on {report['dataset']}: {report['ratio']:.0%} of "
                        f"channels removed by {report['importance']} ranking ({report['scope']})")
    for column in ("", "params", "MACs", "top-1 %", "top-5 %"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row("before", f"{report['params_before']:,}", f"{report['macs_before']:,}",
                  f"{report['top1_before']:.2f}", f"{report['top5_before']:.2f}")
    table.add_row("pruned", f"{report['params_after']:,}", f"{report['macs_after']:,}",
                  f"{report['top1_pruned']:.2f}", f"{report['top5_pruned']:.2f}")
    if report["top1_finetuned"] is not None:
        table.add_row(f"fine-tuned ({report['finetune_epochs']} ep)", f"{report['params_after']:,}",
                      f"{report['macs_after']:,}", f"{report['top1_finetuned']:.2f}", f"{report['top5_finetuned']:.2f}")
    table.add_row("change", f"{report['params_after'] / report['params_before'] - 1:+.1%}",
                  f"{report['macs_after'] / report['macs_before'] - 1:+.1%} ({report['macs_speedup']:.2f}x)",
                  f"{(report['top1_finetuned'] or report['top1_pruned']) - report['top1_before']:+.2f}", "")
    console.print(table)
    changed = [layer for layer in report["layers"] if layer["after"] != layer["before"]]
    widths = Table(title=f"layer widths ({len(changed)} of {len(report['layers'])} layers changed)")
    for column in ("layer", "before", "after", "kept"):
        widths.add_column(column, justify="left" if column == "layer" else "right")
    for layer in changed:
        widths.add_row(layer["name"], str(layer["before"]), str(layer["after"]), f"{layer['after'] / layer['before']:.0%}")
    console.print(widths)
