"""Mixed precision: loss scaling must not weaken the sparsity penalty, and fp16 / bf16 training
runs through the engine (torch supports both autocast modes and the GradScaler on CPU)."""

import torch
import torch.nn.functional as F

from namprune import TrainConfig, fit, models
from namprune.core.sparsity import SparsityPenalty, penalized_parameters
from tiny_data import tiny_digits


def _model():
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
    with torch.no_grad():
        for gamma in penalized_parameters(model):
            gamma.uniform_(-1, 1)
    return model


def _penalty_grads(model, strength, scaler=None):
    """Gradients of the NAM scale factors from ``penalty`` alone, optionally through a GradScaler."""
    params = penalized_parameters(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad(set_to_none=True)
    reg = SparsityPenalty(model, strength)()
    if scaler is None:
        reg.backward()
    else:
        scaler.scale(reg).backward()
        assert not torch.equal(params[0].grad, strength * torch.sign(params[0].detach()))  # scaled
        scaler.unscale_(optimizer)
    return [p.grad.clone() for p in params]


def test_penalty_gradient_through_a_grad_scaler_equals_the_unscaled_one():
    model = _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    plain = _penalty_grads(model, 1e-4)
    scaled = _penalty_grads(model, 1e-4, scaler)
    for p, a, b in zip(penalized_parameters(model), plain, scaled):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(b, 1e-4 * torch.sign(p.detach()), rtol=0, atol=0)


def test_task_loss_plus_penalty_under_fp16_autocast_and_scaler_matches_fp32_gradients():
    model = _model()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    penalty = SparsityPenalty(model, 1e-2)
    gammas = penalized_parameters(model)

    def grad(scaler=None):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            loss = F.cross_entropy(model(x), y)
        total = loss + penalty()
        (total if scaler is None else scaler.scale(total)).backward()
        if scaler is not None:
            scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.1))
        return torch.cat([g.grad.flatten() for g in gammas])

    model.eval()  # running statistics stay put between the two passes
    fp32 = grad()
    fp16 = grad(torch.amp.GradScaler("cpu", init_scale=2.0**12))
    # fp16 rounding of the task part stays within 1e-4; a penalty weakened by the loss scale
    # (added to the scaled gradients, as the reference code's hook would be) would be off by ~1e-2
    torch.testing.assert_close(fp16, fp32, rtol=0, atol=1e-4)


def test_engine_trains_in_fp16_with_its_grad_scaler():
    data = tiny_digits(train=128, test=64)  # four steps: fp16 convolutions are slow on CPU
    model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
    before = model.fc.weight.detach().clone()
    summary = fit(model, data, TrainConfig(epochs=1, batch_size=32, lr=0.05, schedule="cosine", amp="fp16", device="cpu"),
                  progress=False)
    assert summary.final["penalty"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(before, model.fc.weight.detach())
