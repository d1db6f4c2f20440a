"""``namprune run`` and ``namprune demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.console import console
from ..core.errors import Interrupted
from ..core.store.files import staging_dir
from .app import app
from .options import DataDir, Device, Overwrite, Quiet, Threads

Set = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe value: --set prune.ratio=0.5 (repeatable; the value is read as YAML).", metavar="KEY=VALUE")]


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="A recipe file, or the name of a packaged recipe such as digits-resnet20.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder, one sub-folder per stage; run again to continue an interrupted run.")] = Path("runs/run"),
    overrides: Set = None,
    data_dir: DataDir = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", "-e", help="Override train.epochs.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override train.seed.")] = None,
    threads: Threads = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Run a recipe end to end: train, rank, prune, fine-tune, report, export."""
    from ..app.recipes import load_recipe

    flags = {"data.data_dir": ("--data-dir", str(data_dir) if data_dir else None), "train.epochs": ("--epochs", epochs),
             "train.seed": ("--seed", seed), "train.threads": ("--threads", threads)}
    loaded = load_recipe(recipe, overrides or [], {k: v for k, v in flags.items() if v[1] is not None})
    show_results(_run(loaded, out, device, overwrite, quiet))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/demo"),
    overrides: Set = None,
    threads: Threads = None,
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """The digits recipe end to end, offline, in about a minute on two CPU cores."""
    from ..app.recipes import load_recipe

    flags = {"train.threads": ("--threads", threads)} if threads is not None else {}
    show_results(_run(load_recipe("digits-resnet20", overrides or [], flags), out, device, overwrite, quiet))


def _run(recipe, out: Path, device: str, overwrite: bool, quiet: bool) -> Path:
    """Run the recipe; after a Ctrl-C, say what was kept and how to continue."""
    from ..app.recipe_run import run_recipe

    try:
        return run_recipe(recipe, out, device, overwrite, progress=not quiet)
    except KeyboardInterrupt:
        kept = staging_dir(out)
        if not kept.exists():  # a run stopped before its first stage did any work leaves nothing
            raise Interrupted("before anything was saved") from None
        raise Interrupted(f"the finished stages and epochs are kept in {kept}; the same command continues "
                          "from there") from None


def show_results(out: Path) -> None:
    """The trade-off table and where everything is."""
    from ..app.comparison import print_table
    from ..core.store.files import read_json

    print_table(read_json(out / "report" / "report.json"))
    final = out / "finetune" if (out / "finetune").exists() else out / "prune"
    rows = [("pruned model", final / "model.pt"), ("trade-off report", out / "report" / "report.md"),
            ("pictures", ", ".join(str(p) for p in sorted([*(out / "report").glob("*.png"), *(out / "rank").glob("*.png")])))]
    if (out / "export" / "model.xml").exists():  # the recipe's export.runtime: openvino
        rows.append(("OpenVINO IR", out / "export" / "model.xml"))
    elif (out / "export").exists():
        rows.append(("ONNX model", out / "export" / "model.onnx"))
    for label, where in rows:
        console.print(f"{label + ':':18} {where}")
