"""Mixed precision in the engine: bf16 autocast and fp16 with its loss scaler train like fp32
on CPU, the sparsity penalty included, and a non-finite loss still stops the run."""

import pytest
import torch

from model_helpers import small_nam_net
from namprune import NampruneError, TrainConfig, fit
from namprune.core.store.records import TrainSummary
from tiny_data import tiny_digits

# Relative distance allowed between an AMP run's weight updates and fp32's over one epoch
# (eight steps). Measured: bf16 about 1e-3, fp16 about 2e-4 (the rounding of the low precision).
TOLERANCE = 0.01


@pytest.fixture(scope="module")
def data():
    return tiny_digits(train=256, test=128)


def _train(data, amp: str, sparsity: float = 1e-2, **settings) -> tuple[torch.Tensor, TrainSummary]:
    """The change of every weight over a run, and the run's summary."""
    model = small_nam_net()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 32, "lr": 0.1, "schedule": "constant", **settings},
                      amp=amp, sparsity=sparsity, device="cpu")
    summary = fit(model, data, cfg, progress=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()]) - before, summary


def _distance(update: torch.Tensor, reference: torch.Tensor) -> float:
    return float((update - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def fp32(data):
    return _train(data, "off")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_takes_the_steps_of_fp32(data, fp32, amp):
    update, summary = _train(data, amp)
    reference, reference_summary = fp32
    # the loss scale is undone before the optimizer steps, and the penalty is scaled with the
    # task loss (a penalty left out of the scaled loss would be divided by the scale, 2^16)
    assert _distance(update, reference) < TOLERANCE
    assert summary.final["penalty"] == pytest.approx(reference_summary.final["penalty"], rel=1e-3)
    # the comparison can fail: without the penalty, the same steps end far from fp32's
    assert _distance(_train(data, "off", sparsity=0)[0], reference) > 10 * TOLERANCE


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_learns(data, amp):
    update, summary = _train(data, amp, epochs=5, lr=0.3, schedule="onecycle")
    assert torch.isfinite(update).all()
    # far above chance (10 %) after five epochs: about 80 % measured, as in fp32
    assert summary.final["test_top1"] > 60 and summary.final["train_loss"] < 1.0


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_non_finite_loss_stops_mixed_precision_training(data, amp):
    """fp16's loss scaler alone would skip a step whose gradients are not finite and go on;
    the engine stops at that step and names it."""
    images, labels = next(iter(data.train))
    poisoned = images.clone()
    poisoned[3] = float("nan")
    batches = [(images, labels), (poisoned, labels), (images, labels)]
    with pytest.raises(NampruneError, match=r"^training diverged: the loss is nan at epoch 1, step 2;"):
        fit(small_nam_net(), batches, TrainConfig(epochs=1, amp=amp, device="cpu"), progress=False)
