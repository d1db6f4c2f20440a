"""The command-line options, each typed once as an alias the commands name (their defaults
come from ``core/settings.py``), so a flag and its help read the same in every command that
takes it, and no command module imports another for its options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.settings import (DEFAULT_THREADS, FINETUNE_LR_FACTOR, IMPORTANCES, MAX_SPREAD, NORMALIZATIONS, OPENVINO_INSTALL,
                             RUNTIMES, SCOPES)

DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder holding the dataset (torchvision layout, or DIR/train + DIR/val|test image folders).")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing output, a folder or a file (only once the new run succeeds).")]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON to this file.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads torch trains and fine-tunes with "
                   "(default: OMP_NUM_THREADS if set, else the cores this process may use, its CPU affinity lowered to "
                   "its cgroup quota). On a machine other jobs keep busy, fewer threads train faster: try 1.")]
Workers = Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes (image folders that stream from disk).")]
Importance = Annotated[str, typer.Option("--importance", help=f"How channels are ranked: {', '.join(IMPORTANCES)}. "
                                         "auto (default): nam for a model with NAM attention, l1 for one without; nam: what each channel carries through its BatchNorm and NAM gate into the "
                                         "layers that read it (measured on calibration images); nam-w: NAM's normalized "
                                         "weight w (the paper); slim: BatchNorm |gamma|; l1: filter norm; taylor: "
                                         "first-order loss change.")]
Normalization = Annotated[str, typer.Option("--normalization", help="How scores of layers of different width are compared: "
                                            f"{', '.join(NORMALIZATIONS)} (auto: the one measured best for the importance).")]
CalibrationImages = Annotated[int, typer.Option("--calibration-images", help="Training images the data-driven scores "
                                                "(nam, taylor) and the BatchNorm recalibration read.")]
Recalibrate = Annotated[bool, typer.Option("--recalibrate/--no-recalibrate", help="Re-estimate BatchNorm statistics on "
                                           "calibration images right after pruning.")]
Distill = Annotated[float, typer.Option("--distill", help="Fine-tune with distillation from the unpruned "
                                        "model: the weight of its soft targets in the loss (0: plain fine-tuning).")]
SCOPE_HELP = ("global: rank all channels together; local: remove the same fraction of every layer; blocks: remove "
              "--round-to channels at a time from the layer whose weakest remaining channel is weakest.")
Scope = Annotated[str, typer.Option("--scope", help=f"One of {', '.join(SCOPES)}. " + SCOPE_HELP)]
RoundTo = Annotated[Optional[str], typer.Option("--round-to", help="Keep channel counts that are multiples of N (default 8: widths onnxruntime's CPU kernels run fast; 1: any width); auto: the multiple of 1, 4, 8, 16 whose pruned model times fastest on --latency-runtime.")]
MaxLayerRatio = Annotated[float, typer.Option("--max-layer-ratio", help="No layer loses more than this fraction of its channels.")]
CostExponent = Annotated[Optional[float], typer.Option("--cost-exponent", help="With --target-macs or --target-latency, channels go in order of score^2 / cost^q, q in [0, 1]: 0 ranks by score alone, 1 is the greedy score-per-cost trade-off (default: the importance's own, 0.5 for the NAM scores, 0 for l1).")]
FinetuneEpochs = Annotated[int, typer.Option("--finetune-epochs", help="Epochs of fine-tuning after pruning (0: none).")]
FinetuneLr = Annotated[Optional[float], typer.Option("--lr", help=f"Fine-tuning learning rate (default: {FINETUNE_LR_FACTOR:g} x the training one).")]
FinetuneBatch = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Fine-tuning batch size (default: the training one).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the random importance.")]
LatencyRuntime = Annotated[str, typer.Option("--latency-runtime", help=f"What --target-latency and --round-to auto time on, on the CPU: {', '.join(RUNTIMES)} (eager); openvino is an optional extra ({OPENVINO_INSTALL}).")]
FinetuneSparsity = Annotated[float, typer.Option("--finetune-sparsity", help="Keep the sparsity penalty on while fine-tuning (default off).")]
LatencyBatch = Annotated[int, typer.Option("--batch", help="The larger batch latency is also measured at (batch 1 always is).")]
TimingThreads = Annotated[Optional[int], typer.Option("--threads", help=f"CPU threads while timing, torch and onnxruntime alike (default {DEFAULT_THREADS}: steady on a shared machine; recorded with every figure). More threads than idle cores make the figures wait for the other jobs.")]
MinTime = Annotated[float, typer.Option("--min-time", help="Seconds of timing per block (torch.utils.benchmark's blocked_autorange).")]
Rounds = Annotated[int, typer.Option("--rounds", help=f"Timing blocks per run and batch, interleaved across runs; the median of the rounds is reported, and rounds that differ by more than {MAX_SPREAD:.0%} mark the figure '!' (not to be trusted).")]
