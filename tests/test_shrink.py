"""Planned shrinking pulls exactly the channels a prune will remove, and training with it
leaves a model that pruning barely changes. torch-pruning's own regularizers plug into the
same training loop after each backward pass."""

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from cli_helpers import run_subprocess
from model_helpers import digits_model, random_batches
from tiny_data import tiny_digits
from namprune import TrainConfig, fit
from namprune.core.identity import classifier, example_input
from namprune.core.nam.shrink import SHRINK_TRAVEL, PlannedShrink, shrink_strength
from namprune.core.pruning.prune import prune
from namprune.core.settings import PruneConfig
from namprune.core.training.optim import lr_factor


@pytest.mark.parametrize("scope", ["global", "blocks"])
def test_a_model_whose_planned_channels_are_zero_prunes_without_changing_its_outputs(scope):
    model = digits_model("resnet20")
    calibration = random_batches(16)
    shrink = PlannedShrink(model, 0.5, 1.0, calibration, scope)
    assert shrink.active and shrink.channels > 0
    with torch.no_grad():
        for bn, idxs in shrink.targets:
            bn.weight[idxs] = 0
            bn.bias[idxs] = 0
    x = torch.randn(8, 1, 16, 16)
    before = model(x)
    pruned = copy.deepcopy(model)
    prune(pruned, PruneConfig(target_macs=0.5, scope=scope, recalibrate=False), calibration)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(pruned(x), before, rtol=1e-4, atol=1e-4)


def test_the_penalty_covers_the_planned_channels_and_no_others():
    model = digits_model("resnet20")
    shrink = PlannedShrink(model, 0.5, 0.01, random_batches(16))
    expected = 0.01 * sum((bn.weight[i].abs().sum() + bn.bias[i].abs().sum()).item() for bn, i in shrink.targets)
    assert shrink().item() == pytest.approx(expected, rel=1e-5)
    every = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert 0 < sum(len(i) for _, i in shrink.targets) < every


def test_the_strength_lets_a_scale_factor_travel_the_planned_distance_whatever_the_run_length():
    short, long = TrainConfig(epochs=4), TrainConfig(epochs=40)
    for cfg, steps in ((short, 10), (long, 10), (short, 400)):
        strength = shrink_strength(cfg, steps, cfg.epochs // 2, lr_factor)
        lr_sum = sum(cfg.lr * lr_factor(cfg, s / steps) for s in range(cfg.epochs // 2 * steps, cfg.epochs * steps))
        assert strength * lr_sum / (1 - cfg.momentum) == pytest.approx(SHRINK_TRAVEL)


def test_training_with_planned_shrinking_empties_the_channels_pruning_then_removes():
    data = tiny_digits(train=256, test=64)
    torch.manual_seed(0)
    model = digits_model("resnet20")
    cfg = TrainConfig(epochs=4, batch_size=32, shrink_macs=0.5, shrink_start=0.25, amp="off")
    fit(model, data, cfg, progress=False)
    shrink = PlannedShrink(model.eval(), 0.5, 1.0, data.train)
    planned = torch.cat([bn.weight[i].abs() for bn, i in shrink.targets])
    kept = torch.cat([bn.weight[[c for c in range(bn.num_features) if c not in set(i.tolist())]].abs()
                      for bn, i in shrink.targets])
    assert planned.mean() < 0.1 * kept.mean(), (planned.mean(), kept.mean())


def test_torch_prunings_regularizer_runs_after_each_backward_pass():
    data = tiny_digits()  # two steps of 32 images
    torch.manual_seed(0)
    plain, regularized = digits_model("resnet20", attention="none"), digits_model("resnet20", attention="none")
    pruner = tp.pruner.BNScalePruner(regularized, example_input(regularized), tp.importance.BNScaleImportance(),
                                     reg=0.05, ignored_layers=[classifier(regularized)])
    # plain SGD at a constant rate: each step moves a scale factor by a further lr * reg * sign
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, schedule="constant", momentum=0.0, nesterov=False,
                      weight_decay=0.0, sparsity=0.0, shrink_macs=0.0, amp="off")
    signs = [m.weight.detach().sign() for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    fit(plain, data, cfg, progress=False)
    fit(regularized, data, cfg, progress=False, after_backward=pruner.regularize)
    pulled = torch.cat([((p.weight - r.weight) * s).detach().flatten() for p, r, s in zip(
        (m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)),
        (m for m in regularized.modules() if isinstance(m, nn.BatchNorm2d)), signs)])
    assert pulled.median().item() == pytest.approx(2 * 0.1 * 0.05, rel=0.2)


def test_shrinking_planned_in_blocks_from_the_command_line_then_pruned_in_blocks(tmp_path):
    """`train --shrink-scope blocks` records the allocation it planned with, and `prune --scope
    blocks` removes whole multiples of 8 to about half the MACs (docs/cli.md)."""
    run, pruned = tmp_path / "run", tmp_path / "pruned"
    proc = run_subprocess("train", "--epochs", "2", "-b", "32", "--shrink-scope", "blocks", "--out", run, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "summary.json").read_text())["config"]["shrink_scope"] == "blocks"
    proc = run_subprocess("prune", run, "--scope", "blocks", "--out", pruned, "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((pruned / "report.json").read_text())
    assert report["scope"] == "blocks" and report["target_macs"] == 0.5  # the amount shrinking planned for
    assert abs(report["macs_kept"] - 0.5) <= 0.02
    assert all(layer["after"] % 8 == 0 for layer in report["layers"] if layer["after"] != layer["before"])
