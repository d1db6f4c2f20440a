"""One source of truth: the command line's defaults are the settings' defaults, every
choice list is the one in core/settings.py, and the command line answers a usage error
without loading torch."""

import subprocess
import sys

import pytest
import typer

from namprune.cli import commands  # noqa: F401  (registers the commands)
from namprune.cli.app import app
from namprune.core.nam import modules as nam
from namprune.core.settings import (ATTENTIONS, DEFAULT_ATTENTION, DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_WORKERS,
                                    EXPORT, FINETUNE, LATENCY, ExportSettings, FinetuneSettings, LatencySettings,
                                    PruneConfig, TrainConfig)

# command -> {option name in the command: (settings model, field)}. Options named like a field
# of the command's models are found by name; the rest are listed here.
RENAMED = {
    "train": {"compile_": (TrainConfig, "compile")},
    "prune": {"finetune_epochs": (FinetuneSettings, "epochs"), "lr": (FinetuneSettings, "lr"),
              "finetune_sparsity": (FinetuneSettings, "sparsity"), "distill": (FinetuneSettings, "distill"),
              "batch_size": (FinetuneSettings, "batch_size"), "threads": (TrainConfig, "threads")},
    "sweep": {"lr": (FinetuneSettings, "lr"), "distill": (FinetuneSettings, "distill"),
              "batch_size": (FinetuneSettings, "batch_size"), "min_time": (LatencySettings, "min_run_time"),
              "latency_device": (LatencySettings, "device"), "device": (TrainConfig, "device")},
    "report": {"min_time": (LatencySettings, "min_run_time")},
    "export": {"min_time": (LatencySettings, "min_run_time"), "batch": (ExportSettings, "batch")},
}
MODELS = {"train": [TrainConfig], "prune": [PruneConfig], "rank": [PruneConfig],
          "sweep": [PruneConfig, LatencySettings], "report": [LatencySettings],
          "export": [ExportSettings, LatencySettings]}
# Options whose default is a named constant rather than a field, and options that stand for
# "the settings' default" by None (documented in their help).
CONSTANTS = {("train", "model"): DEFAULT_MODEL, ("train", "dataset"): DEFAULT_DATASET,
             ("train", "attention"): DEFAULT_ATTENTION, ("train", "workers"): DEFAULT_WORKERS,
             ("sweep", "batch"): max(LATENCY.batches), ("report", "batch"): max(LATENCY.batches),
             ("export", "gate_tolerance"): None, ("export", "calibration"): None}


def options(command: str) -> dict:
    click_app = typer.main.get_command(app)
    return {p.name: p.default for p in click_app.commands[command].params if not p.required}


def expected_default(command: str, name: str):
    if (command, name) in CONSTANTS:
        return CONSTANTS[command, name]
    if name in RENAMED.get(command, {}):
        model, field = RENAMED[command][name]
        return model.model_fields[field].get_default(call_default_factory=True)
    for model in MODELS.get(command, []):
        if name in model.model_fields:
            return model.model_fields[name].get_default(call_default_factory=True)
    return KeyError


@pytest.mark.parametrize("command", sorted(MODELS))
def test_cli_defaults_are_the_settings_defaults(command):
    checked = 0
    for name, default in options(command).items():
        expected = expected_default(command, name)
        if expected is KeyError:
            continue
        assert default == expected, f"namprune {command} --{name.replace('_', '-')}: {default!r} != {expected!r}"
        checked += 1
    # every setting of the command's models that a user can give on the command line is checked
    assert checked >= {"train": 23, "prune": 20, "rank": 3, "sweep": 17, "report": 5, "export": 8}[command]


def test_every_training_setting_but_the_runtime_ones_is_a_train_option():
    given = set(options("train")) | {"compile"}
    assert set(TrainConfig.model_fields) - given == {"distill", "distill_temperature", "extra"}


def test_finetune_and_export_options_cover_their_settings():
    prune = {"finetune_epochs", "lr", "finetune_sparsity", "distill", "batch_size"}
    assert prune <= set(options("prune")) and len(prune) == len(FinetuneSettings.model_fields)
    export = set(options("export"))
    assert set(ExportSettings.model_fields) - export == {"calibration_images"}  # given as --calibration-images
    assert "calibration" in export and FINETUNE.epochs == 0 and EXPORT.batch == "dynamic"


def test_attention_names_are_the_settings_names():
    assert tuple(nam.BRANCHES) == ATTENTIONS


def test_a_usage_error_does_not_load_torch():
    """What keeps `namprune prune --ratios 0.3` quick: nothing heavy is imported to refuse it."""
    code = ("import sys\nfrom namprune.cli import main\ncode = main(['prune', '--ratios', '0.3'])\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'matplotlib', 'torch_pruning')"
            " if m in sys.modules)\nprint(code, heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
    assert done.stderr.strip().startswith("error: No such option: --ratios")
