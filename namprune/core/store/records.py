"""Every record namprune writes beside a model, typed once: what ``train`` (``summary.json``),
``prune`` (``report.json``), ``export`` (``<name>.export.json``) and ``sweep`` (``sweep.json``)
write, field by field. Writers build these models; readers get them back with ``read``, so a
field is named in one place and a record that does not fit says so in one line.

Nested measurements (latency records, parity results, gate statistics) stay JSON objects:
their own modules define them (``timing``, ``onnx``, ``gates``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import NampruneError

SUMMARY, REPORT, SWEEP = "summary.json", "report.json", "sweep.json"
METRICS = "metrics.jsonl"  # one row per finished epoch
TRAIN_STATE = "train_state.pt"  # what a run needs to continue after a crash; removed once the run is complete


class Record(BaseModel):
    # Keys added by a later namprune are kept when an older one reads the file.
    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, path: str | Path):
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NampruneError(f"{path} is not valid JSON ({exc})") from None
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"]) or "(top level)"
            raise NampruneError(f"{path} is not a {cls.__name__} record: {where}: {error['msg']}") from None


class TrainSummary(Record):
    """``summary.json`` of a training (or a fine-tuning) run. Only ``final`` is required: a
    summary from an earlier namprune, or written by hand, still reads."""

    final: dict  # the last epoch's row of metrics.jsonl (test_top1, test_top5, ...)
    stage: Optional[str] = None  # train | finetune
    epochs: Optional[int] = None
    best_top1: Optional[float] = None
    train_time_s: Optional[float] = None
    device: Optional[str] = None
    threads: Optional[int] = None  # torch's CPU threads while it trained
    config: dict = {}  # the TrainConfig it ran with


class LayerWidth(BaseModel):
    name: str
    before: int
    after: int


class PruneReport(Record):
    """``report.json`` of a pruned run: the amount asked and removed, cost and top-1 before
    pruning, right after it (before and after BatchNorm recalibration) and after fine-tuning.
    ``namprune prune`` writes every field; a report from an earlier namprune lacks the newer
    ones, so only what a reader cannot do without is required."""

    source: str  # the checkpoint it was pruned from, absolute
    source_relative: Optional[str] = None  # the same, relative to the run folder (survives moving both)
    model: Optional[str] = None
    attention: Optional[str] = None
    dataset: Optional[str] = None
    ratio: float  # fraction of prunable channels removed
    requested_ratio: Optional[float] = None
    target_macs: Optional[float] = None
    target_latency: Optional[float] = None
    latency: Optional[dict] = None  # with target_latency: runtime, batch, threads, before_ms, after_ms, kept, met, ...
    importance: Optional[str] = None
    scope: Optional[str] = None
    normalization: Optional[str] = None
    round_to: Union[int, str, None] = None
    rounding: Optional[dict] = None  # round_to auto: every multiple timed and the one chosen; a finer step: asked and chosen
    max_layer_ratio: Optional[float] = None
    cost_exponent: Optional[float] = None
    channels_before: Optional[int] = None
    channels_after: Optional[int] = None
    params_before: Optional[int] = None
    params_after: Optional[int] = None
    macs_before: Optional[int] = None
    macs_after: Optional[int] = None
    macs_kept: Optional[float] = None
    macs_speedup: Optional[float] = None
    top1_before: Optional[float] = None
    top5_before: Optional[float] = None
    top1_pruned: float
    top5_pruned: Optional[float] = None
    recalibrated: Optional[bool] = None
    calibration_images: Optional[int] = None
    top1_pruned_uncalibrated: Optional[float] = None
    top1_finetuned: Optional[float] = None
    top5_finetuned: Optional[float] = None
    finetune_epochs: Optional[int] = None
    finetune_distill: Optional[float] = None
    layers: list[LayerWidth] = []
    time_s: Optional[float] = None

    @property
    def top1(self) -> float:
        """The run's accuracy: fine-tuned when it was, else right after pruning."""
        return self.top1_pruned if self.top1_finetuned is None else self.top1_finetuned

    @property
    def top5(self) -> float:
        return self.top5_pruned if self.top5_finetuned is None else self.top5_finetuned


class ExportRecord(Record):
    """``<name>.export.json`` beside an ONNX file. ``namprune.export_onnx`` (any module) writes
    the first block; ``namprune export`` (a checkpoint) all of it."""

    onnx: Optional[str]  # the ONNX file written (None: it was converted to OpenVINO IR only)
    exporter: str  # dynamo | torchscript
    opset: int
    batch: Union[int, str]  # a fixed size or "dynamic"
    input_shape: list[Union[int, str]]
    folded: bool
    file_bytes: int
    params: int
    onnx_params: int
    parity: Optional[dict]  # onnx.check_parity's result (None: not checked)
    source: Optional[str] = None
    model: Optional[str] = None
    attention: Optional[str] = None
    pruning_steps: Optional[int] = None
    optimized: Optional[bool] = None
    nam_gates: Optional[dict] = None  # gates measured, removed, and what removing them changed
    int8: Optional[dict] = None
    latency: Optional[dict] = None  # {"settings": ..., "records": {runtime: {batch: timing record}}}
    runtime: str = "onnxruntime"  # what the file is for: onnxruntime (ONNX) or openvino (IR)
    ir: Optional[str] = None  # with runtime openvino: the IR's .xml (its weights: the .bin beside it)
    onnx_parity: Optional[dict] = None  # with runtime openvino: the ONNX file the IR was converted from, in onnxruntime
    versions: Optional[dict] = None


class SweepRecord(Record):
    """``sweep.json``: the base and every point measured side by side, and the Pareto fronts."""

    source: str
    finetune_epochs: int
    settings: dict  # how latency was timed (timing.settings_record)
    prune: dict  # the PruneConfig every point shares
    base: dict  # a comparison row
    points: list[dict]  # comparison rows with folder, path, the amount asked and on_front
    front: dict[str, list[str]]  # names on the front of top-1 against MACs and each latency


__all__ = ["REPORT", "SUMMARY", "SWEEP", "ExportRecord", "LayerWidth", "PruneReport", "Record", "SweepRecord",
           "TrainSummary"]
