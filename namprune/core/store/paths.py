"""Checks of the paths a user gives (a checkpoint, a data folder, a folder to resume), made
without torch: the command line runs them before it loads torch, so a mistyped path is
answered at once rather than after seconds of imports. The loaders run the same checks.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import NampruneError
from ..settings import DATASETS
from .files import finished_epochs, staging_dir
from .records import TRAIN_STATE


def model_file(path: str | os.PathLike) -> Path:
    """``DIR`` -> ``DIR/model.pt``; a file path is returned as is. The folder of a recipe run
    (``namprune run``) stands for the model it delivers: ``finetune/``, else ``prune/``."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / "model.pt").exists() and (path / "recipe.yaml").is_file():
        for stage in ("finetune", "prune"):
            if (path / stage / "model.pt").is_file():
                return path / stage / "model.pt"
    return path / "model.pt"


def check_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint file ``path`` names (a run folder or a model.pt); refused when there is none."""
    file = model_file(path)
    if not file.exists():
        raise NampruneError(f"no checkpoint at {path} (expected a model.pt file or a run folder holding one)")
    return file


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise NampruneError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def image_folder_splits(data_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    """The train and test folders of an image-folder dataset: DIR/train and DIR/val (or DIR/test)."""
    if data_dir is None:
        raise NampruneError("the imagefolder dataset needs --data-dir DIR with DIR/train and DIR/val (or DIR/test)")
    root = Path(data_dir)
    if not root.is_dir():
        raise NampruneError(f"data folder {root} does not exist")
    test = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or test is None:
        raise NampruneError(f"{root} must contain train/ and val/ (or test/) folders of class sub-folders")
    return root / "train", test


def check_weights_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise NampruneError(f"--weights {path}: no such file")
    return path


def check_resumable(out: str | os.PathLike) -> Path:
    """The staging folder of the interrupted training run ``out``; refused when there is none."""
    out, stage = Path(out), staging_dir(out)
    if (stage / TRAIN_STATE).is_file():
        return stage
    if (out / "model.pt").exists():
        raise NampruneError(f"{out} is complete; there is nothing to resume")
    raise NampruneError(f"there is no interrupted run to resume at {out} (no {stage / TRAIN_STATE})")


__all__ = ["check_checkpoint", "check_dataset", "check_resumable", "check_weights_file", "finished_epochs",
           "image_folder_splits", "model_file"]
