"""``namprune train``, ``namprune eval`` and ``namprune info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..core.console import console
from ..core.errors import NampruneError
from ..core.settings import (AMP_MODES, ATTENTIONS, DATASETS, DEFAULT_ATTENTION, DEFAULT_DATASET, DEFAULT_MODEL,
                             DEFAULT_WORKERS, OPTIMIZERS, SCHEDULES, TRAIN, TrainConfig)
from ..core.store.files import check_out_dir, train_resume_command
from ..core.store.paths import check_checkpoint, check_dataset, check_resumable, check_weights_file, image_folder_splits
from .app import app, interrupted
from .options import DataDir, Device, JsonOut, Overwrite, Quiet, Threads, Workers


def check_paths(dataset: str, data_dir: Optional[Path], weights: Optional[Path]) -> None:
    """The dataset's name and folder and the weights file, before anything is loaded."""
    check_dataset(dataset)
    if dataset == "imagefolder":
        image_folder_splits(data_dir)
    if weights is not None:
        check_weights_file(weights)


def _names(text: Optional[str]) -> Optional[list[str]]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    return names or None


def _milestones(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return sorted(int(v) for v in text.split(","))
    except ValueError:
        raise NampruneError(f"--milestones takes comma-separated epochs such as 60,120,160, got {text!r}") from None


@app.command()
def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Registry name (resnet20, resnet56, resnet18/34/50, mobilenetv2), tv:<torchvision name>, timm:<timm name> (pip install \"namprune\\[timm]\") or path/to/file.py:function (your own constructor, called with the arguments it declares among num_classes, in_channels, input_size).")] = DEFAULT_MODEL,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Start from this local state_dict (saved by torchvision, timm or any PyTorch code; read with weights_only=True). A classifier of another class count starts fresh, with a note.", metavar="FILE")] = None,
    nam_after: Annotated[Optional[str], typer.Option("--nam-after", help="Attach NAM after these layers (comma-separated module names) instead of at the residual branches namprune recognises; for tv:, timm: and file models.", metavar="NAMES")] = None,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help=f"One of {', '.join(DATASETS)}.")] = DEFAULT_DATASET,
    data_dir: DataDir = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=8, help="Input side in pixels (default: the dataset's own; 16 for digits, 224 for large image folders).")] = None,
    attention: Annotated[str, typer.Option("--attention", help=f"One of {', '.join(ATTENTIONS)}; nam = channel then spatial NAM (the paper's module; none measured more accurate and faster after pruning).")] = DEFAULT_ATTENTION,
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Training epochs.")] = TRAIN.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per step (per process under torchrun).")] = TRAIN.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = TRAIN.lr,
    optimizer: Annotated[str, typer.Option("--optimizer", help=f"{' or '.join(OPTIMIZERS)} (SGD with momentum).")] = TRAIN.optimizer,
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.")] = TRAIN.momentum,
    nesterov: Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum for SGD.")] = TRAIN.nesterov,
    weight_decay: Annotated[float, typer.Option("--weight-decay", "--wd", help="Weight decay.")] = TRAIN.weight_decay,
    bn_weight_decay: Annotated[bool, typer.Option("--bn-weight-decay/--no-bn-weight-decay", help="Weight decay on the BatchNorm / NAM scale factors and shifts too (the NAM code and torch-pruning's examples do); --no-bn-weight-decay leaves them to the sparsity penalty alone.")] = TRAIN.bn_weight_decay,
    schedule: Annotated[str, typer.Option("--schedule", help=f"One of {', '.join(SCHEDULES)}: onecycle (best measured for short runs), multistep (the NAM paper's).")] = TRAIN.schedule,
    milestones: Annotated[Optional[str], typer.Option("--milestones", help="Epochs where multistep multiplies the lr by --lr-decay, e.g. 60,120,160 (default 30/60/80 % of the run).")] = None,
    lr_decay: Annotated[float, typer.Option("--lr-decay", help="Multistep factor (the NAM paper uses 0.2).")] = TRAIN.lr_decay,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs", help="Linear lr warmup epochs.")] = TRAIN.warmup_epochs,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", help="Label smoothing of the cross-entropy loss, in [0, 1).")] = TRAIN.label_smoothing,
    sparsity: Annotated[float, typer.Option("--sparsity", "-p", help="Strength p of a uniform L1 penalty on the scale factors (default 0: planned shrinking instead; the paper uses 1e-4 over 200 epochs).")] = TRAIN.sparsity,
    sparsity_targets: Annotated[str, typer.Option("--sparsity-targets", help="all: every scale factor; bn: the network's own BatchNorms (Network Slimming); nam: NAM's gamma and lambda only (the paper).")] = TRAIN.sparsity_targets,
    shrink_macs: Annotated[float, typer.Option("--shrink-macs", help="Planned shrinking: from --shrink-start of the run on, pull towards zero the channels that pruning to keep this fraction of the MACs would remove, and no others; `namprune prune` then defaults to this amount (0 turns it off).")] = TRAIN.shrink_macs,
    shrink_start: Annotated[float, typer.Option("--shrink-start", help="Fraction of the run after which planned shrinking starts, in [0, 1).")] = TRAIN.shrink_start,
    shrink_scope: Annotated[str, typer.Option("--shrink-scope", help="The allocation planned shrinking plans with: what `namprune prune --scope` will prune with.")] = TRAIN.shrink_scope,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (weights, data order, augmentation).")] = TRAIN.seed,
    device: Device = "auto",
    amp: Annotated[str, typer.Option("--amp", help=f"One of {', '.join(AMP_MODES)}: auto is bf16 on CUDA, off on CPU; fp16 uses loss scaling.")] = TRAIN.amp,
    channels_last: Annotated[bool, typer.Option("--channels-last/--no-channels-last", help="Train in the channels-last memory format (NHWC).")] = TRAIN.channels_last,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model for training (the first steps wait for the compiler).")] = TRAIN.compile,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="Under torchrun on GPUs: BatchNorm statistics over all processes' batches (SyncBatchNorm).")] = TRAIN.sync_bn,
    threads: Threads = TRAIN.threads,
    workers: Workers = DEFAULT_WORKERS,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: model.pt, metrics.jsonl, summary.json.")] = Path("runs/train"),
    overwrite: Overwrite = False,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the interrupted run whose --out was DIR from its last complete epoch, with the settings saved in it (only --data-dir, --device, --threads, --workers and --quiet still apply).", metavar="DIR")] = None,
    quiet: Quiet = False,
) -> None:
    """Train a model, shrinking the channels a prune will remove (--attention nam adds NAM); checkpoint every epoch."""
    # Everything that can be checked without torch is checked before it loads (seconds).
    target = resume if resume is not None else out
    if resume is not None:
        check_resumable(resume)
        if threads is not None:
            TrainConfig(threads=threads)  # the one setting of a resumed run given anew
    else:
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                          nesterov=nesterov, weight_decay=weight_decay, bn_weight_decay=bn_weight_decay, schedule=schedule, milestones=_milestones(milestones),
                          lr_decay=lr_decay, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, sparsity=sparsity,
                          sparsity_targets=sparsity_targets, shrink_macs=shrink_macs, shrink_start=shrink_start,
                          shrink_scope=shrink_scope, seed=seed,
                          device=device, amp=amp, channels_last=channels_last, compile=compile_, sync_bn=sync_bn,
                          threads=threads)
        check_paths(dataset, data_dir, weights)
        check_out_dir(out, overwrite, resume=f"`{train_resume_command(out)}`")
    try:
        from ..app.stages import resume_training, train_model
        from ..core.nam.attach import NoKnownBlocks

        if resume is not None:
            summary = resume_training(resume, data_dir, device, workers, progress=not quiet, threads=threads)
        else:
            summary = train_model(model, dataset, cfg, out, data_dir=data_dir, image_size=image_size, attention=attention,
                                  workers=workers, overwrite=overwrite, progress=not quiet, weights=weights,
                                  nam_after=_names(nam_after))
    except KeyboardInterrupt:
        raise interrupted(target, f"`{train_resume_command(target)}`") from None
    except NoKnownBlocks as exc:  # worded for Python (after=[...]); here the layers are named with a flag
        raise exc.for_flag("--nam-after") from None
    out = target
    final, extra = summary.final, summary.config["extra"]
    console.print(f"trained {extra['model']} ({extra['attention']}) on {extra['dataset']}: top-1 {final['test_top1']:.2f}%, "
                  f"top-5 {final['test_top5']:.2f}% after {summary.epochs} epochs ({summary.train_time_s:.0f} s)")
    console.print(f"checkpoint: {out / 'model.pt'}")


@app.command("eval")
def eval_(
    ckpt: Annotated[Path, typer.Argument(help="A run folder or its model.pt.")],
    data_dir: DataDir = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per step.")] = 256,
    device: Device = "auto",
    json_out: JsonOut = None,
) -> None:
    """Evaluate a checkpoint on the test split of the dataset it was trained on."""
    check_checkpoint(ckpt)  # before torch loads
    from ..app.stages import compatible_data
    from ..core.store import checkpoint
    from ..core.store.files import write_json
    from ..core.training.loop import evaluate
    from ..core.training.state import resolve_device

    payload = checkpoint.read(ckpt)
    net = checkpoint.build(payload)
    info = payload["data"]
    device_ = resolve_device(device)
    data = compatible_data(payload, data_dir, batch_size, device_)
    result = evaluate(net.to(device_), data.test, device_)
    table = Table(title=f"{checkpoint.model_file(ckpt)} on {info['name']} (test split)")
    for column in ("top-1 %", "top-5 %", "loss", "images"):
        table.add_column(column, justify="right")
    table.add_row(f"{result['top1']:.2f}", f"{result['top5']:.2f}", f"{result['loss']:.4f}", str(result["samples"]))
    console.print(table)
    if json_out:
        write_json(json_out, result)


@app.command()
def info(
    ckpt: Annotated[Path, typer.Argument(help="A run folder or its model.pt.")],
    json_out: JsonOut = None,
    data_dir: DataDir = None,
) -> None:
    """Show a checkpoint's architecture, size, cost and metrics, and what its NAM gates do on training images."""
    check_checkpoint(ckpt)  # before torch loads
    from ..core.store import checkpoint
    from ..core import models
    from ..core.deploy.measure import count_macs, count_params
    from ..core.store.files import write_json
    from ..app.gate_spread import print_gate_spread

    payload = checkpoint.read(ckpt)
    net = checkpoint.build(payload)
    arch, data = payload["arch"], payload["data"]
    summary = {
        "model": arch["name"], "attention": arch["attention"], "input": f"{arch['in_channels']}x{arch['input_size']}x{arch['input_size']}",
        "classes": arch["num_classes"], "dataset": data["name"], "params": count_params(net), "macs": count_macs(net),
        "pruning_steps": len(payload.get("pruning_history") or []),
        "params_kept": round(count_params(net) / count_params(models.from_spec(arch)), 4),
        "metrics": payload.get("metrics", {}),
        "namprune_version": payload.get("namprune_version"),
    }
    table = Table(title=str(checkpoint.model_file(ckpt)), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary.items():
        if key == "metrics":
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        elif key in ("params", "macs"):
            value = f"{value:,} ({value / 1e6:.3f} M)"
        elif key == "params_kept":
            value = f"{value:.1%} of the unpruned architecture"
        table.add_row(key, str(value))
    console.print(table)
    summary["nam_gates"] = print_gate_spread(net, payload, data_dir)
    if json_out:
        write_json(json_out, summary)
