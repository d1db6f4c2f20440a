"""Training throughput and NAM overhead, for BENCHMARKS.md ("Training throughput and NAM overhead").

    python benchmarks/throughput.py                  # everything (about 15 minutes on 2 CPU cores)
    python benchmarks/throughput.py --part overhead  # one part: loop, overhead, format or compile

Three comparisons, each measured side by side in one run: the candidates take turns, round
after round, and each is quoted as the median of its rounds (torch.utils.benchmark).

* loop: images/s of one training epoch of namprune's ``fit`` against a plain hand-written
  PyTorch loop on the same ResNet-20 with NAM and the same CIFAR-10 images, the plain loop
  fed (a) by torchvision's ImageFolder + DataLoader, the way such a loop is usually written,
  and (b) by namprune's own in-memory loader, which leaves only the loops' own overhead.
* overhead: the time of one training step (forward, loss + penalty, backward, SGD step) of
  ResNet-20/56 with NAM over the same network without attention, in both memory layouts:
  namprune's ``nam`` and ``nam-channel``; its spatial branch as it was before it chose its
  view by layout; and a straightforward NAM module for reference (BatchNorm, then the
  normalized weights, sigmoid and product as separate operations, laid out as the NAM
  reference code does).
* format: the same step in the channels-last memory format against the default
  (contiguous NCHW), which decides ``TrainConfig.channels_last``'s default.
* compile (only with ``--part compile``; compiling takes minutes): the step of ResNet-20
  none / nam-channel / nam, eager and under torch.compile.

Seed 0 everywhere; CPU only (the script says so when no GPU is there).

``--clock cpu`` measures the CPU time of this process on one thread instead of wall time on
all threads: on a machine shared with other work, wall times swing with the neighbours'
load, CPU time much less. The DataLoader then decodes in this process (no workers), so
its work is counted too.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.utils import benchmark
from torchvision.transforms import v2

import namprune
import namprune.core.console
from namprune import TrainConfig, fit, load_data, models
from namprune.core.nam.modules import ChannelNAM, SpatialNAM, _scaled_batch_norm, normalized_weight
from namprune.core.nam.sparsity import SparsityPenalty

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
SEED = 0
CLOCK = {"wall": (time.perf_counter, None), "cpu": (time.process_time, 1)}  # timer, threads (None: all)
clock = "wall"


# --------------------------------------------------------------------------- measuring


def side_by_side(candidates: dict, rounds: int, min_run_time: float) -> dict[str, benchmark.Measurement]:
    """Time every candidate once per round, in turn, and merge each one's rounds (medians)."""
    timer_fn, threads = CLOCK[clock]
    runs: dict[str, list[benchmark.Measurement]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            timer = benchmark.Timer("fn()", globals={"fn": fn}, label="", sub_label=name, timer=timer_fn,
                                    num_threads=threads or torch.get_num_threads())
            runs[name].append(timer.blocked_autorange(min_run_time=min_run_time) if min_run_time else timer.timeit(1))
    return {name: benchmark.Measurement.merge(ms)[0] for name, ms in runs.items()}


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# --------------------------------------------------------------------------- data


def cifar_folder(root: Path, per_class: int) -> Path:
    """The first ``per_class`` training images of each class (and 10 test images), unpacked
    from the archive (whose files are ``SPLIT/CLASS/NNNN.jpg``)."""
    with tarfile.open(ARCHIVE) as archive:
        keep = [m for m in archive.getmembers()
                if m.isfile() and int(Path(m.name).stem) < (per_class if Path(m.name).parts[-3] == "train" else 10)]
        archive.extractall(root, members=keep, filter="data")
    return root


# --------------------------------------------------------------------------- part 1: loops


def plain_epoch(model, train_loader, test_loader, optimizer, penalty, memory_format) -> float:
    """The loop a PyTorch user writes by hand: the same loss (task + NAM penalty) and optimizer,
    and, like ``fit``, the test accuracy at the end of the epoch."""
    model.train()
    for images, labels in train_loader:
        loss = F.cross_entropy(model(images.contiguous(memory_format=memory_format)), labels) + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(images).argmax(1) == labels).sum().item() for images, labels in test_loader)
    return correct


def loop_part(folder: Path, batch_size: int, rounds: int) -> str:
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=0.05, schedule="constant", seed=SEED, device="cpu")
    data = load_data("cifar10", folder, batch_size=batch_size, seed=SEED)
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(data.info.mean, data.info.std)]
    augment = [v2.ToImage(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    workers = 2 if clock == "wall" else 0  # CPU time counts only this process's work
    torchvision_loaders = [
        torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(str(folder / split), transform=v2.Compose(tf)),
                                    batch_size=batch_size, shuffle=split == "train", drop_last=split == "train",
                                    num_workers=workers, persistent_workers=workers > 0)
        for split, tf in (("train", augment + normalize[1:]), ("test", normalize))]

    def net():
        torch.manual_seed(SEED)
        return models.create("resnet20", 10, "nam", 32, 3)

    def plain(loaders, memory_format=torch.contiguous_format):
        model = net().to(memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        penalty = SparsityPenalty(model, cfg.sparsity)
        return lambda: plain_epoch(model, *loaders, optimizer, penalty, memory_format)

    namprune_model = net()
    candidates = {
        "namprune fit (in-memory data, batched augmentation)": lambda: fit(namprune_model, data, cfg, progress=False),
        f"plain loop, torchvision ImageFolder + DataLoader ({workers} workers)": plain(torchvision_loaders),
        "plain loop, namprune's in-memory loader": plain([data.train, data.test]),
        "plain loop, namprune's in-memory loader, channels-last": plain([data.train, data.test], torch.channels_last),
    }
    images = len(data.train) * batch_size
    results = side_by_side(candidates, rounds, min_run_time=0)
    ours = results[next(iter(candidates))].median
    rows = [[name, f"{images / m.median:.0f}", f"{m.median:.2f}", f"{m.median / ours:.2f}"] for name, m in results.items()]
    return (f"ResNet-20 + NAM, an epoch of {images} CIFAR-10 (JPEG q75) training images (batch {batch_size}) and "
            f"{data.info.test_size} test images, medians of {rounds} epochs each\n\n"
            + table(rows, ["loop", "training images/s", "epoch s", "namprune's speed-up (plain time / namprune time)"]))


# --------------------------------------------------------------------------- part 2: NAM overhead


class StraightforwardChannelNAM(nn.Module):
    """NAM's channel branch as the reference code writes it: BatchNorm, then the normalized
    weights on a channels-last copy, then sigmoid and product (with the gradient through w,
    so it is the same function as namprune's ChannelNAM)."""

    def __init__(self, nam: ChannelNAM):
        super().__init__()
        self.bn = nam.bn

    def forward(self, x):
        residual = x
        x = self.bn(x)
        x = x.permute(0, 2, 3, 1).contiguous()
        x = torch.mul(normalized_weight(self.bn.weight), x)
        x = x.permute(0, 3, 1, 2).contiguous()
        return torch.sigmoid(x) * residual


class StraightforwardSpatialNAM(nn.Module):
    """The spatial branch the same way: pixel BatchNorm module, then the weights, sigmoid, product."""

    def __init__(self, nam: SpatialNAM):
        super().__init__()
        self.bn = nam.bn

    def forward(self, x):
        n, c, h, w = x.shape
        pixels = self.bn(x.reshape(n, c, h * w).transpose(1, 2).contiguous())
        logits = (pixels * normalized_weight(self.bn.weight).view(1, -1, 1)).transpose(1, 2).reshape(n, c, h, w)
        return torch.sigmoid(logits) * x


class SpatialNAM3D(SpatialNAM):
    """namprune's SpatialNAM before 2026-11-21: always the (N, HW, C) view into BatchNorm."""

    def __init__(self, nam: SpatialNAM):
        super().__init__(nam.height, nam.width)
        self.bn = nam.bn

    def forward(self, x):
        n, c, h, w = x.shape
        logits = _scaled_batch_norm(self.bn, x.flatten(2).transpose(1, 2), normalized_weight(self.bn.weight))
        return x * torch.sigmoid(logits.transpose(1, 2).reshape(n, c, h, w))


def swap(model: nn.Module, replacements: dict) -> nn.Module:
    """Replace NAM branches by type (same BatchNorms, so the same function)."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) in replacements:
                setattr(parent, name, replacements[type(child)](child))
    return model


STRAIGHTFORWARD = {ChannelNAM: StraightforwardChannelNAM, SpatialNAM: StraightforwardSpatialNAM}
VARIANTS = {  # label -> (attention, replacements)
    "none": ("none", {}),
    "nam-channel": ("nam-channel", {}),
    "nam": ("nam", {}),
    "nam, SpatialNAM before 2026-11-21": ("nam", {SpatialNAM: SpatialNAM3D}),
    "nam-channel, straightforward module": ("nam-channel", STRAIGHTFORWARD),
    "nam, straightforward module": ("nam", STRAIGHTFORWARD),
}


def train_step(arch: str, variant: str, batch_size: int, memory_format: torch.memory_format, compiled: bool = False):
    """One training step (loss + penalty, backward, SGD) of a fresh model on a fixed batch."""
    attention, replacements = VARIANTS[variant]
    torch.manual_seed(SEED)
    model = swap(models.create(arch, 10, attention, 32, 3), replacements).to(memory_format=memory_format)
    x = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    penalty = SparsityPenalty(model, 1e-4)
    forward = torch.compile(model) if compiled else model

    def step():
        reg = penalty()
        loss = F.cross_entropy(forward(x), y) + (0 if reg is None else reg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if compiled:
        step()  # compile before timing
    return step


LAYOUTS = {"channels-last": torch.channels_last, "contiguous": torch.contiguous_format}


def overhead_part(archs: list[str], layouts: list[str], batch_size: int, rounds: int, min_run_time: float) -> str:
    rows = []
    for arch in archs:
        for layout in layouts:
            candidates = {variant: train_step(arch, variant, batch_size, LAYOUTS[layout]) for variant in VARIANTS}
            results = side_by_side(candidates, rounds, min_run_time)
            base = results["none"].median
            rows += [[arch, layout, variant, f"{m.median * 1e3:.0f}", f"{m.median / base:.3f}x"]
                     for variant, m in results.items()]
    return (f"one training step, batch {batch_size} of 32x32 RGB, medians of {rounds} rounds\n\n"
            + table(rows, ["model", "layout", "attention", "step ms", "over none"]))


def format_part(batch_size: int, rounds: int, min_run_time: float) -> str:
    rows = []
    for variant in ("none", "nam"):
        candidates = {layout: train_step("resnet20", variant, batch_size, fmt) for layout, fmt in LAYOUTS.items()}
        results = side_by_side(candidates, rounds, min_run_time)
        base = results["contiguous"].median
        rows += [["resnet20", variant, layout, f"{m.median * 1e3:.0f}", f"{m.median / base:.3f}x"]
                 for layout, m in results.items()]
    return (f"one training step, batch {batch_size}, medians of {rounds} rounds\n\n"
            + table(rows, ["model", "attention", "memory format", "step ms", "over contiguous"]))


def compile_part(batch_size: int, rounds: int, min_run_time: float) -> str:
    candidates = {(variant, compiled): train_step("resnet20", variant, batch_size, torch.channels_last, compiled)
                  for variant in ("none", "nam-channel", "nam") for compiled in (False, True)}
    results = side_by_side({f"{v}{', compiled' if c else ''}": fn for (v, c), fn in candidates.items()}, rounds,
                           min_run_time)
    base = results["none"].median
    rows = [["resnet20", name, f"{m.median * 1e3:.0f}", f"{m.median / base:.3f}x"] for name, m in results.items()]
    return (f"one training step, batch {batch_size}, channels-last, medians of {rounds} rounds (compiling is not timed)\n\n"
            + table(rows, ["model", "attention", "step ms", "over eager none"]))


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "loop", "overhead", "format", "compile"], default="all",
                        help="all = loop, overhead and format; compile (torch.compile against eager) only when named")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="turns each candidate takes (the median is quoted)")
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per step measurement per round")
    parser.add_argument("--per-class", type=int, default=100, help="CIFAR-10 training images per class (loop part)")
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--layouts", default="channels-last,contiguous", help="memory layouts of the overhead part")
    parser.add_argument("--clock", choices=list(CLOCK), default="wall",
                        help="wall: wall time on all threads; cpu: this process's CPU time on one thread")
    args = parser.parse_args()
    global clock
    clock = args.clock
    namprune.core.console.err_console.quiet = True  # fit's per-epoch lines
    torch.manual_seed(SEED)
    threads = CLOCK[clock][1] or torch.get_num_threads()
    torch.set_num_threads(threads)  # also what torch.compile generates its kernels for
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU: CPU only"
    print(f"date {datetime.date.today()}, {platform.machine()}, {clock} clock, {threads} thread(s), {gpu}, "
          f"torch {torch.__version__}, namprune {namprune.__version__}, seed {SEED}\n")
    if args.part in ("all", "format"):
        print("## memory format\n\n" + format_part(args.batch_size, args.rounds, args.min_run_time) + "\n")
    if args.part in ("all", "overhead"):
        print("## NAM overhead\n\n" + overhead_part(args.models.split(","), args.layouts.split(","), args.batch_size,
                                                    args.rounds, args.min_run_time) + "\n")
    if args.part == "compile":
        print("## torch.compile\n\n" + compile_part(args.batch_size, args.rounds, args.min_run_time) + "\n")
    if args.part in ("all", "loop"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = cifar_folder(Path(tmp), args.per_class)
            print("## training loop\n\n" + loop_part(folder, args.batch_size, args.rounds) + "\n")


if __name__ == "__main__":
    main()
