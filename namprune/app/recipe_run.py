"""``namprune run``: a recipe end to end, one sub-folder per stage.

    OUT/recipe.yaml   the recipe as run (every default filled in)
    OUT/train/        sparse training                          (namprune train)
    OUT/rank/         channel and pixel saliency, plots        (namprune rank)
    OUT/prune/        the pruned model, right after pruning    (namprune prune)
    OUT/finetune/     the pruned model, fine-tuned
    OUT/report/       the trade-off table, JSON/CSV/Markdown, plots   (namprune report)
    OUT/export/       model.onnx checked with onnxruntime      (namprune export; model.xml with runtime openvino)

The run works in ``OUT.partial`` and becomes ``OUT`` when every stage is done. A stage
that is complete is skipped when the command runs again, and an interrupted training or
fine-tuning continues from its last complete epoch, so ``namprune run`` simply picks up
where it stopped.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from ..core.console import note
from ..core.errors import NampruneError
from ..core.models.foreign import accepting_changed_files
from ..core.pruning.saliency import rank_model
from ..core.settings import FinetuneSettings
from ..core.store import checkpoint
from ..core.store.files import commit_dir, run_dir, staging_dir, write_json, write_text
from ..core.store.records import TRAIN_STATE
from . import plots
from .comparison import compare, pruned_layers, save_comparison
from .exporting import export_checkpoint
from .recipes import Recipe
from .run_folders import load_run
from .stages import compatible_data, finetune_pruned, prune_checkpoint, resume_training, train_model


@dataclass
class Job:
    """A recipe being run: where, on which device, and what the user overrode."""

    recipe: Recipe
    root: Path  # OUT.partial while the run is under way
    device: str = "auto"
    progress: bool = True

    def folder(self, stage: str) -> Path:
        return self.root / stage

    @property
    def data_dir(self) -> str | None:
        return self.recipe.data.data_dir

    @property
    def final_model(self) -> Path:
        """The model the run delivers: fine-tuned if the recipe fine-tunes, else as pruned."""
        return self.folder("finetune" if self.recipe.finetune.epochs else "prune")


def run_recipe(recipe: Recipe, out: str | Path, device: str = "auto", overwrite: bool = False, progress: bool = True) -> Path:
    """Run every stage of ``recipe`` not yet done in ``out``; returns ``out``."""
    out = Path(out)
    text = yaml.safe_dump(recipe.model_dump(), sort_keys=False)
    if _same_job(_recipe_in(out), text):
        note(f"{out} already holds this recipe's complete run; nothing to do")
        return out
    if out.exists() and not overwrite:
        raise NampruneError(f"{out} holds the run of a different recipe; choose another --out or pass --overwrite")
    root = staging_dir(out)
    if root.exists() and _recipe_in(root) is not None and not _same_job(_recipe_in(root), text):
        if not overwrite:
            raise NampruneError(f"{root} holds an interrupted run of a different recipe; pass --overwrite to discard it")
        shutil.rmtree(root)
    fresh = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / "recipe.yaml", text)
    job = Job(recipe, root, device, progress)
    try:
        with accepting_changed_files(recipe.model.accept_changed_model):
            for stage, step in STEPS.items():
                if stage == "finetune" and not recipe.finetune.epochs or stage == "export" and not recipe.export.enabled:
                    continue
                if job.folder(stage).exists():
                    note(f"[green]✓[/] {stage}: done earlier")
                    continue
                note(f"[bold]▶ {stage}[/]")
                step(job)
    except BaseException:
        if fresh and _nothing_done(root):  # a run that failed before doing anything leaves nothing behind
            shutil.rmtree(root, ignore_errors=True)
        raise
    commit_dir(root, out)
    return out


def _nothing_done(root: Path) -> bool:
    """Only the recipe and empty or absent stage folders: no work to resume."""
    return all(p.name == "recipe.yaml" or (p.is_dir() and not any(p.iterdir())) for p in root.iterdir())


# keys that change how a run goes, not what it makes: a run continues under other values
# (model.accept_changed_model is what resumes a run whose model file was edited since)
RUNTIME_KEYS = (("train", "threads"), ("model", "accept_changed_model"))


def _same_job(saved: str | None, text: str) -> bool:
    """Whether a recipe written by an earlier run asks for the same work as ``text``."""
    if saved is None:
        return False
    documents = [yaml.safe_load(saved), yaml.safe_load(text)]
    for section, key in RUNTIME_KEYS:
        for document in documents:
            document.get(section, {}).pop(key, None)
    return documents[0] == documents[1]


def _recipe_in(folder: Path) -> str | None:
    path = folder / "recipe.yaml"
    return path.read_text() if path.is_file() else None


def _train(job: Job) -> None:
    out = job.folder("train")
    if (staging_dir(out) / TRAIN_STATE).exists():
        resume_training(out, job.data_dir, job.device, job.recipe.data.workers, job.progress, job.recipe.train.threads)
        return
    r = job.recipe
    train_model(r.model.name, r.data.dataset, r.train_config(job.device), out, data_dir=job.data_dir,
                image_size=r.data.image_size, attention=r.model.attention, workers=r.data.workers,
                overwrite=True, progress=job.progress, weights=r.model.weights, nam_after=r.model.nam_after)


def _rank(job: Job) -> None:
    r = job.recipe
    payload = checkpoint.read(job.folder("train"))
    calibration = compatible_data(payload, job.data_dir, r.data.batch_size, "cpu").calibration
    ranking = rank_model(checkpoint.build(payload).eval(), r.prune.importance, r.prune.normalization, r.prune.seed,
                         calibration, r.prune.calibration_images)
    with run_dir(job.folder("rank"), overwrite=True) as stage:
        write_json(stage / "rank.json", ranking.to_dict())
        plots.plot_ranking(ranking, stage / "ranking.png", title=f"{r.name or r.model.name}: channel and pixel saliency")


def _prune(job: Job) -> None:
    prune_checkpoint(job.folder("train"), job.recipe.prune, job.folder("prune"), FinetuneSettings(epochs=0),
                     data_dir=job.data_dir, device=job.device, overwrite=True, progress=job.progress,
                     threads=job.recipe.train.threads)


def _finetune(job: Job) -> None:
    finetune_pruned(job.folder("prune"), job.folder("finetune"), job.recipe.finetune, job.data_dir, job.device,
                    overwrite=True, progress=job.progress, resume=True, threads=job.recipe.train.threads)


def _report(job: Job) -> None:
    runs = [load_run(job.folder(stage)) for stage in ("train", "prune", "finetune") if job.folder(stage).exists()]
    result = compare(runs, runs[0], job.recipe.latency)
    with run_dir(job.folder("report"), overwrite=True) as stage:
        save_comparison(result, stage / "report.json", stage / "report.md", stage / "report.csv", stage / "pareto.png",
                        stage / "widths.png", pruned_layers([load_run(job.final_model)]),
                        title=job.recipe.name or job.recipe.model.name)


def _export(job: Job) -> None:
    with run_dir(job.folder("export"), overwrite=True) as stage:
        name = "model.xml" if job.recipe.export.runtime == "openvino" else "model.onnx"  # IR: what --out takes
        export_checkpoint(job.final_model, stage / name, job.recipe.export, job.recipe.latency, data_dir=job.data_dir)


STEPS: dict[str, Callable[[Job], None]] = {"train": _train, "rank": _rank, "prune": _prune, "finetune": _finetune,
                                           "report": _report, "export": _export}
