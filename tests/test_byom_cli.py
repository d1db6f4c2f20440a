"""Bring your own model from the command line: ``--model timm:<name>``, ``--model
path/to/file.py:function`` and ``--weights FILE``, each through train -> prune -> export."""

import hashlib
import json
import shutil
import sys

import pytest
import torch

import namprune
from cli_helpers import ROOT, assert_one_line_error, run_cli
from model_helpers import save_digits_checkpoint, trained_like
from namprune import models

timm = pytest.importorskip("timm")
import torchvision  # noqa: E402

USER_MODEL = f"{ROOT / 'tests' / 'test_byom.py'}:small_cnn"
# --model, extra train flags; each trains one epoch on the fake data (256 images, 32x32)
CLI_MODELS = {
    "timm-efficientnet_b0": ("timm:efficientnet_b0", []),
    "tv-regnet_x_400mf": ("tv:regnet_x_400mf", []),
    "user-cnn": (USER_MODEL, ["--attention", "nam", "--nam-after", "block.bn3,down.4"]),
}
FAST = ["--epochs", "1", "--batch-size", "64", "--lr", "0.01", "-q"]


@pytest.mark.parametrize("arch", list(CLI_MODELS))
def test_train_prune_export_from_the_command_line(arch, tmp_path, capsys):
    model, extra = CLI_MODELS[arch]
    code, _, err = run_cli(capsys, "train", "--model", model, *extra, "--dataset", "fake", "--image-size", "32",
                           *FAST, "--out", tmp_path / "train")
    assert code == 0, err
    code, out, err = run_cli(capsys, "prune", tmp_path / "train", "--ratio", "0.3", "--out", tmp_path / "prune")
    assert code == 0, err
    report = json.loads((tmp_path / "prune" / "report.json").read_text())
    assert report["macs_kept"] < 0.9 and report["model"] == model  # test_byom checks --target-macs on each
    code, out, err = run_cli(capsys, "export", tmp_path / "prune", "--out", tmp_path / "model.onnx", "--no-latency")
    assert code == 0, err
    record = json.loads((tmp_path / "model.export.json").read_text())
    assert [r["ok"] for r in record["parity"]["results"]] == [True, True]  # random inputs and test images
    reloaded = namprune.load(tmp_path / "prune")  # rebuilt from the checkpoint alone: arch spec + history + weights
    assert sum(p.numel() for p in reloaded.parameters()) == report["params_after"]


def test_timm_resnet18_trains_on_digits(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--model", "timm:resnet18", "--attention", "nam", "--dataset", "digits", "--epochs", "1",
                             "--batch-size", "64", "-q", "--out", tmp_path / "run")
    assert code == 0, err
    assert "trained timm:resnet18 (nam) on digits" in out
    model = namprune.load(tmp_path / "run")
    assert type(model).__module__ == "timm.models.resnet" and model.conv1.in_channels == 1
    assert sum(isinstance(m, namprune.NAM) for m in model.modules()) == 8


def test_timm_missing_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where timm is not installed
    code, _, err = run_cli(capsys, "train", "--model", "timm:resnet18", "--out", tmp_path / "t")
    assert_one_line_error(code, err, 'pip install "namprune[timm]"')


@pytest.fixture(scope="module")
def regnet_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = models.create("tv:regnet_x_400mf", num_classes=10, attention="nam", input_size=16, in_channels=1)
    return save_digits_checkpoint(tmp_path_factory.mktemp("regnet") / "model.pt", trained_like(model))


def test_regnet_prunes_from_the_command_line(regnet_ckpt, tmp_path, capsys):
    """It crashed inside torch-pruning ("INDICES element is out of DATA bounds")."""
    code, out, err = run_cli(capsys, "prune", regnet_ckpt, "--ratio", "0.3", "--out", tmp_path / "p")
    assert code == 0, err
    pruned = namprune.load(tmp_path / "p")
    grouped = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d) and 1 < m.groups < m.out_channels]
    assert grouped and all(m.weight.shape[1] * m.groups == m.in_channels for m in grouped)


# --------------------------------------------------------------------------- --weights


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A torchvision ResNet-18 state_dict with a 1000-class head, saved the way PyTorch users do."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    return path


def test_weights_start_training_with_the_classifier_resized(imagenet_like, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--model", "tv:resnet18", "--weights", imagenet_like, "--dataset", "digits",
                             "--epochs", "1", "--batch-size", "64", "--lr", "1e-9", "--wd", "0", "-q", "--out", tmp_path / "run")
    assert code == 0, err
    assert "1000-class classifier (fc)" in err and "10 classes: the classifier starts from fresh weights" in err
    assert "conv1 of" in err and "summed over them for 1-channel input" in err  # digits are grey
    trained, start = namprune.load(tmp_path / "run").state_dict(), torch.load(imagenet_like, weights_only=True)
    assert torch.allclose(trained["layer4.1.conv2.weight"], start["layer4.1.conv2.weight"], atol=1e-6)
    assert torch.allclose(trained["conv1.weight"], start["conv1.weight"].sum(1, keepdim=True), atol=1e-6)
    assert trained["fc.weight"].shape == (10, 512)


@pytest.mark.parametrize("make,fragment", [
    (lambda p: p.write_text("not weights\n"), "is not a PyTorch weights file"),
    (lambda p: None, "no such file"),
    (lambda p: torch.save(torchvision.models.mobilenet_v2(num_classes=10).state_dict(), p), "does not fit tv:resnet18"),
    (lambda p: torch.save({"epoch": 3, "note": "no tensors"}, p), "holds no state_dict"),
    (lambda p: torch.save(torch.nn.Linear(2, 2), p), "was refused"),
])
def test_a_bad_weights_file_is_one_line(tmp_path, capsys, make, fragment):
    path = tmp_path / "w.pth"
    make(path)
    code, _, err = run_cli(capsys, "train", "--model", "tv:resnet18", "--weights", path, "--dataset", "fake",
                           "--image-size", "32", "--out", tmp_path / "t")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.partial").exists()


def test_weights_nested_and_wrapped_are_found(tmp_path):
    from namprune.core.store.weights import read_state_dict

    state = timm.create_model("resnet18", num_classes=3).state_dict()
    torch.save({"epoch": 9, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth.tar")
    found = read_state_dict(tmp_path / "ddp.pth.tar")
    assert found.keys() == state.keys() and all(torch.equal(found[k], state[k]) for k in state)


# --------------------------------------------------------------------------- a model file


def test_a_model_file_is_rebuilt_only_from_the_unchanged_file(tmp_path, capsys):
    source = tmp_path / "my_model.py"
    shutil.copy(ROOT / "tests" / "test_byom.py", source)
    code, _, err = run_cli(capsys, "train", "--model", f"{source}:small_cnn", "--attention", "none", "--dataset", "fake",
                           "--image-size", "16", *FAST, "--out", tmp_path / "run")
    assert code == 0, err
    code, out, err = run_cli(capsys, "info", tmp_path / "run", "--json", tmp_path / "info.json")
    assert code == 0 and json.loads((tmp_path / "info.json").read_text())["model"] == f"{source}:small_cnn"
    source.write_text(source.read_text() + "\n# edited\n")
    code, _, err = run_cli(capsys, "info", tmp_path / "run")
    assert_one_line_error(code, err, "my_model.py changed since the checkpoint was made", "pass --accept-changed-model",
                          "model.accept_changed_model: true")
    # the way forward the message names: the file as it is now, with a note
    code, out, err = run_cli(capsys, "prune", tmp_path / "run", "--ratio", "0.3", "--out", tmp_path / "pruned",
                             "--accept-changed-model")
    assert code == 0, err
    assert "my_model.py changed since the checkpoint was made; building the model from it as it is now" in err
    pruned = torch.load(tmp_path / "pruned" / "model.pt", weights_only=True)
    assert pruned["arch"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()  # pinned to the file used
    code, _, err = run_cli(capsys, "info", tmp_path / "pruned")  # and read without the flag from then on
    assert code == 0, err


def test_a_recipe_run_resumes_past_an_edited_model_file_with_its_key(tmp_path, capsys):
    source = tmp_path / "my_model.py"
    shutil.copy(ROOT / "tests" / "test_byom.py", source)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: '{source}:small_cnn', attention: none}}\n"
                      "data: {dataset: fake, image_size: 16, batch_size: 64}\n"
                      "train: {epochs: 1, lr: 0.01}\nprune: {ratio: 0.3, importance: l1}\n"
                      "finetune: {epochs: 0}\nexport: {enabled: false}\nlatency: {rounds: 1, min_run_time: 0.01}\n")
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out", "-q")
    assert code == 0, err
    # as if interrupted after training: the run folder with only its recipe and the train stage
    partial = tmp_path / "out.partial"
    (tmp_path / "out").rename(partial)
    for stage in partial.iterdir():
        if stage.is_dir() and stage.name != "train":
            shutil.rmtree(stage)
    source.write_text(source.read_text() + "\n# edited\n")
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out", "-q")
    last = err.strip().splitlines()[-1]  # after the run's stage notes
    assert code == 2 and last.startswith("error: ") and "model.accept_changed_model: true" in last, err
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out", "-q",
                           "--set", "model.accept_changed_model=true")
    assert code == 0, err
    assert "my_model.py changed since the checkpoint was made" in err
    assert (tmp_path / "out" / "prune" / "model.pt").is_file()


def test_a_model_without_known_blocks_names_the_flag_and_the_candidates(tmp_path, capsys):
    source = tmp_path / "my_net.py"
    source.write_text("import torch.nn as nn\n\n\ndef net(num_classes=10, in_channels=1):\n"
                      "    return nn.Sequential(\n"
                      "        nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),\n"
                      "        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),\n"
                      "                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),\n"
                      "        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))\n")
    code, _, err = run_cli(capsys, "train", "--model", f"{source}:net", "--attention", "nam", *FAST, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "no residual block it knows", "--nam-after",
                          "0.1 (8 channels, 16x16), 1.4 (16 channels, 8x8)")
    assert "after=[" not in err and not (tmp_path / "run").exists()
    # a candidate it names is what --nam-after takes
    code, _, err = run_cli(capsys, "train", "--model", f"{source}:net", "--attention", "nam", "--nam-after", "0.1,1.4", *FAST,
                           "--out", tmp_path / "run")
    assert code == 0, err
    assert sum(isinstance(m, namprune.NAM) for m in namprune.load(tmp_path / "run").modules()) == 2
    # --nam-after without NAM attention would attach nothing: one line that names the flag to add
    code, _, err = run_cli(capsys, "train", "--model", f"{source}:net", "--nam-after", "0.1,1.4", *FAST,
                           "--out", tmp_path / "plain")
    assert_one_line_error(code, err, "--nam-after", "--attention nam")
    assert not (tmp_path / "plain").exists()


def test_a_channel_shuffle_is_refused_by_prune_in_one_line(tmp_path, capsys):
    """torch-pruning's graph divided by zero on ShuffleNet's channel shuffle: 'internal error'."""
    torch.manual_seed(0)
    model = models.create("tv:shufflenet_v2_x0_5", num_classes=10, attention="none", input_size=32, in_channels=1)
    ckpt = save_digits_checkpoint(tmp_path / "shufflenet" / "model.pt", model)
    code, _, err = run_cli(capsys, "prune", ckpt, "--ratio", "0.3", "--out", tmp_path / "p")
    assert_one_line_error(code, err, "cannot prune ShuffleNetV2", "a view that regroups the channels (a channel shuffle")
    assert "internal error" not in err and not (tmp_path / "p").exists()


def test_a_constructor_without_num_classes_gets_its_classifier_resized(tmp_path, capsys):
    source = tmp_path / "plain.py"
    source.write_text("import torch.nn as nn\n\n\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), "
                      "nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000))\n")
    model = models.create(f"{source}:net", num_classes=10, input_size=16)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    assert "gives 1000 classes; its classifier '5' was replaced by a new one with 10 outputs" in capsys.readouterr().err
    with pytest.raises(namprune.NampruneError, match="defines no 'missing' at top level"):
        models.create(f"{source}:missing")
