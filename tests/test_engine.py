import json

import pytest
import torch

import namprune
from namprune import NampruneError, TrainConfig, fit, load_data, models
from namprune.core.store import checkpoint
from namprune.core.training.loop import Divergence
from namprune.core.training.optim import build_optimizer, lr_factor

FAST = dict(batch_size=32, lr=0.1, schedule="cosine", weight_decay=5e-4)


def test_digits_training_reaches_90_percent_and_writes_every_epoch(tmp_path):
    data = load_data("digits", batch_size=32)
    model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
    summary = fit(model, data, TrainConfig(epochs=4, **FAST), tmp_path, progress=False)
    assert summary.final["test_top1"] >= 90.0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["penalty"] > 0 for r in rows] == [False, False, True, True]  # planned shrinking, from half the run
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["final"]["test_top1"] == summary.final["test_top1"]
    reloaded = namprune.load(tmp_path)
    assert torch.equal(reloaded.state_dict()["fc.weight"], model.state_dict()["fc.weight"])


def test_image_folder_slice_trains(cifar_slice, tmp_path):
    data = load_data("imagefolder", cifar_slice, batch_size=16)
    model = models.create("resnet20", num_classes=3, attention="nam", input_size=32)
    before = model.fc.weight.detach().clone()
    fit(model, data, TrainConfig(epochs=4, batch_size=16, lr=0.05, schedule="cosine"), tmp_path, progress=False)
    assert not torch.equal(before, model.fc.weight.detach())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert namprune.load(tmp_path).namprune_spec["num_classes"] == 3


def test_schedules():
    multistep = TrainConfig(epochs=200, schedule="multistep", milestones=[60, 120, 160], lr_decay=0.2)
    assert [lr_factor(multistep, e) for e in (0, 59, 60, 120, 199)] == pytest.approx([1, 1, 0.2, 0.04, 0.008])
    cosine = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1)
    assert lr_factor(cosine, 0) < 0.05 and lr_factor(cosine, 0.5) == pytest.approx(0.5, abs=0.02)
    assert lr_factor(cosine, 1) == 1.0 and lr_factor(cosine, 9.9) < 0.01
    onecycle = TrainConfig(epochs=10)  # the default: up for 30 % of the run, then down to nearly zero
    assert onecycle.schedule == "onecycle"
    assert lr_factor(onecycle, 0) == pytest.approx(1 / 25) and lr_factor(onecycle, 3) == pytest.approx(1)
    assert lr_factor(onecycle, 1.5) < lr_factor(onecycle, 2.9) and lr_factor(onecycle, 5) > lr_factor(onecycle, 8)
    assert lr_factor(onecycle, 10) < 1e-5


def test_the_learning_rate_moves_every_step(tmp_path):
    data = load_data("digits", batch_size=32)
    model = models.create("resnet20", num_classes=10, attention="none", input_size=16, in_channels=1)
    fit(model, data, TrainConfig(epochs=2, **FAST), tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # each row has the rate the epoch began with; per-step cosine: already halfway down after one of two epochs
    assert rows[0]["lr"] == pytest.approx(0.1) and rows[1]["lr"] == pytest.approx(0.05, rel=0.05)


def test_scale_factors_take_weight_decay_unless_bn_weight_decay_is_off():
    model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
    everything = build_optimizer(model, TrainConfig()).param_groups
    assert all(g["weight_decay"] == 5e-4 for g in everything)
    exempting = build_optimizer(model, TrainConfig(bn_weight_decay=False)).param_groups
    decayed = {id(p) for g in exempting if g["weight_decay"] > 0 for p in g["params"]}
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(id(m.weight) in decayed or id(m.bias) in decayed for m in norms)
    assert id(model.conv1.weight) in decayed


def test_distillation_pulls_the_student_toward_the_teacher():
    data = load_data("digits", batch_size=32)
    torch.manual_seed(0)
    teacher = models.create("resnet20", num_classes=10, attention="none", input_size=16, in_channels=1)
    fit(teacher, data, TrainConfig(epochs=3, **FAST), progress=False)
    agreement = {}  # students trained without planned shrinking: only the distillation differs
    for weight in (0.0, 1.0):
        torch.manual_seed(1)
        student = models.create("resnet20", num_classes=10, attention="none", input_size=16, in_channels=1)
        fit(student, data, TrainConfig(epochs=3, distill=weight, shrink_macs=0.0, **FAST), progress=False,
            teacher=teacher)
        with torch.no_grad():
            images = torch.cat([x for x, _ in data.test])
            soft = [torch.softmax(m.eval()(images), 1) for m in (student, teacher)]
        agreement[weight] = float((soft[0] - soft[1]).abs().sum(1).mean())
    assert agreement[1.0] < agreement[0.0], agreement  # closer to the teacher's predictions


@pytest.mark.parametrize("bad,match", [
    (dict(optimizer="lamb"), "unknown --optimizer"), (dict(epochs=0), "epochs"), (dict(lr=0), "learning rate"),
    (dict(schedule="step"), "unknown --schedule"), (dict(amp="fp8"), "amp"), (dict(warmup_epochs=5, epochs=5), "warmup"),
    (dict(sparsity_targets="every"), "unknown --sparsity-targets"), (dict(distill=1.5), "distillation weight"),
])
def test_config_validation(bad, match):
    with pytest.raises(NampruneError, match=match):
        TrainConfig(**bad)


def test_divergence_names_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path):
    data = load_data("digits", batch_size=32)
    model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
    steps = {"seen": 0}

    def poison_third_step_of_epoch_two(module, inputs, output):
        if module.training:
            steps["seen"] += 1
            if steps["seen"] == len(data.train) + 3:
                return output * float("nan")

    model.fc.register_forward_hook(poison_third_step_of_epoch_two)
    with pytest.raises(Divergence, match=r"epoch 2, step 3; lower the learning rate; the last good checkpoint \(epoch 1\) is kept"):
        fit(model, data, TrainConfig(epochs=3, batch_size=32, lr=0.05), tmp_path, progress=False)
    assert checkpoint.read(tmp_path / "model.pt")["metrics"]["epoch"] == 1
    assert Divergence.exit_code == 1
