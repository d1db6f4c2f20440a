import copy
import json
import math

import pytest
import torch

import namprune
from namprune import TrainConfig, evaluate, fit, load_data, models
from namprune.app.stages import finetune_pruned
from namprune.core.deploy.measure import count_macs, count_params
from namprune.core.pruning.calibrate import recalibrate_batchnorm
from namprune.core.pruning.prune import layer_widths, prune
from namprune.core.pruning.saliency import rank_model
from namprune.core.settings import FinetuneSettings, PruneConfig
from namprune.core.store import checkpoint

from model_helpers import random_batches

ARCHITECTURES = [("resnet20", "nam", "nam"), ("resnet56", "nam", "nam"), ("resnet18", "nam", "nam"),
                 ("resnet34", "nam-channel", "nam"), ("resnet50", "nam", "nam"), ("mobilenetv2", "nam", "nam"),
                 ("tv:resnet18", "nam", "nam"), ("tv:resnet50", "nam", "nam"), ("tv:mobilenet_v2", "nam", "nam"),
                 ("tv:mobilenet_v3_small", "nam", "nam"), ("resnet20", "none", "slim"), ("mobilenetv2", "none", "l1"),
                 ("tv:resnet18", "none", "slim"), ("resnet56", "none", "random")]


def _calibration(size, channels=3, batches=2, seed=0):
    """Random images of the built-in models' three channels."""
    return random_batches(size, channels, batches, seed)


def _scramble_scales(model, seed=0):
    """Give every BatchNorm distinct scale factors, as training would, so rankings are not all ties."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2)


@pytest.mark.parametrize("name,attention,importance", ARCHITECTURES)
def test_every_architecture_prunes_and_still_trains(name, attention, importance):
    size = 64 if name.startswith("tv:") else 32
    model = models.create(name, num_classes=10, attention=attention, input_size=size)
    _scramble_scales(model)
    params, macs = count_params(model), count_macs(model)
    before = layer_widths(model)
    # round_to=1: the ratio itself is checked, not the default widths (multiples of 8)
    result = prune(model, PruneConfig(ratio=0.3, importance=importance, max_layer_ratio=0.8, round_to=1),
                   _calibration(size))
    assert result.ratio == pytest.approx(0.3, abs=0.01)
    assert count_params(model) < params and count_macs(model) < macs
    after = layer_widths(model)
    assert all(after[n] >= math.ceil(before[n] * 0.2) for n in before)  # the per-layer floor
    assert after[[n for n in after][-1]] == 10  # the classifier keeps every class
    model.train()
    out = model(torch.randn(2, 3, size, size))
    out.sum().backward()
    assert out.shape == (2, 10)


@pytest.fixture(scope="module")
def sparse_digits(tmp_path_factory):
    """ResNet-20 with channel NAM, sparse-trained on digits (L1 on every BatchNorm scale)."""
    torch.manual_seed(0)
    data = load_data("digits", batch_size=32)
    model = models.create("resnet20", num_classes=10, attention="nam-channel", input_size=16, in_channels=1)
    out = tmp_path_factory.mktemp("sparse") / "run"
    fit(model, data, TrainConfig(epochs=12, batch_size=32, lr=0.1, schedule="cosine", sparsity=0.01,
                                 sparsity_targets="all"), out, progress=False)
    return model.eval(), data, out


def test_nam_ranking_keeps_far_more_accuracy_than_random(sparse_digits):
    model, data, _ = sparse_digits
    base = evaluate(model, data.test)["top1"]
    accuracy = {}
    for importance in ("nam", "random"):
        pruned = copy.deepcopy(model)
        prune(pruned, PruneConfig(ratio=0.5, importance=importance, recalibrate=False), data.calibration)
        accuracy[importance] = evaluate(pruned, data.test)["top1"]
    assert base > 95
    assert accuracy["random"] < 30, accuracy  # chance is 10 %
    assert accuracy["nam"] > accuracy["random"] + 35, accuracy


def test_recalibration_raises_accuracy_right_after_pruning(sparse_digits):
    model, data, _ = sparse_digits
    accuracy = {}
    for recalibrate in (False, True):
        pruned = copy.deepcopy(model)
        result = prune(pruned, PruneConfig(ratio=None, target_macs=0.4, importance="random", recalibrate=recalibrate),
                       data.calibration)
        assert result.recalibrated == (30 if recalibrate else 0)  # 21 BatchNorms and 9 channel NAMs
        accuracy[recalibrate] = evaluate(pruned, data.test)["top1"]
    assert accuracy[True] > accuracy[False] + 10, accuracy
    # the model as it was between pruning and recalibration, measured inside one prune
    pruned = copy.deepcopy(model)
    result = prune(pruned, PruneConfig(ratio=None, target_macs=0.4, importance="random"), data.calibration,
                   before_recalibration=lambda m: evaluate(m, data.test))
    assert result.uncalibrated["top1"] == accuracy[False]
    assert evaluate(pruned, data.test)["top1"] == accuracy[True]


def test_batchnorm_is_re_estimated_on_the_recalibration_batches_when_given():
    model = models.create("resnet20", num_classes=10, attention="none", input_size=16, in_channels=1)
    scored, other = random_batches(16, seed=1), random_batches(16, seed=2)
    cfg = PruneConfig(ratio=0.3, importance="l1")
    by_default, separately = copy.deepcopy(model), copy.deepcopy(model)
    prune(by_default, cfg, scored)
    prune(separately, cfg, scored, recalibration=other)
    assert layer_widths(by_default) == layer_widths(separately)  # the same channels went
    expected = copy.deepcopy(separately)
    recalibrate_batchnorm(expected, other)
    means = [[m.running_mean for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
             for net in (separately, expected, by_default)]
    assert all(torch.equal(a, b) for a, b in zip(means[0], means[1]))  # re-estimated on `other`
    assert not any(torch.allclose(a, b) for a, b in zip(means[0], means[2]))  # not on the scored batches


def test_sparse_model_is_ready_to_prune(sparse_digits):
    model, data, _ = sparse_digits
    ranking = rank_model(model, calibration=data.calibration)
    assert ranking.near_zero() > 0.2  # the penalty silenced many channels
    assert 0.2 < ranking.largest_safe_ratio() < 1
    assert {g.source for g in ranking.groups} == {"carried"}
    lowest = ranking.lowest(5)
    assert [score for *_, score in lowest] == sorted(score for *_, score in lowest)


def test_nam_scores_are_shares_of_what_the_reading_layers_receive(sparse_digits):
    model, data, _ = sparse_digits
    ranking = rank_model(model, calibration=data.calibration)  # auto: nam, on a model with NAM attention
    assert ranking.importance == "nam" and ranking.normalization == "none"
    readers = {"layers.0.0.conv1": 1, "conv1": 5, "layers.1.0.shortcut.0": 4, "layers.2.0.shortcut.0": 3}
    groups = {group.name: group for group in ranking.groups}
    assert set(readers) <= set(groups)
    for name, count in readers.items():
        # every reading layer's input comes whole from one group in a ResNet: the squared scores
        # (shares of each reader's input signal) add up to the number of readers
        assert float(groups[name].scores.pow(2).sum()) == pytest.approx(count, rel=1e-4), name
    nam_w = rank_model(model, "nam-w")
    gated = [group for group in nam_w.groups if group.source == "nam-w"]
    assert len(gated) == 3  # the three residual streams NAM gates; the blocks' inner groups score by BatchNorm
    for group in gated:  # the mean of NAM's w over the group's NAMs: sums to 1
        assert float(group.scores.sum()) == pytest.approx(1.0, abs=1e-4), group.name
    assert rank_model(model, "slim").normalization == "none"
    l1 = rank_model(model, "l1")
    assert l1.normalization == "mean"  # width-invariant: every group's scores average to one
    assert all(float(g.scores.mean()) == pytest.approx(1.0, abs=1e-4) for g in l1.groups)
    assert rank_model(model, "l1", "sum").normalization == "sum"
    with pytest.raises(namprune.NampruneError, match="unknown normalization 'median'"):
        rank_model(model, "nam", "median")
    with pytest.raises(namprune.NampruneError, match="takes no normalization"):
        rank_model(model, "nam", "mean")
    with pytest.raises(namprune.NampruneError, match="calibration images"):
        rank_model(model, "taylor")


def test_a_fresh_model_is_not_ranked_by_layer_width():
    """Every scale factor equal: no group may look far less important merely for being wide.
    NAM's w alone ranks a 64-wide stream 64x below a 16-wide inner group."""
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, attention="nam", input_size=32).eval()
    medians = {}
    for importance in ("nam", "nam-w"):
        ranking = rank_model(model, importance, calibration=_calibration(32, batches=4))
        medians[importance] = [float(g.scores.median()) for g in ranking.groups]
    assert max(medians["nam"]) / min(medians["nam"]) < 8, medians["nam"]
    assert max(medians["nam-w"]) / min(medians["nam-w"]) > 32  # the paper's ranking, shown failing


def test_floor_holds_when_the_ranking_would_empty_layers(sparse_digits):
    model = copy.deepcopy(sparse_digits[0])
    before = layer_widths(model)
    prune(model, PruneConfig(ratio=0.6, max_layer_ratio=0.5), sparse_digits[1].calibration)
    after = layer_widths(model)
    assert all(after[n] >= math.ceil(before[n] / 2) for n in before), {n: (before[n], after[n]) for n in before}


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
@pytest.mark.parametrize("target", [0.5, 0.3])
@pytest.mark.parametrize("importance", ["nam", "slim"])
def test_target_macs_lands_within_two_percent_of_the_macs(name, target, importance):
    model = models.create(name, num_classes=10, attention="nam", input_size=16)
    _scramble_scales(model)
    base = count_macs(model)
    prune(model, PruneConfig(ratio=None, target_macs=target, importance=importance), _calibration(16))
    assert count_macs(model) / base == pytest.approx(target, abs=0.02)


def test_macs_allocation_spends_score_per_mac():
    """Two groups with equal scores: the one whose channels cost more MACs loses more of them."""
    from namprune.core.pruning.prune import allocate_macs
    from namprune.core.pruning.saliency import GroupSaliency

    cfg = PruneConfig(ratio=None, target_macs=0.5, round_to=1, cost_exponent=0.5)
    groups = [GroupSaliency("cheap", [], torch.ones(10), "test"), GroupSaliency("costly", [], torch.ones(10), "test")]
    removed = allocate_macs(groups, [1.0, 4.0], cfg, macs_to_remove=20)
    assert removed == [0, 5]  # 5 costly channels save the 20 MACs; cheap ones would have taken 20 channels
    scores = [GroupSaliency("weak", [], torch.full((10,), 0.1), "test"), GroupSaliency("strong", [], torch.ones(10), "test")]
    assert allocate_macs(scores, [1.0, 2.0], cfg, 4) == [4, 0]


def test_cost_exponent_zero_takes_channels_by_score_alone():
    """q = 0: the lowest scores go first whatever they cost, until the MACs are saved."""
    from namprune.core.pruning.prune import allocate_macs
    from namprune.core.pruning.saliency import GroupSaliency

    groups = [GroupSaliency("cheap", [], torch.linspace(0.1, 1.0, 10), "test"),
              GroupSaliency("costly", [], torch.linspace(0.15, 1.05, 10), "test")]
    by_score = PruneConfig(ratio=None, target_macs=0.5, round_to=1, cost_exponent=0.0)
    assert allocate_macs(groups, [1.0, 4.0], by_score, macs_to_remove=20) == [4, 4]  # 4 + 4 * 4 MACs
    by_cost = by_score.with_(cost_exponent=1.0)
    assert allocate_macs(groups, [1.0, 4.0], by_cost, macs_to_remove=20)[1] == 5  # only the costly layer loses


def test_blocks_take_a_multiple_at_a_time_from_the_group_with_the_weakest_remaining_channel():
    """A group whose channels all carry about the same signal keeps its width while a group
    with a weak tail loses it a multiple at a time; widths stay multiples, floors hold."""
    from namprune.core.pruning.prune import allocate_macs
    from namprune.core.pruning.saliency import GroupSaliency

    even = GroupSaliency("stream", [], torch.linspace(0.8, 1.2, 32), "test")
    tailed = GroupSaliency("block", [], torch.cat([torch.linspace(0.01, 0.2, 8), torch.linspace(0.95, 1.25, 24)]), "test")
    cfg = PruneConfig(ratio=None, target_macs=0.5, scope="blocks", round_to=8, cost_exponent=0.0, max_layer_ratio=0.75)
    assert allocate_macs([even, tailed], [1.0, 1.0], cfg, macs_to_remove=8) == [0, 8]
    # its tail gone, the block's weakest is 0.95 of a mean of 1.1, above the stream's 0.8 of 1.0
    assert allocate_macs([even, tailed], [1.0, 1.0], cfg, macs_to_remove=16) == [8, 8]
    removed = allocate_macs([even, tailed], [1.0, 1.0], cfg, macs_to_remove=1000)
    assert removed == [24, 24]  # both at their floor, a quarter of 32, and no further
    odd = GroupSaliency("odd", [], torch.linspace(0.1, 1.0, 20), "test")
    assert allocate_macs([odd], [1.0], cfg, macs_to_remove=1) == [4]  # 20 -> 16, the next multiple down


def test_a_macs_target_in_blocks_keeps_at_most_its_fraction_when_the_steps_allow():
    """In blocks the plan lands at or under the target, within the tolerance."""
    for scope, seed in [("blocks", 0), ("blocks", 1), ("blocks", 3)]:
        torch.manual_seed(seed)
        model = models.create("resnet20", num_classes=10, attention="none", input_size=32)
        _scramble_scales(model, seed)
        base = count_macs(model)
        result = prune(model, PruneConfig(ratio=None, target_macs=0.5, scope=scope, round_to=8), _calibration(32))
        kept = count_macs(model) / base
        assert 0.48 <= kept <= 0.5, (scope, seed, kept)
        assert result.config.round_to == 8 and all(w % 8 == 0 for w in layer_widths(model).values() if w != 10)


@pytest.mark.parametrize("attention, importance, normalization, exponent", [
    ("nam", "nam", "none", 0.5), ("none", "l1", "mean", 0.0)])
def test_auto_importance_follows_the_model_and_the_report_says_which(attention, importance, normalization, exponent):
    """No --importance: NAM's score for a model with NAM attention, a global L1 ranking for one without."""
    model = models.create("resnet20", num_classes=10, attention=attention, input_size=16).eval()
    result = prune(model, PruneConfig(ratio=None, target_macs=0.5), _calibration(16))
    assert (result.config.importance, result.config.cost_exponent) == (importance, exponent)
    assert {g.source for g in result.groups} == {"carried" if importance == "nam" else "l1"}
    assert rank_model(model, calibration=_calibration(16)).normalization == normalization


def test_unreachable_macs_target_is_refused():
    model = models.create("resnet20", attention="nam", input_size=16)
    with pytest.raises(namprune.NampruneError, match="cannot be reached"):
        prune(model, PruneConfig(ratio=None, target_macs=0.01, max_layer_ratio=0.5), _calibration(16))


def test_round_to_and_local_scope():
    model = models.create("resnet56", attention="nam", input_size=32)
    _scramble_scales(model)
    before = layer_widths(model)
    prune(model, PruneConfig(ratio=0.4, round_to=8), _calibration(32))
    changed = {n: w for n, w in layer_widths(model).items() if w != before[n]}
    assert changed and all(w % 8 == 0 for w in changed.values())

    model = models.create("resnet20", attention="nam", input_size=32)
    _scramble_scales(model)
    prune(model, PruneConfig(ratio=0.25, scope="local", round_to=1), _calibration(32))
    widths = layer_widths(model)
    assert widths["layers.0.0.conv1"] == 12 and widths["layers.2.0.conv1"] == 48  # a quarter of 16 and of 64


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "tv:mobilenet_v3_small"])
def test_pruned_checkpoint_reloads_identically_and_prunes_again(tmp_path, name):
    size = 64 if name.startswith("tv:") else 32
    model = models.create(name, num_classes=10, attention="nam", input_size=size)
    _scramble_scales(model)
    x = torch.randn(3, 3, size, size)
    info = {"name": "fake", "num_classes": 10, "in_channels": 3, "image_size": size, "mean": [0] * 3, "std": [1] * 3,
            "classes": list(map(str, range(10))), "train_size": 1, "test_size": 1}
    for round_ in (1, 2):
        prune(model, PruneConfig(ratio=0.3, seed=round_), _calibration(size, seed=round_))
        model.eval()
        path = checkpoint.save(tmp_path / f"round{round_}.pt", model, info)
        payload = torch.load(path, weights_only=True)
        assert len(payload["pruning_history"]) == len(model.namprune_history)
        reloaded = namprune.load(path)
        assert torch.equal(reloaded(x), model(x))
        assert layer_widths(reloaded) == layer_widths(model)
        model = reloaded  # the second round prunes the reloaded model


def test_prune_cli_report_and_reload(sparse_digits, tmp_path, capsys):
    from cli_helpers import run_cli

    _, _, run = sparse_digits
    out = tmp_path / "pruned"
    code, stdout, err = run_cli(capsys, "prune", run, "--ratio", "0.5", "--round-to", "1", "--finetune-epochs", "2",
                                "--out", out, "-q")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    for key in ("ratio", "params_before", "params_after", "macs_before", "macs_after", "top1_before", "top1_pruned",
                "top1_pruned_uncalibrated", "top1_finetuned", "layers"):
        assert key in report
    assert report["ratio"] == pytest.approx(0.5, abs=0.01)
    assert report["params_after"] < report["params_before"] and report["macs_after"] < report["macs_before"]
    assert report["top1_finetuned"] > 85
    assert report["recalibrated"] and report["top1_pruned_uncalibrated"] <= 100
    assert {"name", "before", "after"} <= set(report["layers"][0])
    assert "before" in stdout and "fine-tuned" in stdout and "BN recalibrated" in stdout
    assert report["recalibrated"] and report["calibration_images"] == 1024
    reloaded = namprune.load(out)
    assert count_params(reloaded) == report["params_after"]
    data = load_data("digits", batch_size=64)
    assert evaluate(reloaded, data.test)["top1"] == pytest.approx(report["top1_finetuned"], abs=1e-6)


def test_a_prune_without_fine_tuning_epochs_fine_tunes_nothing(sparse_digits, tmp_path, capsys):
    """--finetune-epochs 0 (the default) is no fine-tuning at all, not one epoch of it."""
    from cli_helpers import run_cli

    _, _, run = sparse_digits
    out = tmp_path / "pruned"
    code, stdout, err = run_cli(capsys, "prune", run, "--ratio", "0.3", "--finetune-epochs", "0", "--out", out, "-q")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["finetune_epochs"] == 0 and report["top1_finetuned"] is None
    assert "fine-tuned" not in stdout and not (out / "metrics.jsonl").exists()
    assert torch.load(out / "model.pt", weights_only=True)["config"]["finetune"] is None
    assert namprune.load(out)  # the pruned model is saved as pruned, ready to fine-tune later


def test_rank_cli_json(sparse_digits, tmp_path, capsys):
    from cli_helpers import run_cli

    code, stdout, _ = run_cli(capsys, "rank", sparse_digits[2], "--top", "3", "--json", tmp_path / "rank.json")
    assert code == 0 and "near zero" in stdout
    ranking = json.loads((tmp_path / "rank.json").read_text())
    assert ranking["channels"] == sum(g["width"] for g in ranking["groups"]) == 448
    assert 0 < ranking["largest_safe_ratio"] < 1


@pytest.mark.parametrize("args,fragment", [
    (["--ratio", "1.5"], "--ratio must be in (0, 1)"),
    (["--ratio", "0"], "--ratio must be in (0, 1)"),
    (["--ratio", "0.3", "--target-macs", "0.5"], "exactly one"),
    (["--target-macs", "0.01", "--max-layer-ratio", "0.5"], "cannot be reached"),
    (["--importance", "fisher"], "unknown --importance 'fisher'"),
    (["--scope", "layer"], "unknown --scope 'layer'"),
])
def test_prune_bad_input_writes_nothing(sparse_digits, tmp_path, capsys, args, fragment):
    from cli_helpers import assert_one_line_error, run_cli

    code, _, err = run_cli(capsys, "prune", sparse_digits[2], *args, "--out", tmp_path / "p")
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_prune_refuses_a_foreign_checkpoint(tmp_path, capsys):
    from cli_helpers import assert_one_line_error, run_cli

    torch.save(models.create("resnet20").state_dict(), tmp_path / "plain.pt")
    code, _, err = run_cli(capsys, "prune", tmp_path / "plain.pt", "--ratio", "0.3", "--out", tmp_path / "p")
    assert_one_line_error(code, err, "not a namprune checkpoint")
    assert not (tmp_path / "p").exists()


def test_fine_tuning_a_pruned_run_takes_at_least_one_epoch(tmp_path):
    """Zero epochs is refused before anything is read or written, not turned into one."""
    with pytest.raises(namprune.NampruneError, match="at least one epoch, got 0"):
        finetune_pruned(tmp_path / "no-such-run", tmp_path / "out", FinetuneSettings(epochs=0))
    assert not (tmp_path / "out").exists()
