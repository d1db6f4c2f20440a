"""What a run folder is, what it recorded, and which run is the unpruned base of a comparison.

A run folder holds a namprune checkpoint ``model.pt`` and one record of how it was made:

* a training run (``namprune train``): ``summary.json``; its accuracy is the last epoch's
  test top-1 / top-5 (``TrainSummary.final``);
* a pruned run (``namprune prune``, or one point of ``namprune sweep``): ``report.json``,
  whose ``source`` names the checkpoint it was pruned from; its accuracy is the fine-tuned
  one, or the one right after pruning when it was not fine-tuned;
* a bare checkpoint folder (``model.pt`` alone): the accuracy stored in the checkpoint.

A sweep folder (``sweep.json`` beside one folder per point) stands for all of its points; a
recipe run's folder (``namprune run``) for the model it delivers (``finetune/``, else ``prune/``).

The unpruned base that every run is compared with is, in this order: the run given as
``base``; else the first unpruned run (training run or bare checkpoint) among those given;
else the checkpoint the pruned runs were pruned from (their common ``source``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import NampruneError
from ..core.store import checkpoint
from ..core.store.records import REPORT, SUMMARY, SWEEP, PruneReport, SweepRecord, TrainSummary

KINDS = ("trained", "pruned", "checkpoint")


@dataclass
class Run:
    """One run folder: its path, its kind and the record it was written with."""

    path: Path  # the folder holding model.pt
    kind: str  # one of KINDS
    record: TrainSummary | PruneReport | None  # summary.json or report.json (None for a bare checkpoint)

    @property
    def model_file(self) -> Path:
        return self.path / "model.pt"

    @property
    def pruned(self) -> bool:
        return self.kind == "pruned"

    @property
    def source(self) -> Path | None:
        """The checkpoint a pruned run was pruned from: by its path relative to this run (which
        survives moving both together), else by its absolute path (which survives moving this run)."""
        if not self.pruned:
            return None
        relative = self.record.source_relative
        if relative and (self.path / relative).exists():
            return (self.path / relative).resolve()
        return Path(self.record.source)

    def same(self, other: "Run") -> bool:
        return os.path.realpath(self.path) == os.path.realpath(other.path)

    def accuracy(self) -> dict:
        """The recorded top-1 / top-5 (%) and the file they were read from."""
        if self.kind == "trained":
            final = self.record.final
            return _accuracy(final.get("test_top1"), final.get("test_top5"), self.path / SUMMARY)
        if self.kind == "pruned":
            return _accuracy(self.record.top1, self.record.top5, self.path / REPORT)
        metrics = checkpoint.read(self.path).get("metrics", {})
        return _accuracy(metrics.get("top1"), metrics.get("top5"), self.model_file)


def _accuracy(top1, top5, where: Path) -> dict:
    if top1 is None:
        raise NampruneError(f"{where} records no top-1 accuracy")
    return {"top1": float(top1), "top5": None if top5 is None else float(top5), "accuracy_from": str(where)}


def load_run(path: str | os.PathLike) -> Run:
    """The run in a folder (or the folder of a ``model.pt`` file)."""
    path = Path(path)
    if not path.exists():
        raise NampruneError(f"{path} does not exist")
    folder = checkpoint.model_file(path).parent  # a recipe run's folder stands for its final model
    if not (folder / "model.pt").is_file():
        raise NampruneError(f"{path} is not a run folder (it holds no model.pt); give folders written by "
                            "namprune train, prune or sweep")
    for name, record, kind in ((REPORT, PruneReport, "pruned"), (SUMMARY, TrainSummary, "trained")):
        if (folder / name).is_file():
            return Run(folder, kind, record.read(folder / name))
    checkpoint.read(folder)  # a bare folder must at least hold a namprune checkpoint
    return Run(folder, "checkpoint", None)


def unpruned_source(ckpt) -> Path | None:
    """The unpruned checkpoint a pruned run came from, following each run's ``report.json``
    (``source_relative``, else ``source``); None when the chain breaks or ``ckpt`` is unpruned."""
    path = checkpoint.model_file(ckpt)
    for _ in range(16):  # a run pruned again and again still ends somewhere
        if not checkpoint.read(path).get("pruning_history"):
            return None if path == checkpoint.model_file(ckpt) else path
        if not (path.parent / REPORT).is_file():
            return None
        source = load_run(path.parent).source
        if source is None or not checkpoint.model_file(source).is_file():
            return None
        path = checkpoint.model_file(source)
    return None


def expand(paths: list[str | os.PathLike]) -> list[Run]:
    """The runs behind the given paths, a sweep folder standing for its points, each run once."""
    runs: list[Run] = []
    for path in map(Path, paths):
        if (path / SWEEP).is_file() and not (path / "model.pt").exists():
            found = [load_run(path / point["folder"]) for point in SweepRecord.read(path / SWEEP).points]
        else:
            found = [load_run(path)]
        runs += [run for run in found if not any(run.same(seen) for seen in runs)]
    if not runs:
        raise NampruneError("no runs to report; give at least one run folder")
    return runs


def find_base(runs: list[Run], base: str | os.PathLike | None = None) -> Run:
    """The unpruned run the others are compared with (see the module's docstring for the order)."""
    if base is not None:
        return _given(runs, load_run(base))
    unpruned = [run for run in runs if not run.pruned]
    if unpruned:
        return unpruned[0]
    sources = {os.path.realpath(run.source) for run in runs if run.source is not None}
    if len(sources) != 1:
        listed = ", ".join(sorted(sources)) or "none recorded"
        raise NampruneError(f"the pruned runs were pruned from different checkpoints ({listed}); "
                            "pass --base RUN to choose the base")
    source = next(run.source for run in runs if run.source is not None)
    if not source.exists():
        raise NampruneError(f"{runs[0].path} was pruned from {source}, which no longer exists; "
                            "pass --base RUN to choose the base")
    return _given(runs, load_run(source))


def _given(runs: list[Run], base: Run) -> Run:
    """The base as it appears among ``runs`` (so it is measured once), else as loaded."""
    return next((run for run in runs if run.same(base)), base)


def display_names(runs: list[Run]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [run.path.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run.path) for run in runs]


__all__ = ["KINDS", "Run", "display_names", "expand", "find_base", "load_run"]
