"""--target-latency: its validation, its record, and the measured cost model's plumbing.

How closely the target is met is a measurement on a quiet machine, not a test:
benchmarks/latency_target.py (BENCHMARKS.md, "Pruning to a latency target")."""

import copy

import pytest

from cli_helpers import assert_one_line_error, run_cli
from model_helpers import digits_model, random_batches, save_digits_checkpoint
from namprune.app.recipes import PruneSection
from namprune.core.pruning import latency_cost
from namprune.core.pruning.cost import channel_macs, count_macs
from namprune.core.pruning.graph import dependency_graph
from namprune.core.pruning.latency_cost import MIN_SHARE, LatencyMeter, group_costs, median_and_error
from namprune.core.pruning.prune import ROUND_TO_CANDIDATES, _plan, prune
from namprune.core.pruning.saliency import make_importance, score_groups
from namprune.core.settings import MACS_TOLERANCE, PruneConfig


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_digits_checkpoint(tmp_path_factory.mktemp("lat") / "model.pt", digits_model("resnet20", "nam", 16))


@pytest.mark.parametrize("args, message", [
    (["--target-latency", "0"], "--target-latency must be in (0, 1)"),
    (["--target-latency", "1.5"], "--target-latency must be in (0, 1)"),
    (["--target-latency", "0.6", "--latency-runtime", "tensorrt"], "unknown --latency-runtime 'tensorrt'"),
    (["--target-latency", "0.6", "--latency-batch", "0"], "--latency-batch must be at least 1, got 0"),
    (["--target-latency", "0.6", "--latency-threads", "0"], "--latency-threads must be at least 1"),
    (["--target-latency", "0.6", "--target-macs", "0.5"], "exactly one of --ratio, --target-macs and --target-latency"),
])
def test_bad_latency_targets_are_one_line_and_exit_2_before_any_work(ckpt, tmp_path, capsys, args, message):
    code, _, err = run_cli(capsys, "prune", ckpt, *args, "--out", tmp_path / "p")
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "p").exists()


def test_recipes_take_a_latency_target_alone():
    assert PruneSection(target_latency=0.6).ratio is None
    with pytest.raises(ValueError, match="exactly one of --ratio, --target-macs and --target-latency"):
        PruneSection(target_latency=0.6, target_macs=0.5)


def test_median_and_error_of_rounds():
    median, error = median_and_error([1.0, 1.0, 1.0, 1.0])
    assert (median, error) == (1.0, 0.0)
    median, error = median_and_error([0.9, 1.0, 1.1, 1.0, 5.0])  # one stalled block moves neither much
    assert median == 1.0 and error == pytest.approx(1.858 * 0.1 / 5 ** 0.5 / 1.0)


def test_group_costs_share_what_half_a_group_saves_over_its_channels():
    """With the fraction of MACs kept standing in for a timing (deterministic), each group's
    cost is what removing half of it saved per channel, never under the MACs floor."""
    model = digits_model("resnet20", "nam", 16)
    graph = dependency_graph(model)
    ranked = score_groups(model, graph, make_importance("nam", calibration=random_batches(16), model=model))
    groups = [g for g, _ in ranked]
    base = count_macs(model)
    macs = channel_macs(model, groups)
    probed = []

    def prune_copy(copy_, index, count):
        probed.append((index, count))
        removed = [count if i == index else 0 for i in range(len(ranked))]
        return _plan(model, ranked, removed).apply(copy_)

    costs = group_costs(model, [s for _, s in ranked], prune_copy, lambda m: count_macs(m) / base, macs)
    assert [i for i, _ in probed] == list(range(len(ranked)))
    per_mac = 1 / sum(c * s.width for c, (_, s) in zip(macs, ranked))
    for (index, count), cost, channel in zip(probed, costs, macs):
        kept = count_macs(prune_copy(copy.deepcopy(model), index, count)) / base
        assert cost == pytest.approx(max((1 - kept) / count, MIN_SHARE * channel * per_mac))
        assert cost > 0


def test_prune_config_records_how_latency_is_timed():
    cfg = PruneConfig(ratio=None, target_latency=0.6, latency_batch=32, latency_threads=2)
    meter = LatencyMeter.of(cfg)
    assert meter.describe() == {"runtime": "onnxruntime", "batch": 32, "threads": 2, "rounds": meter.rounds}
    assert cfg.to_dict()["target_latency"] == 0.6


def test_round_to_auto_keeps_the_multiple_it_chose_and_the_macs_target():
    """Which multiple times fastest depends on the machine; that the choice is one of the
    candidates timed, that the model is pruned as that multiple prunes it and that the MACs
    target still holds does not."""
    model = digits_model("resnet20", "nam", 16)
    base = count_macs(model)
    result = prune(model, PruneConfig(ratio=None, target_macs=0.5, round_to="auto"), random_batches(16))
    rounding = result.rounding
    assert rounding["chosen"] in rounding["ms"] and set(rounding["ms"]) <= set(ROUND_TO_CANDIDATES)
    assert len(rounding["ms"]) > 1 and all(t > 0 for t in rounding["ms"].values())
    changed = [layer for layer in result.layers if layer["after"] != layer["before"] and layer["name"] != "fc"]
    assert changed and all(layer["after"] % rounding["chosen"] == 0 for layer in changed)
    # a check that holds for a chosen multiple of 1 too: the widths are exactly those of a prune at it
    fixed = prune(digits_model("resnet20", "nam", 16),
                  PruneConfig(ratio=None, target_macs=0.5, round_to=rounding["chosen"]), random_batches(16))
    assert result.layers == fixed.layers
    assert abs(count_macs(model) / base - 0.5) <= MACS_TOLERANCE


@pytest.mark.parametrize("value, message", [("0", "--round-to must be a positive channel count or auto, got 0"),
                                            ("eight", "--round-to must be a positive channel count or auto, got 'eight'")])
def test_bad_round_to_is_one_line_and_exit_2(ckpt, tmp_path, capsys, value, message):
    code, _, err = run_cli(capsys, "prune", ckpt, "--round-to", value, "--out", tmp_path / "p")
    assert_one_line_error(code, err, message)


def test_a_timing_too_uncertain_to_steer_by_is_refused_in_one_line(ckpt, tmp_path, capsys, monkeypatch):
    """Real timings, a limit no timing can meet: the refusal, not a pruned model."""
    monkeypatch.setattr(latency_cost, "MAX_UNCERTAINTY", -1.0)
    monkeypatch.setattr(latency_cost, "MAX_REPEATS", 1)  # refused after the first timing, not the third
    code, _, err = run_cli(capsys, "prune", ckpt, "--target-latency", "0.6", "--out", tmp_path / "p")
    assert_one_line_error(code, err, "--target-latency will not steer by a timing that is not to be trusted",
                          "rounds at batch 1")
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.partial").exists()


def test_nam_score_takes_no_normalization_on_the_command_line(ckpt, tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", ckpt, "--normalization", "mean", "--out", tmp_path / "p")
    assert_one_line_error(code, err, "the nam score takes no normalization")
