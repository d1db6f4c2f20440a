import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from cli_helpers import ROOT, assert_one_line_error, run_cli
from namprune import NampruneError, PruneConfig, TrainConfig
from namprune.app.recipes import Recipe, load_recipe, packaged_recipes

SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))
REQUIRED = {"digits-resnet20", "mnist-resnet20", "cifar10-resnet20-nam", "cifar10-resnet56-nam",
            "cifar100-resnet50-nam", "imagefolder-resnet50-nam"}


def test_the_required_recipes_ship_and_are_packaged():
    assert REQUIRED <= {p.stem for p in SHIPPED}
    assert set(packaged_recipes()) == {p.stem for p in SHIPPED}


def _training_settings(recipe: Recipe) -> dict:
    """Every training value of a recipe, under the name TrainConfig gives it."""
    return {**recipe.train.model_dump(), "batch_size": recipe.data.batch_size,
            "sparsity": recipe.sparsity.strength, "sparsity_targets": recipe.sparsity.targets,
            "shrink_scope": recipe.prune.scope}  # shrinking plans with the allocation the recipe prunes with


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates_and_its_values_reach_the_engine(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    settings = _training_settings(recipe)
    train = recipe.train_config().to_dict()
    assert {key: train[key] for key in settings} == settings  # none dropped on the way to the engine


def test_a_recipe_that_sets_nothing_trains_and_prunes_with_the_engine_defaults():
    # each default lives once, in TrainConfig and PruneConfig; the recipe schema takes its own from them
    assert Recipe().train_config() == TrainConfig()
    assert Recipe().prune.model_dump() == PruneConfig().model_dump()


def _write(tmp_path, document) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("document,fragment", [
    ({"train": {"lrate": 0.1}}, "train.lrate: unknown key (known keys here: epochs, lr,"),
    ({"trian": {}}, "trian: unknown key"),
    ({"train": {"epochs": "ten"}}, "train.epochs: Input should be a valid integer (got 'ten')"),
    ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than or equal to 1"),
    ({"prune": {"ratio": 1.5}}, "prune.ratio: must be in (0, 1) (the fraction of channels removed) (got 1.5)"),
    ({"prune": {"ratio": 0.3, "target_macs": 0.5}}, "prune: give exactly one of --ratio, --target-macs and --target-latency"),
    ({"model": {"attention": "cbam"}}, "model.attention: Input should be 'none', 'nam'"),
    ({"data": {"dataset": "svhn"}}, "data.dataset:"),
    ({"train": {"epochs": 5, "warmup_epochs": 5}}, "train: warmup epochs (5) must be smaller than epochs (5)"),
    ({"export": {"batch": 0}}, "export.batch: must be 'dynamic' or a positive batch size (got 0)"),
    ({"latency": {"rounds": 0}}, "latency.rounds: Input should be greater than or equal to 1"),
    ({"latency": {"batches": [1, "big"]}}, "latency.batches.1: Input should be a valid integer (got 'big')"),
    ("train: [1, 2", "not valid YAML"),
    ("- just\n- a list\n", "a recipe is a mapping"),
])
def test_bad_recipes_name_the_file_and_the_key(tmp_path, document, fragment):
    path = _write(tmp_path, document)
    with pytest.raises(NampruneError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message


def test_a_bad_latency_setting_stops_the_run_before_any_work(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "digits-resnet20", "--out", tmp_path / "out", "--set", "latency.rounds=0")
    assert_one_line_error(code, err, "--set latency.rounds=0", "greater than or equal to 1")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_overrides_with_set(tmp_path):
    path = _write(tmp_path, {"prune": {"ratio": 0.3}})
    recipe = load_recipe(path, ["prune.ratio=0.6", "train.epochs=3", "model.attention=nam-channel"])
    assert (recipe.prune.ratio, recipe.train.epochs, recipe.model.attention) == (0.6, 3, "nam-channel")
    recipe = load_recipe(path, ["prune.ratio=null", "prune.target_macs=0.5"])
    assert recipe.prune.target_macs == 0.5 and recipe.prune.ratio is None
    with pytest.raises(NampruneError, match=r"^--set prune.ratio=2: must be in \(0, 1\)"):  # not the file's fault
        load_recipe(path, ["prune.ratio=2"])
    with pytest.raises(NampruneError, match="--set takes key=value"):
        load_recipe(path, ["prune.ratio"])


def test_unknown_recipe_name():
    with pytest.raises(NampruneError, match="no recipe nope: .*digits-resnet20"):
        load_recipe("nope")


_scalars = st.none() | st.booleans() | st.integers(-5, 500) | st.floats(-2, 2, allow_nan=False) | st.text(max_size=6)
_sections = st.sampled_from(["model", "data", "train", "sparsity", "prune", "finetune", "export", "name", "junk"])
_keys = st.sampled_from(["name", "attention", "dataset", "epochs", "lr", "ratio", "target_macs", "strength", "batch",
                         "scope", "enabled", "milestones", "seed", "x"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_sections, _scalars | st.dictionaries(_keys, _scalars | st.lists(_scalars, max_size=3), max_size=4),
                       max_size=5))
def test_random_recipe_documents_load_or_give_the_clear_error(document):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            recipe = load_recipe(path)
        except NampruneError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        else:
            assert isinstance(recipe, Recipe)
            recipe.train_config()
            assert isinstance(recipe.prune, PruneConfig)  # the section is the settings prune runs with


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_as_a_recipe(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.yaml"
        path.write_bytes(data)
        try:
            load_recipe(path)
        except NampruneError as exc:
            assert "\n" not in str(exc)


def test_the_plain_recipe_runs_and_prunes_a_model_without_nam_by_global_l1(tmp_path, capsys):
    """`namprune run cifar10-resnet20-plain`, on fake images of CIFAR's shape and one epoch per
    stage: no attention is attached, and the auto importance gives the global L1 ranking."""
    code, _, err = run_cli(capsys, "run", "cifar10-resnet20-plain", "--out", tmp_path / "out", "-q",
                           "--set", "data.dataset=fake", "--set", "train.epochs=1", "--set", "finetune.epochs=1",
                           "--set", "export.enabled=false", "--set", "latency.rounds=1", "--set", "latency.min_run_time=0.01")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "prune" / "report.json").read_text())
    assert report["attention"] == "none"
    assert (report["importance"], report["normalization"], report["cost_exponent"]) == ("l1", "mean", 0.0)
    assert report["macs_kept"] == pytest.approx(0.5, abs=0.02)
    assert (tmp_path / "out" / "finetune" / "model.pt").is_file()
