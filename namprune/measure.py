"""What a model costs and how well it does: parameters, MACs, measured latency, top-1/top-5.

Every figure comes back with the settings it was measured with, so a number in a report
can always be traced to how it was taken:

* params: every parameter tensor's elements (no settings needed).
* MACs: torch-pruning's counter (``tp.utils.count_ops_and_params``) for one image of the
  model's input size: multiply-accumulates of convolutions and linear layers, plus one
  operation per element for BatchNorm (two when affine), ReLU/ReLU6 and pooling. The NAM
  gates (a sigmoid and a multiply per element) are not counted.
* latency: ``torch.utils.benchmark`` medians in eval mode under ``torch.inference_mode``,
  at batch 1 and a larger batch, with the thread count, device, input shape and torch
  version recorded. Several models are timed side by side (interleaved rounds), so a
  noisy machine slows them all alike and their ratio stays meaningful.
* top-1 / top-5: ``namprune.engine.evaluate`` on the test split.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.utils.benchmark as benchmark

from .cost import MACS_COUNTER, count_macs, count_params
from .data import DataBundle
from .engine import evaluate
from .errors import NampruneError
from .graph import example_input


def measure_cost(model: nn.Module) -> dict:
    """Params and MACs, with the input shape and counter the MACs were counted with."""
    return {"params": count_params(model), "macs": count_macs(model),
            "macs_input_shape": list(example_input(model).shape), "macs_counter": MACS_COUNTER}


@dataclass(frozen=True)
class LatencySettings:
    """How latency is timed: the batch sizes, threads, device and how long."""

    batches: tuple[int, ...] = (1, 32)
    threads: int | None = None  # None: torch's current intra-op thread count
    device: str = "cpu"
    min_run_time: float = 0.2  # seconds of timing per block (torch.utils.benchmark's blocked_autorange)
    rounds: int = 5  # blocks per model and batch, interleaved across models

    def __post_init__(self):
        checks = [
            (len(self.batches) > 0 and all(b >= 1 for b in self.batches), f"latency batch sizes must be at least 1, got {list(self.batches)}"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1, got {self.threads}"),
            (self.min_run_time > 0, f"--min-time must be positive, got {self.min_run_time}"),
            (self.rounds >= 1, f"--rounds must be at least 1, got {self.rounds}"),
        ]
        for ok, message in checks:
            if not ok:
                raise NampruneError(message)

    @property
    def num_threads(self) -> int:
        return self.threads or torch.get_num_threads()

    def describe(self) -> dict:
        """The settings as recorded next to every latency figure."""
        return {**asdict(self), "batches": list(self.batches), "threads": self.num_threads, "torch": torch.__version__,
                "machine": f"{platform.machine()} {platform.system()}, {_device_name(self.device)}"}


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or "CPU"


def measure_latency(models: dict[str, nn.Module], settings: LatencySettings = LatencySettings()) -> dict[str, dict[int, dict]]:
    """Median forward time of each model at each batch size, timed side by side.

    ``models`` are moved to ``settings.device`` and put in eval mode. For each of
    ``settings.rounds`` rounds, every model is timed once per batch size (a block of at
    least ``min_run_time`` seconds); the blocks of one model and batch are merged and
    their median reported. Interleaving spreads a noisy neighbour's load over all models.
    Returns ``{name: {batch: record}}``; each record carries its settings.
    """
    device = torch.device(settings.device)
    timers: dict[tuple[str, int], benchmark.Timer] = {}
    shapes: dict[tuple[str, int], list[int]] = {}
    generator = torch.Generator().manual_seed(0)
    for name, model in models.items():
        model.to(device).eval()
        for batch in settings.batches:
            x = torch.randn(example_input(model, batch).shape, generator=generator).to(device)
            forward = _forward(model, x)
            forward()  # warm-up: first-call allocations and kernel selection are not latency
            timers[name, batch] = benchmark.Timer(stmt="forward()", globals={"forward": forward}, label=name,
                                                  sub_label=f"batch {batch}", num_threads=settings.num_threads)
            shapes[name, batch] = list(x.shape)
    blocks: dict[tuple[str, int], list] = {key: [] for key in timers}
    for _ in range(settings.rounds):
        for key, timer in timers.items():
            blocks[key].append(timer.blocked_autorange(min_run_time=settings.min_run_time))
    described = settings.describe()
    records: dict[str, dict[int, dict]] = {name: {} for name in models}
    for (name, batch), measurements in blocks.items():
        merged = benchmark.Measurement.merge(measurements)[0]
        records[name][batch] = {
            "batch": batch, "median_ms": round(merged.median * 1e3, 4), "iqr_ms": round(merged.iqr * 1e3, 4),
            "per_image_ms": round(merged.median * 1e3 / batch, 4), "timed_runs": len(merged.times),
            "input_shape": shapes[name, batch], "threads": described["threads"], "device": str(device),
            "torch": described["torch"], "min_run_time": settings.min_run_time, "rounds": settings.rounds,
        }
    return records


def _forward(model: nn.Module, x: torch.Tensor):
    def forward():
        with torch.inference_mode():
            model(x)
    return forward


def measure_accuracy(model: nn.Module, data: DataBundle, device: torch.device | str | None = None) -> dict:
    """Top-1 / top-5 (%) on the test split, with the dataset and device they were measured on."""
    result = evaluate(model, data.test, device)
    return {**result, "dataset": data.info.name, "split": "test",
            "device": str(device or next(model.parameters()).device)}


__all__ = ["MACS_COUNTER", "LatencySettings", "count_macs", "count_params", "measure_accuracy", "measure_cost",
           "measure_latency"]
