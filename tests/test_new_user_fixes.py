"""Fixes found by trying namprune as a new user would (issue 15, item 3): each test failed
before its fix."""

import ast
import importlib.metadata
import json
import os
import re
import sys

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from cli_helpers import ROOT, assert_one_line_error, run_cli
from model_helpers import digits_model, save_digits_checkpoint
from namprune import NampruneError, models
from namprune.app.recipes import load_recipe
from namprune.core.store.files import write_atomic, write_json


# --------------------------------------------------------------------------- too small an input


def test_an_input_too_small_for_the_architecture_names_the_smallest_that_works():
    with pytest.raises(NampruneError, match=r"^tv:densenet121 needs inputs of at least 29x29 pixels, got 28x28 "
                                            r"\(use --image-size 29 or larger\)$"):
        models.create("tv:densenet121", num_classes=10, input_size=28, in_channels=1)


# --------------------------------------------------------------------------- exports sharing a folder


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    return save_digits_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", digits_model("resnet20", "nam", 16))


def test_two_exports_into_one_folder_both_succeed(digits_ckpt, tmp_path, capsys):
    for name in ("a", "b"):
        code, out, err = run_cli(capsys, "export", digits_ckpt, "--out", tmp_path / f"{name}.onnx", "--no-latency",
                                 "--no-check")  # the check is tested elsewhere; this is about the file names
        assert code == 0, err
        assert f"report: {tmp_path / f'{name}.export.json'}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.export.json", "a.onnx", "b.export.json", "b.onnx"]
    assert json.loads((tmp_path / "b.export.json").read_text())["onnx"] == str(tmp_path / "b.onnx")


# --------------------------------------------------------------------------- an ONNX file where a checkpoint goes


def _tiny_onnx(path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph), path)
    return path


@pytest.mark.parametrize("name", ["model.onnx", "model.pt"])
def test_an_onnx_file_given_as_checkpoint_is_named_as_such(tmp_path, capsys, name):
    path = _tiny_onnx(tmp_path / name)
    code, _, err = run_cli(capsys, "prune", path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "is an ONNX file", "give the namprune checkpoint it was exported from")
    assert "pickle" not in err and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- recipes: numbers, blame, names


def test_exponent_numbers_without_a_dot_are_numbers_in_recipes_and_set(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sparsity:\n  strength: 1e-4\ntrain:\n  lr: 5E-2\n  weight_decay: 1e-4\n")
    recipe = load_recipe(path, ["finetune.lr=1e-3", "prune.ratio=5e-1"])
    assert (recipe.sparsity.strength, recipe.train.lr, recipe.train.weight_decay) == (1e-4, 5e-2, 1e-4)
    assert (recipe.finetune.lr, recipe.prune.ratio) == (1e-3, 0.5)
    assert load_recipe(path, ["model.name=resnet20"]).model.name == "resnet20"  # names stay text


def test_a_set_mistake_is_blamed_on_the_set_not_the_recipe_file(capsys):
    code, _, err = run_cli(capsys, "run", "digits-resnet20", "--set", "prune.ratio=1.5", "--out", "unused")
    assert_one_line_error(code, err, "error: --set prune.ratio=1.5: must be in (0, 1)")
    assert "recipe_files" not in err and ".yaml" not in err


def test_a_flag_mistake_is_blamed_on_the_flag(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "digits-resnet20", "--data-dir", tmp_path / "missing", "--out", tmp_path / "o")
    assert_one_line_error(code, err, f"--data-dir {tmp_path / 'missing'}: there is no folder")


@pytest.mark.parametrize("setting,fragment", [
    ("model.name=resnet21", "unknown model 'resnet21'"),
    ("model.name=tv:resnet19", "did you mean resnet18"),
    ("model.name=timm:resnet99", "unknown timm model 'resnet99'"),
    ("model.name=nowhere.py:build", "there is no model file nowhere.py"),
    ("model.weights=nowhere.pth", "there is no weights file nowhere.pth"),
])
def test_every_name_in_a_recipe_is_checked_before_any_work(tmp_path, capsys, setting, fragment):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", "digits-resnet20", "--set", setting, "--out", out)
    assert_one_line_error(code, err, f"--set {setting}: ", fragment)
    assert list(tmp_path.iterdir()) == []  # no run.partial to trip over when it is run again, corrected


# --------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_mode_the_umask_gives_a_plain_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_atomic(tmp_path / "w.pt", lambda tmp: torch.save({"w": torch.zeros(2)}, tmp))
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    for name in ("a.json", "w.pt", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# --------------------------------------------------------------------------- declared dependencies


def _imported_distributions() -> dict[str, set[str]]:
    """Third-party distributions each module of the package imports, found by reading the source."""
    owners = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (ROOT / "namprune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "namprune":
                    continue
                for dist in owners.get(top, [top]):
                    found.setdefault(re.sub(r"[-_.]+", "-", dist).lower(), set()).add(path.name)
    return found


def test_every_imported_package_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [d for name, deps in project["optional-dependencies"].items() if name != "dev" for d in deps]
    declared = {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ \[;]", d)[0]).lower()
                for d in project["dependencies"] + extras}
    missing = {dist: files for dist, files in _imported_distributions().items() if dist not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert "timm" not in {re.split(r"[<>=]", d)[0] for d in project["dependencies"]}  # an extra, not required
    assert any(d.startswith("timm") for d in project["optional-dependencies"]["dev"])
