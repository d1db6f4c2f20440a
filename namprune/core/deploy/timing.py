"""One way to time a model, for torch, onnxruntime and OpenVINO alike, with a verdict on whether the
figure can be trusted.

Every latency namprune reports (``report``, ``sweep``, ``export``) comes from
``measure_latency``: ``torch.utils.benchmark`` blocks (``blocked_autorange``) of every model
and batch size, in interleaved rounds, so a noisy neighbour slows every model of a round
alike and their ratio stays meaningful. Each figure is a *record*: runtime, batch, threads,
median, the medians of the single rounds and how far they spread, how long the timing
threads waited for a CPU, and ``trusted``.

Why a verdict: on a machine whose cores are busy with another job, a timing thread is
ready to run but waits for a core; the figures then measure the other job, not the model
(two torch threads on two busy cores: 1170 ms for a model that runs in 3 ms). Two signals
catch that, and either makes a record untrusted:

* ``spread``: (slowest round - fastest round) / median; rounds that disagree by more than
  ``MAX_SPREAD`` give no stable figure.
* ``cpu_wait``: the share of the time the timing threads were ready to run but waited for a
  CPU (Linux scheduler statistics, ``/proc/self/task/*/schedstat``; None elsewhere). Above
  ``MAX_CPU_WAIT`` the absolute figure is inflated even when the rounds agree.

``trust_problem(record)`` says what is wrong in one sentence with how to get a clean
figure; ``is_trustworthy(record)`` is the yes/no that code steering by a latency (a
latency target) must ask first.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.utils.benchmark as benchmark

from ..identity import example_input
from ..settings import DEFAULT_THREADS, MAX_CPU_WAIT, MAX_SPREAD, LatencySettings
from .cpus import available_cores
from .onnx import fixed_batch, session

CLEAN_HINT = ("for a clean figure, time while no other job runs (or with fewer --threads than idle cores), "
              "with more --rounds")


def settings_record(settings: LatencySettings) -> dict:
    """The settings as recorded next to every latency figure."""
    return {**settings.model_dump(mode="json"), "threads": settings.num_threads, "torch": torch.__version__,
            "onnxruntime": ort.__version__, "openvino": _version("openvino"), "cores": available_cores(),
            "machine": f"{platform.machine()} {platform.system()}, {_device_name(settings.device)}"}


def _version(package: str) -> str | None:
    """An optional package's version, read without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or "CPU"


# --------------------------------------------------------------------------- what is timed


class Runner:
    """One model in one runtime: how to feed it a batch and run it."""

    runtime = ""

    def input_shape(self, batch: int) -> list[int]:
        raise NotImplementedError

    def prepare(self, x: torch.Tensor):
        return x

    def __call__(self, x) -> None:
        raise NotImplementedError


class TorchRunner(Runner):
    runtime = "torch"

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model.to(device).eval(), device

    def input_shape(self, batch: int) -> list[int]:
        return list(example_input(self.model, batch).shape)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device)

    def __call__(self, x: torch.Tensor) -> None:
        with torch.inference_mode():
            self.model(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class OnnxRunner(Runner):
    runtime = "onnxruntime"

    def __init__(self, sess: ort.InferenceSession):
        self.sess, self.input_name = sess, sess.get_inputs()[0].name
        self.fixed_batch = fixed_batch(sess)
        # the session's own thread count (0: onnxruntime's default, one per core)
        self.threads = sess.get_session_options().intra_op_num_threads or available_cores()

    def input_shape(self, batch: int) -> list[int]:
        return [batch, *self.sess.get_inputs()[0].shape[1:]]

    def prepare(self, x: torch.Tensor) -> np.ndarray:
        return x.numpy()

    def __call__(self, x: np.ndarray) -> None:
        self.sess.run(None, {self.input_name: x})


def runner_for(model, settings: LatencySettings, runtime: str = "onnxruntime") -> Runner:
    """A torch module, an onnxruntime session, an OpenVINO ``IRSession``, or ONNX bytes / a file,
    opened in ``runtime`` (onnxruntime or openvino) with ``settings``' threads."""
    if isinstance(model, Runner):
        return model
    if isinstance(model, nn.Module):
        return TorchRunner(model, torch.device(settings.device))
    if isinstance(model, (bytes, str, Path)):
        model = open_session(model, runtime, settings.num_threads)
    if isinstance(model, ort.InferenceSession):
        return OnnxRunner(model)
    if getattr(model, "runtime", None) == "openvino":
        from .openvino import OpenVinoRunner

        return OpenVinoRunner(model)
    raise TypeError(f"cannot time a {type(model).__name__}")


def open_session(model: bytes | str | Path, runtime: str = "onnxruntime", threads: int | None = None):
    """A session of ONNX bytes or a file in ``runtime``: onnxruntime's, or OpenVINO's (which also
    reads IR .xml files; an optional extra, imported only when asked for)."""
    if runtime == "openvino":
        from . import openvino

        return openvino.session(model, threads)
    return session(model, threads)


# --------------------------------------------------------------------------- timing


def _scheduler_ns() -> tuple[int, int] | None:
    """(ns on a CPU, ns ready but waiting for one), summed over this process's threads; None
    where the kernel does not say (not Linux, or scheduler statistics turned off)."""
    tasks = Path(f"/proc/{os.getpid()}/task")
    if not tasks.is_dir():
        return None
    run = wait = 0
    for task in tasks.iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:  # a thread that ended meanwhile, or no schedstat
            continue
        run, wait = run + int(fields[0]), wait + int(fields[1])
    return (run, wait) if run else None


def measure_latency(models: dict[str, object], settings: LatencySettings = LatencySettings(),
                    runtime: str = "onnxruntime") -> dict[str, dict[int, dict]]:
    """Median latency of each model at each batch size, timed side by side.

    ``models`` maps a name to a torch module (moved to ``settings.device``, eval mode), an
    onnxruntime session, an OpenVINO ``IRSession``, or ONNX bytes / a file (opened in
    ``runtime``: onnxruntime or openvino). For each of ``settings.rounds`` rounds every
    model is timed once per batch size (a block of at least ``min_run_time`` seconds); the
    blocks of one model and batch are merged and their median reported. Returns
    ``{name: {batch: record}}`` (see ``record``). A session or file with a fixed batch size
    is timed at that size only.
    """
    runners = {name: runner_for(model, settings, runtime) for name, model in models.items()}
    timers: dict[tuple[str, int], benchmark.Timer] = {}
    shapes: dict[tuple[str, int], list[int]] = {}
    for name, runner in runners.items():
        fixed = getattr(runner, "fixed_batch", None)
        for batch in [fixed] if fixed else settings.batches:
            shape = runner.input_shape(batch)
            x = runner.prepare(torch.randn(shape, generator=torch.Generator().manual_seed(batch)))
            runner(x)  # warm-up: first-call allocations and kernel selection are not latency
            timers[name, batch] = benchmark.Timer(stmt="run(x)", globals={"run": runner, "x": x}, label=name,
                                                  sub_label=f"batch {batch}", num_threads=settings.num_threads)
            shapes[name, batch] = shape
    blocks: dict[tuple[str, int], list] = {key: [] for key in timers}
    waits: dict[tuple[str, int], list[tuple[int, int]]] = {key: [] for key in timers}
    load = _load()
    for _ in range(settings.rounds):
        for key, timer in timers.items():
            before = _scheduler_ns()
            blocks[key].append(timer.blocked_autorange(min_run_time=settings.min_run_time))
            after = _scheduler_ns()
            if before and after:
                waits[key].append((after[0] - before[0], after[1] - before[1]))
    described = {**settings_record(settings), "load_before": load, "load_after": _load()}
    records: dict[str, dict[int, dict]] = {name: {} for name in models}
    for (name, batch), measurements in blocks.items():
        threads = getattr(runners[name], "threads", settings.num_threads)
        records[name][batch] = record(runners[name].runtime, batch, measurements, waits[name, batch], shapes[name, batch],
                                      {**described, "threads": threads})
    return records


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def record(runtime: str, batch: int, measurements: list, waits: list[tuple[int, int]], shape: list[int],
           settings: dict) -> dict:
    """One latency figure with what it takes to judge it."""
    merged = benchmark.Measurement.merge(measurements)[0]
    rounds = [m.median * 1e3 for m in measurements]
    median = statistics.median(rounds)
    run, wait = sum(r for r, _ in waits), sum(w for _, w in waits)
    out = {
        "runtime": runtime, "batch": batch, "threads": settings["threads"],
        "median_ms": round(median, 4), "per_image_ms": round(median / batch, 4),
        "round_ms": [round(r, 4) for r in rounds], "spread": round((max(rounds) - min(rounds)) / median, 4),
        "iqr_ms": round(merged.iqr * 1e3, 4), "timed_runs": len(merged.times),
        "cpu_wait": round(wait / (run + wait), 4) if run + wait else None,
        "input_shape": shape, "device": settings["device"], "torch": settings["torch"],
        "onnxruntime": settings["onnxruntime"] if runtime == "onnxruntime" else None,
        "openvino": settings.get("openvino") if runtime == "openvino" else None,
        "min_run_time": settings["min_run_time"], "rounds": settings["rounds"], "cores": settings["cores"],
        "load_before": settings["load_before"], "load_after": settings["load_after"],
        "max_spread": settings["max_spread"], "max_cpu_wait": settings["max_cpu_wait"],
    }
    problem = trust_problem(out)
    return {**out, "trusted": problem is None, "untrusted_because": problem}


# --------------------------------------------------------------------------- the verdict


def trust_problem(record: dict, absolute: bool = True) -> str | None:
    """Why ``record`` cannot be trusted, with how to get a clean figure; None when it can.

    ``absolute=False`` asks only whether the rounds agreed: enough for a ratio between
    models timed side by side, whose rounds shared whatever the machine was doing.
    """
    reasons = []
    if record["spread"] > record.get("max_spread", MAX_SPREAD):
        reasons.append(f"its rounds disagree by {record['spread']:.0%} of the median "
                       f"(limit {record.get('max_spread', MAX_SPREAD):.0%})")
    wait = record.get("cpu_wait")
    if absolute and wait is not None and wait > record.get("max_cpu_wait", MAX_CPU_WAIT):
        reasons.append(f"the timing threads waited for a CPU {wait:.0%} of the time "
                       f"(limit {record.get('max_cpu_wait', MAX_CPU_WAIT):.0%}; other jobs were running)")
    if not reasons:
        return None
    return f"{record['runtime']} batch {record['batch']} on {record['threads']} thread(s): " \
           f"{' and '.join(reasons)}; {CLEAN_HINT}"


def is_trustworthy(record: dict, absolute: bool = True) -> bool:
    """Can this latency be steered by? (See ``trust_problem``.)"""
    return trust_problem(record, absolute) is None


def problems(records: dict[str, dict], absolute: bool = True) -> list[str]:
    """Every untrusted figure of ``{name: {batch: record}}``, one sentence each, named."""
    return [f"{name}: {problem}" for name, by_batch in records.items() for r in by_batch.values()
            if (problem := trust_problem(r, absolute))]


def summary(records: list[dict]) -> str | None:
    """One paragraph on the untrusted figures among ``records`` (None when all are trusted):
    how many, the worst spread and CPU wait, and how to get clean ones."""
    bad = [r for r in records if not r.get("trusted", True)]
    if not bad:
        return None
    reasons = []
    spread = max(r["spread"] for r in bad)
    if spread > bad[0].get("max_spread", MAX_SPREAD):
        reasons.append(f"rounds disagreed by up to {spread:.0%} of the median (limit {bad[0].get('max_spread', MAX_SPREAD):.0%})")
    waits = [r["cpu_wait"] for r in bad if r.get("cpu_wait") is not None]
    if waits and max(waits) > bad[0].get("max_cpu_wait", MAX_CPU_WAIT):
        reasons.append(f"the timing threads waited for a CPU up to {max(waits):.0%} of the time "
                       f"(limit {bad[0].get('max_cpu_wait', MAX_CPU_WAIT):.0%}: other jobs were running; "
                       f"load {bad[0].get('load_before')} on {bad[0].get('cores')} cores)")
    return f"! {len(bad)} of {len(records)} latency figures are not to be trusted: {'; '.join(reasons)}. " \
           f"{CLEAN_HINT[0].upper()}{CLEAN_HINT[1:]}."


def round_ratios(slow: dict, fast: dict) -> tuple[float, float, float]:
    """``slow`` / ``fast`` within each round (both were timed in it, so a slow spell of the
    machine hits both): the median over the rounds, the lowest and the highest."""
    ratios = [a / b for a, b in zip(slow["round_ms"], fast["round_ms"])]
    return statistics.median(ratios), min(ratios), max(ratios)


def speedups(records: dict[str, dict], slow: str, fast: str) -> dict[str, float]:
    """How many times faster ``fast`` ran than ``slow`` at every batch both were timed at
    (records of one ``measure_latency`` call): the median of the per-round ratios."""
    return {str(b): round(round_ratios(records[slow][b], records[fast][b])[0], 4)
            for b in records[fast] if b in records[slow]}


def mark(record: dict) -> str:
    """The sign a table puts after an untrusted figure."""
    return "" if record.get("trusted", True) else "!"


__all__ = ["CLEAN_HINT", "DEFAULT_THREADS", "MAX_CPU_WAIT", "MAX_SPREAD", "LatencySettings", "OnnxRunner", "Runner",
           "open_session", "runner_for",
           "TorchRunner", "available_cores", "is_trustworthy", "mark", "measure_latency", "problems",
           "record", "round_ratios", "speedups", "summary", "trust_problem"]
