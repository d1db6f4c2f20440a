import pickle

import pytest
import torch

import namprune
from namprune import NampruneError, models
from namprune.core import checkpoint

INFO = {"name": "fake", "num_classes": 10, "in_channels": 3, "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
        "classes": [str(i) for i in range(10)], "train_size": 1, "test_size": 1}


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "tv:mobilenet_v3_small"])
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model = models.create(name, num_classes=10, attention="nam", input_size=32).eval()
    # move the BatchNorm statistics away from their initial values
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    model.eval()
    path = checkpoint.save(tmp_path / "model.pt", model, INFO, metrics={"top1": 12.5}, config={"lr": 0.1})
    payload = torch.load(path, weights_only=True)  # the file is weights_only-safe as written
    assert payload["format"] == "namprune-checkpoint" and payload["arch"]["name"] == name
    assert payload["metrics"] == {"top1": 12.5}
    loaded = namprune.load(tmp_path)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind


def test_plain_state_dict_and_foreign_files_are_refused(tmp_path):
    model = models.create("resnet20")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(NampruneError, match="not a namprune checkpoint.*plain state_dict"):
        namprune.load(tmp_path / "sd.pt")
    torch.save({"epoch": 3, "arch": "x"}, tmp_path / "other.pt")
    with pytest.raises(NampruneError, match="another tool's file"):
        namprune.load(tmp_path / "other.pt")


def test_truncated_checkpoint(tmp_path):
    model = models.create("resnet20")
    path = checkpoint.save(tmp_path / "model.pt", model, INFO)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NampruneError, match="truncated or corrupt"):
        namprune.load(path)


class _Creates:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "namprune-checkpoint", "payload": _Creates(str(target))}, f)
    with pytest.raises(NampruneError, match="refused"):
        namprune.load(tmp_path / "evil.pt")
    assert not target.exists()


def test_missing_checkpoint():
    with pytest.raises(NampruneError, match="no checkpoint at"):
        namprune.load("/nonexistent/run")
