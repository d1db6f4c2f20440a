"""Every setting a user can give, typed once: training, pruning, fine-tuning, timing and
export, with their defaults, choices and checks. The library functions take these models,
recipes are built from them, and the command line takes its defaults from them (a test
holds the two equal).

This module imports only pydantic, so the command line can read it without loading torch.
A bad value raises ``NampruneError`` with one line naming the flag (``--ratio must be in
(0, 1) ..., got 1.5``); recipes name the key instead (``recipes.load_recipe``).
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Any, Literal, NamedTuple, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import NampruneError

# ----------------------------------------------------------------------------- choices

DATASETS = ("digits", "mnist", "fashionmnist", "cifar10", "cifar100", "imagefolder", "fake")
ATTENTIONS = ("none", "nam", "nam-channel", "nam-spatial", "nam-scaled")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "multistep", "cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
SPARSITY_TARGETS = ("all", "bn", "nam")  # every BatchNorm scale / the residual-branch ones / NAM's only (the paper)
NORMALIZATIONS = ("auto", "none", "mean", "sum", "max")


class ImportanceEntry(NamedTuple):
    """What the rest of namprune needs to know about one channel score (its torch-pruning
    importance is built in ``pruning/saliency.py`` under the same name)."""

    needs_data: bool  # measured on calibration images
    normalization: str  # what `--normalization auto` means for it; "self" for scores that are relative already
    cost_exponent: float  # q of the MACs / latency allocation, score^2 / cost^q (pruning/prune.py)
    source: str  # what records call the scores' origin


# One entry per importance. Normalizations: BENCHMARKS.md "Ranking normalization" (digits, three
# seeds); `l1` takes `mean` and q = 0, a plain global ranking like torch-pruning's own, because
# after fine-tuning that ended higher than `sum` with q = 0.5 on plain CIFAR-10 models (two seeds,
# BENCHMARKS.md "CIFAR-10: namprune against torch-pruning alone"). q = 0.5 for the rest:
# BENCHMARKS.md "Allocation" (sparse-trained models).
IMPORTANCE_REGISTRY = {
    "nam": ImportanceEntry(True, "self", 0.5, "carried"),
    "nam-w": ImportanceEntry(False, "none", 0.5, "nam-w"),
    "slim": ImportanceEntry(False, "none", 0.5, "bn"),
    "l1": ImportanceEntry(False, "mean", 0.0, "l1"),
    "taylor": ImportanceEntry(True, "mean", 0.5, "taylor"),
    "random": ImportanceEntry(False, "self", 0.5, "random"),
}
# `auto`: `nam` for a model that carries NAM attention, `l1` for one that does not (on plain
# CIFAR-10 ResNet-20s, l1 ended 0.6 point higher after fine-tuning, two seeds).
AUTO_IMPORTANCE = {"with NAM": "nam", "without NAM": "l1"}
IMPORTANCES = ("auto", *IMPORTANCE_REGISTRY)
SCOPES = ("global", "local", "blocks")
RUNTIMES = ("onnxruntime", "openvino", "torch")  # what a latency target or --round-to auto times on
EXPORT_RUNTIMES = ("onnxruntime", "openvino")  # what `namprune export` writes for: an ONNX file or OpenVINO IR
# OpenVINO and NNCF (its INT8) are an optional extra: ~190 MB that most users do not need.
OPENVINO_MODULES = ("openvino", "nncf")
OPENVINO_INSTALL = 'pip install "namprune[openvino]"'

# ----------------------------------------------------------------------------- defaults

# No attention by default: NAM attention cost the unpruned model accuracy and the pruned one
# speed on every base measured, and bought nothing after fine-tuning (digits, three seeds:
# 97.5 % with NAM, 99.0 % without after 2 fine-tuning epochs; CIFAR-10 ResNet-20: 81.63 against
# 81.92 %, 1.33x against 1.41x faster at batch 32). `--attention nam` is the paper's module.
# BENCHMARKS.md, "The zero-flag check on digits" and "CIFAR-10: namprune against torch-pruning alone".
DEFAULT_MODEL, DEFAULT_DATASET, DEFAULT_ATTENTION = "resnet20", "digits", "none"
DEFAULT_WORKERS = 2  # DataLoader processes for image folders streamed from disk
# No uniform penalty by default: on a 12-epoch CIFAR-10 ResNet-20, 1e-3 on every scale factor
# cost the unpruned model 2.2 points of top-1, more than the ranking won back after
# fine-tuning. Planned shrinking (core/nam/shrink.py) pulls only the channels a prune to
# DEFAULT_SHRINK_MACS of the MACs would remove, from DEFAULT_SHRINK_START of the run on
# (BENCHMARKS.md, "CIFAR-10: namprune against torch-pruning alone").
DEFAULT_STRENGTH = 0.0
DEFAULT_SHRINK_MACS, DEFAULT_SHRINK_START = 0.5, 0.5
# Channel counts in multiples of 8: onnxruntime's CPU kernels work in blocks of 8 or 16
# floats, and a CIFAR ResNet-20 pruned to the ranking's own widths ran slower than unpruned
# (1.05x / 1.16x its time at batch 1 / 32) where multiples of 8 ran in 0.75 / 0.77 of it.
DEFAULT_ROUND_TO = 8
DEFAULT_SCOPE = "global"
DEFAULT_TARGETS = "all"
PAPER_STRENGTH, PAPER_TARGETS = 1e-4, "nam"  # the NAM paper's setting (for a 200-epoch schedule)
DEFAULT_RATIO = 0.3  # fraction of channels removed when no amount is given
DEFAULT_IMPORTANCE, DEFAULT_NORMALIZATION = "auto", "auto"
DEFAULT_DISTILL = 0.0  # weight of distillation from the unpruned model while fine-tuning
DEFAULT_IMAGES = 1024  # calibration images for scores and for BatchNorm recalibration
GATE_IMAGES = 256  # for the gates' spread and INT8 ranges: stable ranges, a second of work on ResNet-56
# Gates whose spread is at most 3 % go. Measured (BENCHMARKS.md, "NAM at inference"): removing
# every gate of a CIFAR-10 ResNet-20 (largest spread 2.3 %) changed test top-1 by +0.01 point,
# and no tolerance moved it by more than 0.14; digits models did not move at any tolerance.
GATE_TOLERANCE = 0.03  # a NAM gate whose spread (std / mean) is at most this is a constant
# A gate whose spread is within GATE_TOLERANCE is removed only when the model without it still
# gives the unfolded model's top-1 on this share of the checked images (calibration and test)
# and its logits stay within GATE_LOGIT_TOLERANCE (max |difference| / max |logit|) of the unfolded
# ones: a spread alone cost a barely trained ResNet-20 4 % of its predictions (issue 21).
GATE_AGREEMENT = 0.999
GATE_LOGIT_TOLERANCE = 0.01
# One timing thread: it is what torch.utils.benchmark defaults to, and it holds up on a
# shared machine (two threads on two busy cores measured 1170 ms where one took 20 ms;
# BENCHMARKS.md, "Timings a user can trust").
DEFAULT_THREADS = 1
MACS_TOLERANCE = 0.02  # of the unpruned MACs: one stream channel of a small net can weigh over 1 %
LATENCY_TOLERANCE = 0.05  # of the unpruned latency: the target is met within this or the miss is reported
PARITY_TOLERANCE = 1e-4  # max |onnxruntime - torch| / max |torch| an exported file may show
MAX_SPREAD = 0.20  # timing rounds may disagree by this fraction of the median
MAX_CPU_WAIT = 0.20  # the timing threads may wait this share of their ready time for a CPU


# ----------------------------------------------------------------------------- rules


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (openvino takes a second)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # None in sys.modules: its import is blocked
        return False


def check_runtime(runtime: str, what: str) -> None:
    """Refuse the openvino runtime where the optional extra is not installed (``what``: the flag)."""
    if runtime == "openvino" and not all(installed(m) for m in OPENVINO_MODULES):
        raise NampruneError(f"{what} openvino needs OpenVINO and NNCF, an optional extra: {OPENVINO_INSTALL}")


def _fraction(what: str):
    def check(value: Optional[float]) -> Optional[float]:
        if value is not None and not 0 < value < 1:
            raise ValueError(f"must be in (0, 1) ({what})")
        return value
    return AfterValidator(check)


def _batch(value: Union[str, int]) -> Union[str, int]:
    if value != "dynamic" and not (isinstance(value, int) and value >= 1):
        raise ValueError("must be 'dynamic' or a positive batch size")
    return value


def _multiple(value: Union[int, str, None]) -> Union[int, str, None]:
    if value is not None and value != "auto" and not (isinstance(value, int) and value >= 1):
        raise ValueError("must be a positive channel count or auto")
    return value


Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]
CalibrationImages = Annotated[int, Field(ge=1, title="--calibration-images")]
Threads = Annotated[Optional[int], Field(ge=1, title="--threads")]
LatencyThreads = Annotated[Optional[int], Field(ge=1, title="--latency-threads")]


def flag(name: str, title: str | None = None) -> str:
    return title or f"--{name.replace('_', '-')}"


def describe(error: dict, label: str) -> str:
    """One pydantic error as one line about ``label`` (a flag, or a recipe key)."""
    kind, ctx, got = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "literal_error":
        return f"unknown {label} {got!r}; choose one of {ctx['expected'].replace(' or ', ', ')}"
    bounds = {"greater_than": "greater than {gt}", "greater_than_equal": "at least {ge}",
              "less_than": "less than {lt}", "less_than_equal": "at most {le}"}
    if kind in bounds:
        return f"{label} must be {bounds[kind].format(**ctx)}, got {got!r}"
    if kind == "extra_forbidden":
        return f"unknown setting {label}"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error" and not error["loc"]:  # a rule over several fields: the message says it all
        return message
    return f"{label} {message}, got {got!r}"


class Settings(BaseModel):
    """A frozen, validated group of settings. ``with_(**changes)`` gives a checked copy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else ""
            field = type(self).model_fields.get(name)
            raise NampruneError(describe(error, flag(name, field and field.title))) from None

    def with_(self, **changes: Any):
        return type(self)(**{**self.model_dump(), **changes})

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, values: dict):
        """From a record written by an older or newer namprune: unknown keys are skipped."""
        return cls(**{k: v for k, v in values.items() if k in cls.model_fields})


# ----------------------------------------------------------------------------- training


class TrainSchedule(Settings):
    """How long and how a model learns: the part of training a recipe's ``train`` section sets."""

    epochs: Count = 30
    lr: float = Field(0.1, gt=0, title="--lr (learning rate)")
    optimizer: Literal[OPTIMIZERS] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: NonNegative = 5e-4
    # weight decay on BatchNorm / NAM scale factors and shifts too (the NAM code and torch-pruning's
    # examples do; every measured base without attention was trained so). NAM recipes turn it off
    # so that only their penalty pulls the scale factors.
    bn_weight_decay: bool = True
    schedule: Literal[SCHEDULES] = "onecycle"
    milestones: Optional[list[int]] = None  # epochs; default 30 %, 60 % and 80 % of the run (the paper's 60/120/160 of 200)
    lr_decay: float = Field(0.2, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    amp: Literal[AMP_MODES] = "auto"
    channels_last: bool = True
    # torch's CPU threads while training; None: OMP_NUM_THREADS if set, else the cores this
    # process may use less those other jobs keep busy (cpus.default_threads). Decided where the
    # run runs: a resumed run and a fine-tuning take their own, never a checkpoint's.
    threads: Threads = None

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self


class TrainConfig(TrainSchedule):
    """Everything that decides how a model is trained; saved with every checkpoint."""

    batch_size: Count = 128
    sparsity: NonNegative = DEFAULT_STRENGTH
    sparsity_targets: Literal[SPARSITY_TARGETS] = DEFAULT_TARGETS
    # planned shrinking (core/nam/shrink.py): from shrink_start of the run on, pull the channels a
    # prune to keep shrink_macs of the MACs would remove towards zero, and only those (0: off)
    shrink_macs: float = Field(DEFAULT_SHRINK_MACS, ge=0, lt=1, title="--shrink-macs")
    shrink_start: float = Field(DEFAULT_SHRINK_START, ge=0, lt=1, title="--shrink-start")
    shrink_scope: Literal[SCOPES] = DEFAULT_SCOPE  # the allocation shrinking plans with: prune's --scope
    distill: float = Field(0.0, ge=0, le=1, title="--distill (distillation weight)")  # with a teacher: weight of its soft targets
    distill_temperature: float = Field(4.0, gt=0)
    device: str = "auto"
    compile: bool = False  # torch.compile the training step (opt-in: compiling takes a while)
    sync_bn: bool = False  # SyncBatchNorm across processes under torchrun (CUDA only)
    extra: dict = Field(default_factory=dict)  # free-form notes kept with the run


# Fine-tuning's default learning rate, as a fraction of the training one. 0.4 ended every
# CIFAR-10 row higher after 4 epochs than 0.1 did (+0.25 to +0.52 point, three bases, two seeds
# where run) and tied on digits (BENCHMARKS.md, "CIFAR-10: namprune against torch-pruning alone").
FINETUNE_LR_FACTOR = 0.4


class FinetuneSettings(Settings):
    """Fine-tuning after pruning. ``lr`` and ``batch_size`` default to ``FINETUNE_LR_FACTOR``
    of the training learning rate and to the training batch size."""

    epochs: int = Field(0, ge=0, title="--finetune-epochs")
    lr: Optional[float] = Field(None, gt=0)
    sparsity: NonNegative = Field(0.0, title="--finetune-sparsity")  # keep the penalty on while fine-tuning
    distill: float = Field(DEFAULT_DISTILL, ge=0, le=1)  # weight of distillation from the unpruned model (0: plain fine-tuning)
    batch_size: Optional[int] = Field(None, ge=1)


# ----------------------------------------------------------------------------- pruning


def check_importance(name: str) -> str:
    if name not in IMPORTANCES:
        raise NampruneError(f"unknown importance {name!r}; choose one of {', '.join(IMPORTANCES)}")
    return name


def resolve_importance(importance: str, has_nam: bool) -> str:
    """The importance ``auto`` stands for on a model with or without NAM; any other name as is."""
    check_importance(importance)
    return AUTO_IMPORTANCE["with NAM" if has_nam else "without NAM"] if importance == "auto" else importance


def resolve_normalization(importance: str, normalization: str) -> str:
    """The normalization ``auto`` stands for with this importance; any other name as is."""
    if normalization not in NORMALIZATIONS:
        raise NampruneError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if importance == "auto":  # checked again once the model says which importance auto is
        return normalization
    own = IMPORTANCE_REGISTRY[importance].normalization
    if own == "self" and normalization not in ("auto", "none"):
        tunable = ", ".join(name for name, entry in IMPORTANCE_REGISTRY.items() if entry.normalization != "self")
        raise NampruneError(f"the {importance} score takes no normalization (it is relative already); "
                            f"--normalization applies to {tunable}")
    return ("none" if own == "self" else own) if normalization == "auto" else normalization


class PruneConfig(Settings):
    """How to prune: how much (a ratio of channels, or the fraction of MACs or of measured
    latency to keep), where to rank (globally or per layer), by what, the limits that keep
    every layer usable, and whether to re-estimate BatchNorm statistics afterwards. With no
    amount given, ``ratio`` is ``DEFAULT_RATIO``."""

    ratio: Annotated[Optional[float], _fraction("the fraction of channels removed")] = None
    target_macs: Annotated[Optional[float], _fraction("the fraction of MACs kept")] = None
    target_latency: Annotated[Optional[float], _fraction("the fraction of the measured latency kept")] = None
    latency_runtime: Literal[RUNTIMES] = "onnxruntime"  # what target_latency and round_to auto time on
    latency_batch: int = Field(1, ge=1)
    latency_threads: LatencyThreads = None  # what target_latency times with (None: DEFAULT_THREADS)
    scope: Literal[SCOPES] = DEFAULT_SCOPE
    importance: Literal[IMPORTANCES] = DEFAULT_IMPORTANCE
    normalization: Literal[NORMALIZATIONS] = DEFAULT_NORMALIZATION
    round_to: Annotated[Union[int, str, None], AfterValidator(_multiple)] = DEFAULT_ROUND_TO  # a channel multiple (1: any width), or "auto": the fastest
    max_layer_ratio: float = Field(0.9, gt=0, lt=1)
    cost_exponent: Optional[float] = Field(None, ge=0, le=1, title="--cost-exponent")  # None: the importance's own
    seed: int = 0  # of the random importance
    calibration_images: CalibrationImages = DEFAULT_IMAGES  # for data-driven scores and BatchNorm recalibration
    recalibrate: bool = True

    def resolved(self, has_nam: bool) -> "PruneConfig":
        """This config for a model with or without NAM: ``auto`` importance and the importance's
        own cost exponent made explicit (what the records show)."""
        importance = resolve_importance(self.importance, has_nam)
        exponent = IMPORTANCE_REGISTRY[importance].cost_exponent if self.cost_exponent is None else self.cost_exponent
        return self.with_(importance=importance, cost_exponent=exponent)

    @model_validator(mode="before")
    @classmethod
    def _default_amount(cls, values: Any) -> Any:
        if isinstance(values, dict) and all(values.get(k) is None for k in ("ratio", "target_macs", "target_latency")):
            values = {**values, "ratio": DEFAULT_RATIO}
        return values

    @model_validator(mode="after")
    def _one_amount(self):
        if [self.ratio, self.target_macs, self.target_latency].count(None) != 2:
            raise ValueError("give exactly one of --ratio, --target-macs and --target-latency")
        try:
            resolve_normalization(self.importance, self.normalization)
        except NampruneError as exc:
            raise ValueError(str(exc)) from None
        check_runtime(self.latency_runtime, "--latency-runtime")
        return self


# ----------------------------------------------------------------------------- timing and export


class LatencySettings(Settings):
    """How latency is timed: the batch sizes, threads, device, how long, and how much the
    rounds may disagree before a figure is flagged."""

    batches: tuple[Annotated[int, Field(ge=1)], ...] = Field((1, 32), min_length=1, title="latency batch sizes")
    threads: Threads = None  # None: DEFAULT_THREADS
    device: str = "cpu"
    min_run_time: float = Field(0.2, gt=0, title="--min-time")  # seconds per block (torch.utils.benchmark's blocked_autorange)
    rounds: Count = 5  # blocks per model and batch, interleaved across models
    max_spread: float = Field(MAX_SPREAD, gt=0)
    max_cpu_wait: float = Field(MAX_CPU_WAIT, gt=0, le=1)

    @property
    def num_threads(self) -> int:
        return self.threads or DEFAULT_THREADS


class ExportSettings(Settings):
    """How ``namprune export`` writes and checks an ONNX file. ``batch``: ``dynamic`` or a fixed
    size; ``opset`` None is the exporter's own (its range depends on the installed onnx and is
    checked by ``onnx.check_opset``)."""

    opset: Optional[int] = None
    batch: Annotated[Union[str, int], AfterValidator(_batch)] = "dynamic"
    fold: bool = True
    check: bool = True
    optimize: bool = True
    gate_tolerance: float = Field(GATE_TOLERANCE, ge=0, lt=1)
    remove_gates: bool = True  # remove the gates that pass the check (False: keep every gate, exact)
    calibration_images: CalibrationImages = GATE_IMAGES
    int8: bool = False
    runtime: Literal[EXPORT_RUNTIMES] = "onnxruntime"  # onnxruntime: an ONNX file; openvino: IR converted from it

    @model_validator(mode="after")
    def _runtime_installed(self):
        check_runtime(self.runtime, "--runtime")
        return self

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the file is exported for; None for a dynamic batch dimension."""
        return None if self.batch == "dynamic" else self.batch


TRAIN, FINETUNE, PRUNE, LATENCY, EXPORT = TrainConfig(), FinetuneSettings(), PruneConfig(), LatencySettings(), ExportSettings()
