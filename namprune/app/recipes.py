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
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..core.deploy.onnx import check_opset
from ..core.errors import NampruneError, first_line
from ..core.models import check_name
from ..core.settings import (ATTENTIONS, DATASETS, DEFAULT_ATTENTION, DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SHRINK_MACS, DEFAULT_SHRINK_START, DEFAULT_STRENGTH,
                             DEFAULT_TARGETS, DEFAULT_WORKERS, SPARSITY_TARGETS, TRAIN, Count, ExportSettings,
                             FinetuneSettings, LatencySettings, NonNegative, PruneConfig, TrainConfig, TrainSchedule)

class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading exponent floats without a dot (``1e-4``) as numbers."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSection(Section):
    name: str = DEFAULT_MODEL
    attention: Literal[ATTENTIONS] = DEFAULT_ATTENTION
    weights: Optional[str] = None
    nam_after: Optional[list[str]] = None
    accept_changed_model: bool = False  # rebuild from a model file that changed since training

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
    dataset: Literal[DATASETS] = DEFAULT_DATASET
    data_dir: Optional[str] = None
    image_size: Optional[int] = Field(None, ge=8, le=1024)
    batch_size: Count = TRAIN.batch_size
    workers: int = Field(DEFAULT_WORKERS, ge=0)

    @field_validator("data_dir")
    @classmethod
    def _folder_exists(cls, data_dir: str | None) -> str | None:
        if data_dir is not None and not Path(data_dir).expanduser().is_dir():
            raise ValueError(f"there is no folder {data_dir}")
        return data_dir


STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


# The sections below are namprune's settings themselves (core/settings.py): the same keys,
# defaults and checks as `namprune train`, `prune` and `export`, read strictly from YAML.


class TrainSection(TrainSchedule):
    model_config = STRICT
    __init__ = BaseModel.__init__  # validated inside a recipe: errors name the key, not the flag


class SparsitySection(Section):
    strength: NonNegative = DEFAULT_STRENGTH
    targets: Literal[SPARSITY_TARGETS] = DEFAULT_TARGETS
    # planned shrinking; unset: the prune section's target_macs when it has one, else the default
    shrink_macs: Optional[float] = Field(None, ge=0, lt=1)
    shrink_start: float = Field(DEFAULT_SHRINK_START, ge=0, lt=1)


class PruneSection(PruneConfig):
    model_config = STRICT
    __init__ = BaseModel.__init__  # validated inside a recipe: errors name the key, not the flag


class FinetuneSection(FinetuneSettings):
    model_config = STRICT
    __init__ = BaseModel.__init__  # validated inside a recipe: errors name the key, not the flag
    epochs: int = Field(10, ge=0)  # a recipe delivers a fine-tuned model; `namprune prune` fine-tunes only when asked


class ExportSection(ExportSettings):
    model_config = STRICT
    __init__ = BaseModel.__init__  # validated inside a recipe: errors name the key, not the flag
    enabled: bool = True

    @field_validator("opset")
    @classmethod
    def _exportable(cls, opset: int | None) -> int | None:
        try:
            return check_opset(opset)
        except NampruneError as exc:
            raise ValueError(str(exc).removeprefix("--opset ")) from None


class LatencySection(LatencySettings):
    """How the report and export stages time the models (`namprune report`'s --batch, --threads,
    --min-time and --rounds)."""

    model_config = STRICT
    __init__ = BaseModel.__init__  # validated inside a recipe: errors name the key, not the flag

    @field_validator("batches", mode="before")
    @classmethod
    def _listed(cls, batches):
        return tuple(batches) if isinstance(batches, list) else batches  # YAML has lists, not tuples


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
    latency: LatencySection = LatencySection()

    def train_config(self, device: str = "auto") -> TrainConfig:
        shrink = self.sparsity.shrink_macs
        if shrink is None:
            shrink = self.prune.target_macs or DEFAULT_SHRINK_MACS
        return TrainConfig(**self.train.model_dump(), batch_size=self.data.batch_size, sparsity=self.sparsity.strength,
                           sparsity_targets=self.sparsity.targets, shrink_macs=shrink,
                           shrink_start=self.sparsity.shrink_start, shrink_scope=self.prune.scope, device=device)


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
        problem = getattr(exc, "problem", None) or first_line(exc)
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
    given = error.get("input")
    shown = "input" not in error or isinstance(given, dict) or repr(given) in message
    return f"{prefix}{message}" if shown else f"{prefix}{message} (got {given!r})"
