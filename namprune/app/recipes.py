"""Recipes: one YAML file describes a whole job (model, data, training, sparsity, pruning,
fine-tuning, export) for ``namprune run``.

The schema is a set of pydantic models in strict mode: unknown keys, wrong types and
out-of-range values are refused before any work starts, with one line naming the file,
the key and what was wrong. ``--set key=value`` overrides any value (the value is read as
YAML, so ``--set prune.ratio=0.5`` gives a number). Names (the model, its weights file, the
data folder) are checked too, so a run never starts on a recipe that cannot work.

YAML 1.1, which PyYAML implements, reads ``1e-4`` (no dot) as text; recipes read it as the
number YAML 1.2 and every user mean.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.data import DATASETS
from ..core.train import AMP_MODES, OPTIMIZERS, SCHEDULES, TrainConfig
from ..core.errors import NampruneError
from ..core.models import check_name
from ..core.nam import ATTENTIONS
from .stages import DEFAULT_DISTILL
from ..core.latency_cost import RUNTIMES
from ..core.prune import DEFAULT_RATIO, SCOPES, PruneConfig
from ..core.saliency import IMPORTANCES, NORMALIZATIONS
from ..core.sparsity import DEFAULT_STRENGTH, DEFAULT_TARGETS, TARGETS


def _choice(values):
    return Literal[tuple(values)]


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent floats without a dot (``1e-4``) as numbers."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSection(Section):
    name: str = "resnet20"
    attention: _choice(ATTENTIONS) = "nam"
    weights: Optional[str] = None
    nam_after: Optional[list[str]] = None

    @field_validator("name")
    @classmethod
    def _buildable(cls, name: str) -> str:
        return check_name(name)

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, weights: str | None) -> str | None:
        if weights is not None and not Path(weights).expanduser().is_file():
            raise ValueError(f"there is no weights file {weights}")
        return weights


class DataSection(Section):
    dataset: _choice(DATASETS) = "digits"
    data_dir: Optional[str] = None
    image_size: Optional[int] = Field(None, ge=8, le=1024)
    batch_size: int = Field(128, ge=1)
    workers: int = Field(2, ge=0)

    @field_validator("data_dir")
    @classmethod
    def _folder_exists(cls, data_dir: str | None) -> str | None:
        if data_dir is not None and not Path(data_dir).expanduser().is_dir():
            raise ValueError(f"there is no folder {data_dir}")
        return data_dir


_TRAIN = TrainConfig()


class TrainSection(Section):
    # every default is TrainConfig's: a recipe that leaves a key out trains like `namprune train`
    epochs: int = Field(_TRAIN.epochs, ge=1)
    lr: float = Field(_TRAIN.lr, gt=0)
    optimizer: _choice(OPTIMIZERS) = _TRAIN.optimizer
    momentum: float = Field(_TRAIN.momentum, ge=0, lt=1)
    nesterov: bool = _TRAIN.nesterov
    weight_decay: float = Field(_TRAIN.weight_decay, ge=0)
    bn_weight_decay: bool = _TRAIN.bn_weight_decay
    schedule: _choice(SCHEDULES) = _TRAIN.schedule
    milestones: Optional[list[int]] = _TRAIN.milestones
    lr_decay: float = Field(_TRAIN.lr_decay, gt=0, le=1)
    warmup_epochs: int = Field(_TRAIN.warmup_epochs, ge=0)
    label_smoothing: float = Field(_TRAIN.label_smoothing, ge=0, lt=1)
    seed: int = _TRAIN.seed
    amp: _choice(AMP_MODES) = _TRAIN.amp
    channels_last: bool = _TRAIN.channels_last

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self


class SparsitySection(Section):
    strength: float = Field(DEFAULT_STRENGTH, ge=0)
    targets: _choice(TARGETS) = DEFAULT_TARGETS


_PRUNE = PruneConfig()


class PruneSection(Section):
    ratio: Optional[float] = Field(None, gt=0, lt=1)
    target_macs: Optional[float] = Field(None, gt=0, lt=1)
    target_latency: Optional[float] = Field(None, gt=0, lt=1)
    latency_runtime: _choice(RUNTIMES) = _PRUNE.latency_runtime
    latency_batch: int = Field(_PRUNE.latency_batch, ge=1)
    threads: Optional[int] = Field(_PRUNE.threads, ge=1)
    scope: _choice(SCOPES) = _PRUNE.scope
    importance: _choice(IMPORTANCES) = _PRUNE.importance
    normalization: _choice(NORMALIZATIONS) = _PRUNE.normalization
    round_to: Optional[Union[Annotated[int, Field(ge=1)], Literal["auto"]]] = _PRUNE.round_to
    max_layer_ratio: float = Field(_PRUNE.max_layer_ratio, gt=0, lt=1)
    seed: int = _PRUNE.seed
    calibration_images: int = Field(_PRUNE.calibration_images, ge=1)
    recalibrate: bool = _PRUNE.recalibrate

    @model_validator(mode="after")
    def _one_amount(self):
        given = [self.ratio, self.target_macs, self.target_latency].count(None)
        if given < 2:
            raise ValueError("give one of ratio, target_macs and target_latency")
        if given == 3:
            self.ratio = DEFAULT_RATIO
        return self


class FinetuneSection(Section):
    epochs: int = Field(10, ge=0)
    lr: Optional[float] = Field(None, gt=0)
    sparsity: float = Field(0.0, ge=0)
    distill: float = Field(DEFAULT_DISTILL, ge=0, le=1)


class ExportSection(Section):
    enabled: bool = True
    opset: Optional[int] = Field(None, ge=7, le=30)
    batch: Union[Literal["dynamic"], int] = "dynamic"
    fold: bool = True
    check: bool = True

    @model_validator(mode="after")
    def _batch_positive(self):
        if isinstance(self.batch, int) and self.batch < 1:
            raise ValueError(f"batch must be 'dynamic' or a positive size, got {self.batch}")
        return self


class Recipe(Section):
    """A whole namprune job."""

    name: Optional[str] = None
    description: Optional[str] = None
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    sparsity: SparsitySection = SparsitySection()
    prune: PruneSection = PruneSection()
    finetune: FinetuneSection = FinetuneSection()
    export: ExportSection = ExportSection()

    def train_config(self, device: str = "auto") -> TrainConfig:
        t = self.train
        return TrainConfig(epochs=t.epochs, batch_size=self.data.batch_size, lr=t.lr, optimizer=t.optimizer,
                           momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay,
                           bn_weight_decay=t.bn_weight_decay, schedule=t.schedule,
                           milestones=t.milestones, lr_decay=t.lr_decay, warmup_epochs=t.warmup_epochs,
                           label_smoothing=t.label_smoothing, sparsity=self.sparsity.strength,
                           sparsity_targets=self.sparsity.targets, seed=t.seed, device=device, amp=t.amp,
                           channels_last=t.channels_last)

    def prune_config(self) -> PruneConfig:
        return PruneConfig(**self.prune.model_dump())


def packaged_recipes() -> dict[str, Path]:
    """The recipes shipped with namprune, by name (file name without .yaml)."""
    folder = resources.files("namprune") / "recipe_files"  # a link to the top-level recipes/ folder
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file: a path, or the name of a packaged recipe (``digits-resnet20``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = packaged_recipes()
    if str(name_or_path) in packaged:
        return packaged[str(name_or_path)]
    raise NampruneError(f"no recipe {name_or_path}: not a file, and not one of the packaged recipes "
                        f"({', '.join(sorted(packaged))})")


def load_recipe(name_or_path: str | Path, overrides: list[str] = (), flags: dict[str, tuple[str, object]] | None = None) -> Recipe:
    """Read, override and validate a recipe; errors name the file (a packaged recipe by its name)
    and the key, or the ``--set key=value`` or flag that set it.

    ``overrides`` are ``key.sub=value`` texts (``--set``); ``flags`` map a key to the command-line
    flag and value that override it (``{"train.epochs": ("--epochs", 3)}``).
    """
    path = find_recipe(name_or_path)
    label = str(path) if Path(name_or_path).is_file() else str(name_or_path)  # a packaged recipe by its name
    try:
        document = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise NampruneError(f"{label}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NampruneError(f"{label}: cannot be read ({type(exc).__name__})") from None
    document = {} if document is None else document
    if not isinstance(document, dict):
        raise NampruneError(f"{label}: a recipe is a mapping of sections (model, data, train, ...), "
                            f"not a {type(document).__name__}")
    sources: dict[str, str] = {}  # key -> what set it on the command line
    for override in overrides:
        key, value = _parse_override(override)
        _set(document, key, value, f"--set {override}")
        sources[key] = f"--set {override}"
    for key, (flag, value) in (flags or {}).items():
        _set(document, key, value, f"{flag} {value}")
        sources[key] = f"{flag} {value}"
    try:
        return Recipe.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        blamed = _set_by(error["loc"], sources)
        if blamed:
            raise NampruneError(f"{blamed}: {_describe(error, with_key=False)}") from None
        raise NampruneError(f"{label}: {_describe(error)}") from None


def _parse_override(override: str) -> tuple[str, object]:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise NampruneError(f"--set takes key=value (such as prune.ratio=0.5), got {override!r}")
    try:
        value = read_yaml(text)
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set(document: dict, key: str, value, source: str) -> None:
    *parents, leaf = key.split(".")
    node = document
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise NampruneError(f"{source}: {part} is not a section")
        node = child
    node[leaf] = value


def _set_by(loc: tuple, sources: dict[str, str]) -> str | None:
    """The command-line override that set the key an error is about (or a section around it)."""
    key = ".".join(str(part) for part in loc)
    for set_key, source in sources.items():
        if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
            return source
    return None


def _known_keys(loc: tuple) -> list[str]:
    model = Recipe
    for part in loc[:-1]:
        model = model.model_fields[part].annotation
    return list(model.model_fields)


def _describe(error: dict, with_key: bool = True) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    prefix = f"{key}: " if with_key else ""
    if error["type"] == "extra_forbidden":
        return f"{prefix}unknown key (known keys here: {', '.join(_known_keys(error['loc']))})"
    message = error["msg"].removeprefix("Value error, ")
    return f"{prefix}{message} (got {error['input']!r})" if "input" in error and error["type"] != "value_error" \
        else f"{prefix}{message}"
