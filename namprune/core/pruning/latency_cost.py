"""What a channel costs in measured time, for ``--target-latency``.

MACs do not say how fast a pruned model runs: the same MACs saved in different layers buy
different speed-ups on a CPU runtime. So the cost of a channel is measured on the runtime
the model is deployed to, one group at a time: remove half of a group's channels (its
lowest-scored ones), time the copy in its inference form (NAM folded; for onnxruntime the
exported graph, for OpenVINO its IR) side by side with the unpruned model, and share the fraction of time
saved over the channels removed. The allocation then
spends saliency per millisecond, and the pruned result is timed again to correct the
budget (``prune._removal_for_budget``).

A comparison whose rounds disagree too much is refused rather than steered by: on a busy
machine a latency target would chase noise.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..deploy.onnx import to_onnx
from ..deploy.timing import CLEAN_HINT, measure_latency, open_session
from ..errors import NampruneError
from ..nam.fold import fold_nam
from ..settings import LATENCY_TOLERANCE, LatencySettings, PruneConfig

COST_PROBE = 0.5  # the fraction of a group's channels removed to measure what its channels cost
MAX_UNCERTAINTY = LATENCY_TOLERANCE  # standard error of a measured ratio: no finer than the target is held to
MAX_REPEATS = 3  # timings of one comparison pooled before it is refused
MIN_SHARE = 0.25  # a channel costs at least this share of its MACs at the model's average time per MAC


@dataclass(frozen=True)
class LatencyMeter:
    """How ``--target-latency`` times: inference form, one runtime, one batch size,
    interleaved rounds."""

    runtime: str = "onnxruntime"
    batch: int = 1
    threads: int | None = None
    rounds: int = 15  # many short rounds: single blocks on a shared VM jump by 25 %
    min_run_time: float = 0.1

    @classmethod
    def of(cls, cfg: PruneConfig) -> "LatencyMeter":
        """The meter a (validated) ``PruneConfig`` asks for."""
        return cls(cfg.latency_runtime, cfg.latency_batch, cfg.latency_threads)

    @property
    def settings(self) -> LatencySettings:
        return LatencySettings(batches=(self.batch,), threads=self.threads, rounds=self.rounds,
                               min_run_time=self.min_run_time)

    def describe(self) -> dict:
        return {"runtime": self.runtime, "batch": self.batch, "threads": self.settings.num_threads,
                "rounds": self.rounds}

    def compare(self, models: dict) -> tuple[dict, bool]:
        """Median ms of each model (keys kept), timed side by side in interleaved rounds, and
        whether every figure is to be trusted (``timing.trust_problem``)."""
        records = measure_latency({str(k): self.subject(m) for k, m in models.items()}, self.settings, self.runtime)
        figures = [records[str(k)][self.batch] for k in models]
        return {k: r["median_ms"] for k, r in zip(models, figures)}, all(r["trusted"] for r in figures)

    def subject(self, model: nn.Module):
        """What is timed: the folded model, exported to ONNX for onnxruntime and OpenVINO (which
        converts that file, as ``namprune export --runtime openvino`` does)."""
        folded = fold_nam(model)  # a copy in eval mode
        if self.runtime == "torch":
            return folded
        # opened once (OpenVINO compiles for about a second), not at every timing of the reference
        return open_session(to_onnx(folded, self.batch)[0].SerializeToString(), self.runtime,
                            self.settings.num_threads)


class LatencyComparison:
    """The fraction of ``reference``'s latency a model keeps, timed side by side with it.

    Both are timed in the same interleaved rounds and the ratio is taken within each round,
    so a slow spell of the machine hits both; the median ratio is what counts. When the
    rounds leave it uncertain by more than ``MAX_UNCERTAINTY`` (its standard error, from the
    rounds' median absolute deviation), the comparison is timed again, its rounds pooled, and
    after ``MAX_REPEATS`` timings refused rather than steered by. ``last`` holds the latest
    comparison (``before_ms``, ``after_ms``, ``kept``, ``uncertainty``, ``rounds``).
    """

    def __init__(self, meter: LatencyMeter, reference: nn.Module):
        self.meter = meter
        self.reference = meter.subject(reference)
        self.last: dict = {}

    def __call__(self, model: nn.Module) -> float:
        batch, subject = self.meter.batch, self.meter.subject(model)
        ratios, before, after = [], [], []
        for _ in range(MAX_REPEATS):  # an uncertain ratio is timed again, its rounds pooled
            records = measure_latency({"before": self.reference, "after": subject}, self.meter.settings,
                                      self.meter.runtime)
            before += records["before"][batch]["round_ms"]
            after += records["after"][batch]["round_ms"]
            ratios = [a / b for a, b in zip(after, before)]
            kept, uncertainty = median_and_error(ratios)
            if uncertainty <= MAX_UNCERTAINTY:
                break
        else:
            raise NampruneError(f"--target-latency will not steer by a timing that is not to be trusted: "
                                f"{len(ratios)} {self.meter.runtime} rounds at batch {batch} leave the pruned/unpruned "
                                f"ratio uncertain by {uncertainty:.1%} (limit {MAX_UNCERTAINTY:.1%}); {CLEAN_HINT}")
        self.last = {"before_ms": round(statistics.median(before), 4), "after_ms": round(statistics.median(after), 4),
                     "kept": round(kept, 4), "uncertainty": round(uncertainty, 4), "rounds": len(ratios)}
        return kept


def median_and_error(values: list[float]) -> tuple[float, float]:
    """The median and its standard error relative to it (from the median absolute deviation,
    as for normal noise: robust to the single blocks a shared machine stalls)."""
    median = statistics.median(values)
    return median, 1.858 * statistics.median(abs(v - median) for v in values) / math.sqrt(len(values)) / median


def group_costs(model: nn.Module, groups: list, prune_copy: Callable[[nn.Module, int, int], nn.Module],
                kept: LatencyComparison, macs_costs: list[float]) -> list[float]:
    """The fraction of the model's latency one channel of each group saves: half the group
    removed from a copy (``prune_copy(copy, group_index, count)``), timed against the model,
    the saving shared over those channels.

    A measured saving is never taken below a quarter of what the channel's MACs
    (``macs_costs``) would save at the model's average time per MAC: a group whose removal
    measured no saving (timing noise, or a runtime that pads the width) still costs
    something, so the allocation does not reach for it first when everything else is gone.
    """
    per_mac = 1.0 / max(sum(c * g.width for c, g in zip(macs_costs, groups)), 1e-12)
    costs = []
    for index, (group, macs) in enumerate(zip(groups, macs_costs)):
        floor = MIN_SHARE * macs * per_mac
        count = int(group.width * COST_PROBE)
        if count < 1:  # a one-channel group cannot lose half of itself
            costs.append(macs * per_mac)
            continue
        costs.append(max((1.0 - kept(prune_copy(copy.deepcopy(model), index, count))) / count, floor))
    return costs


__all__ = ["LatencyComparison", "LatencyMeter", "group_costs"]
