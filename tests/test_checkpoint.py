import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import namprune
from cli_helpers import assert_one_line_error, run_cli
from namprune import NampruneError, models
from namprune.core.store import checkpoint

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


class _WritesAFile:
    """Unpickling this object opens (creates) a file: code a checkpoint must never run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _truncated(keep):
    """Makes a real checkpoint file cut to its first ``keep(size)`` bytes."""
    def make(path):
        data = checkpoint.save(path, models.create("resnet20"), INFO).read_bytes()
        path.write_bytes(data[: keep(len(data))])
    return make


def _code_running_pickle(path):
    with open(path, "wb") as f:
        pickle.dump({"format": "namprune-checkpoint", "state_dict": _WritesAFile(str(path.with_name("pwned")))}, f,
                    protocol=2)


@pytest.mark.parametrize("make,fragments", [
    (lambda p: p.write_bytes(b""), ["truncated or corrupt"]),
    (_truncated(lambda size: size // 3), ["truncated or corrupt"]),
    (_truncated(lambda size: size - 100), ["truncated or corrupt"]),
    (lambda p: torch.save(models.create("resnet20").state_dict(), p), ["not a namprune checkpoint", "plain state_dict"]),
    (lambda p: torch.save({"model": "resnet", "epoch": 3}, p), ["another tool's file"]),
    (lambda p: p.write_text("not a checkpoint at all"), ["refused"]),
    (_code_running_pickle, ["refused", "could run code", "nothing in it was run"]),
], ids=["empty", "cut-to-a-third", "last-100-bytes-cut", "plain-state-dict", "other-tool", "text", "pickled-code"])
def test_bad_checkpoints_are_refused_in_python_and_on_the_command_line(tmp_path, capsys, make, fragments):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(NampruneError) as caught:
        namprune.load(path)
    assert all(fragment in str(caught.value) for fragment in fragments), caught.value
    for command in (["info"], ["eval"], ["rank"], ["prune", "--ratio", "0.3", "--out", tmp_path / "p"]):
        code, _, err = run_cli(capsys, command[0], path, *command[1:])
        assert_one_line_error(code, err, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no output, and no code of the file ran


def test_missing_checkpoint():
    with pytest.raises(NampruneError, match="no checkpoint at"):
        namprune.load("/nonexistent/run")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_give_only_the_clear_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        path.write_bytes(data)
        with pytest.raises(NampruneError):
            checkpoint.read(path)


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                       max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["format", "version", "arch", "state_dict", "data", "pruning_history", "x"]),
                       _values, max_size=6))
def test_random_checkpoint_documents_give_only_the_clear_error(document):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        torch.save({**document, "format": "namprune-checkpoint"} if document.get("format") else document, path)
        with pytest.raises(NampruneError):
            checkpoint.build(checkpoint.read(path))
