"""The engine's fast paths compute what the plain ones do: torch.compile, and the divergence
check that looks at the device only now and then."""

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

import namprune
from model_helpers import small_nam_net
from namprune import TrainConfig, fit, load_data, models
from namprune.core.store import checkpoint
from namprune.core.training.loop import Divergence, DivergenceWatch
from tiny_data import tiny_digits


def test_compiled_training_matches_eager_training():
    data = tiny_digits()
    # a uniform penalty: the planned one needs channels to spare beyond the width multiple (8)
    cfg = dict(epochs=1, batch_size=32, lr=0.05, schedule="constant", sparsity=1e-3, device="cpu")
    eager, compiled = small_nam_net(), small_nam_net()  # small enough to compile quickly
    fit(eager, data, TrainConfig(**cfg), progress=False)
    counters.clear()
    summary = fit(compiled, data, TrainConfig(**cfg, compile=True), progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did capture and compile the model
    assert type(compiled) is nn.Sequential  # trained in place, handed back uncompiled
    assert summary.final["penalty"] > 0
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)  # weights and running statistics


def test_divergence_is_reported_at_its_first_step_even_when_checked_later():
    watch = DivergenceWatch(torch.device("cpu"))
    for step, loss in enumerate([2.3, 2.1, float("nan"), float("inf"), 1.0]):
        watch.record(torch.tensor(loss), step)
    with pytest.raises(Divergence, match=r"the loss is nan at epoch 4, step 3$"):
        watch.check(epoch=3)


def test_checks_within_an_epoch_pass_finite_losses_and_catch_a_later_bad_one():
    watch = DivergenceWatch(torch.device("cpu"))
    for step, loss in enumerate([2.3, 1e30, -0.5, 0.0]):  # huge or negative, but finite: not a divergence
        watch.record(torch.tensor(loss), step)
    watch.check(epoch=0)  # on CUDA the engine checks every few steps of an epoch: this one passes
    watch.record(torch.tensor(float("-inf")), 4)
    watch.record(torch.tensor(1.0), 5)
    with pytest.raises(Divergence, match=r"the loss is -inf at epoch 1, step 5$"):
        watch.check(epoch=0)


def test_a_compiled_model_saves_as_the_plain_model(tmp_path):
    model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
    checkpoint.save(tmp_path / "model.pt", torch.compile(model), load_data("digits", batch_size=32).info.as_dict())
    reloaded = namprune.load(tmp_path)
    assert reloaded.state_dict().keys() == model.state_dict().keys()  # no "_orig_mod." prefixes
    torch.testing.assert_close(reloaded.state_dict(), model.state_dict(), rtol=0, atol=0)
