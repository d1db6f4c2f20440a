import copy
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from matplotlib.image import imread

from cli_helpers import assert_one_line_error, run_cli
from model_helpers import random_batches
from namprune import NampruneError, evaluate, load_data, models
from namprune.app.comparison import fronts, pareto_front
from namprune.app.run_folders import expand, find_base, load_run
from namprune.core.deploy.measure import count_macs, count_params, measure_accuracy, measure_latency
from namprune.core.pruning.prune import prune
from namprune.core.settings import LatencySettings, PruneConfig
from namprune.core.store import checkpoint
from namprune.core.store.files import write_json
from test_pruning import _scramble_scales

FAST_TIMING = ["--min-time", "0.01", "--rounds", "1", "--batch", "4"]
# Values written into the runs' records; the report must show these, not anything else.
BASE_TOP1, BASE_TOP5 = 91.25, 99.5
KNOWN = {"p30": dict(ratio=0.3, top1_finetuned=90.0, top5_finetuned=99.0, top1_pruned=80.0, top5_pruned=97.0),
         "p60": dict(ratio=0.6, top1_finetuned=None, top5_finetuned=None, top1_pruned=70.5, top5_pruned=95.0)}


def assert_png(path, min_width=400, min_height=300):
    """A real PNG of sensible size whose pixels are not all one colour."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    height, width = image.shape[:2]
    assert min_width <= width <= 6000 and min_height <= height <= 6000, (width, height)
    assert image[..., :3].std() > 0.05, "the picture is blank"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A training run and two pruned runs made from it, with records whose values the tests know."""
    root = tmp_path_factory.mktemp("runs")
    info = load_data("digits", batch_size=64).info.as_dict()
    torch.manual_seed(0)
    model = models.create("resnet20", num_classes=10, attention="nam", input_size=16, in_channels=1)
    _scramble_scales(model)
    checkpoint.save(root / "base" / "model.pt", model, info, metrics={"top1": 12.0, "top5": 50.0},
                    config={"batch_size": 64})
    write_json(root / "base" / "summary.json", {"final": {"test_top1": BASE_TOP1, "test_top5": BASE_TOP5}})
    for name, record in KNOWN.items():
        pruned = copy.deepcopy(model)
        result = prune(pruned, PruneConfig(ratio=record["ratio"]), random_batches(16))
        checkpoint.save(root / name / "model.pt", pruned, info, metrics={"top1": 1.0, "top5": 2.0})
        write_json(root / name / "report.json", {**record, "source": str(root / "base" / "model.pt"),
                                                 "layers": result.layers})
    return root


def test_report_shows_the_known_numbers(runs, tmp_path, capsys):
    out = {name: tmp_path / f"report.{ext}" for name, ext in
           (("markdown", "md"), ("csv", "csv"), ("json", "json"), ("plot", "png"), ("widths", "widths.png"))}
    code, stdout, err = run_cli(capsys, "report", runs / "p30", runs / "p60", *FAST_TIMING,
                                *[arg for name, path in out.items() for arg in (f"--{name}", path)])
    assert code == 0, err
    result = json.loads(out["json"].read_text())
    rows = {row["name"]: row for row in result["runs"]}
    assert result["base"] == "base" and list(rows) == ["base", "p30", "p60"]  # the base found from "source"

    base_model = checkpoint.load(runs / "base")
    for name, top1, top5 in [("base", BASE_TOP1, BASE_TOP5), ("p30", 90.0, 99.0), ("p60", 70.5, 95.0)]:
        row, model = rows[name], checkpoint.load(runs / name)
        assert (row["params"], row["macs"]) == (count_params(model), count_macs(model))
        assert (row["top1"], row["top5"]) == (top1, top5)
        assert row["top1_change"] == pytest.approx(top1 - BASE_TOP1)
        assert row["macs_speedup"] == pytest.approx(count_macs(base_model) / count_macs(model), rel=1e-3)
        for batch in ("1", "4"):
            latency = row["latency"][batch]
            assert latency["median_ms"] > 0 and latency["input_shape"] == [int(batch), 1, 16, 16]
            assert latency["threads"] >= 1 and latency["device"] == "cpu" and latency["torch"] == torch.__version__
            assert row["measured_speedup"][batch] == pytest.approx(
                rows["base"]["latency"][batch]["median_ms"] / latency["median_ms"], rel=1e-3)
    assert rows["p60"]["macs"] < rows["p30"]["macs"] < rows["base"]["macs"]
    assert result["settings"]["batches"] == [1, 4] and result["settings"]["rounds"] == 1

    table = {row["name"]: row for row in csv.DictReader(out["csv"].open())}
    assert float(table["p60"]["top1"]) == 70.5 and int(table["p30"]["macs"]) == rows["p30"]["macs"]
    assert float(table["p30"]["measured_speedup_b4"]) == pytest.approx(rows["p30"]["measured_speedup"]["4"])
    markdown = out["markdown"].read_text()
    p30_line = next(line for line in markdown.splitlines() if line.startswith("| p30 "))
    assert f"| {rows['p30']['macs'] / 1e6:.2f} |" in p30_line and "| 90.00 | -1.25 |" in p30_line
    assert f"| {rows['p30']['macs_speedup']:.2f}x |" in p30_line
    assert "base (base)" in stdout and "-20.75" in stdout  # the table on stdout: p60 lost 20.75 points
    assert_png(out["plot"])
    assert_png(out["widths"])
    printed = " ".join(stdout.split())  # the table's terminal may wrap the line
    assert f"plot: {out['plot']}" in printed and f"layer widths: {out['widths']}" in printed


def test_report_can_measure_top1_again(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", runs / "base", runs / "p30", "--evaluate", "--json", tmp_path / "r.json",
                           *FAST_TIMING)
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads((tmp_path / "r.json").read_text())["runs"]}
    data = load_data("digits", batch_size=256)
    for name in ("base", "p30"):
        expected = evaluate(checkpoint.load(runs / name), data.test)
        assert (rows[name]["top1"], rows[name]["top5"]) == (expected["top1"], expected["top5"])
        assert "evaluated" in rows[name]["accuracy_from"]


def test_base_is_given_else_unpruned_else_the_source(runs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs / "base" / "model.pt", bare / "model.pt")
    pruned = expand([runs / "p30", runs / "p60"])
    assert find_base(pruned).path == runs / "base"  # the recorded source
    assert find_base(pruned + [load_run(bare)]).path == bare  # an unpruned run given wins over the source
    assert find_base(pruned, base=bare).kind == "checkpoint"
    assert load_run(bare).accuracy()["top1"] == 12.0  # a bare checkpoint's own metrics
    assert find_base(pruned, base=runs / "p30").path == runs / "p30"  # --base wins over everything

    other = tmp_path / "other"
    shutil.copytree(runs / "p60", other)
    record = json.loads((other / "report.json").read_text())
    write_json(other / "report.json", {**record, "source": str(bare / "model.pt")})
    with pytest.raises(NampruneError, match="different checkpoints"):
        find_base(expand([runs / "p30", other]))
    shutil.rmtree(bare)
    with pytest.raises(NampruneError, match="no longer exists"):
        find_base(expand([other]))


def test_report_bad_input_writes_nothing(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "old.md").write_text("old")
    before = sorted(tmp_path.iterdir())
    for args, fragment in [
        ([tmp_path / "empty"], "is not a run folder"),
        ([tmp_path / "missing"], "does not exist"),
        ([runs / "p30", "--markdown", tmp_path / "old.md"], "already exists"),
        ([runs / "base", "--widths", tmp_path / "w.png", "--json", tmp_path / "r.json"], "needs at least one pruned run"),
        ([runs / "p30", "--rounds", "0"], "--rounds"),
    ]:
        code, _, err = run_cli(capsys, "report", *args, *FAST_TIMING[:2])
        assert_one_line_error(code, err, fragment)
        assert sorted(tmp_path.iterdir()) == before
    assert (tmp_path / "old.md").read_text() == "old"


def test_sweep_makes_one_run_per_point_and_a_true_front(runs, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = run_cli(capsys, "sweep", runs / "base", "--ratios", "0.3,0.6", "--target-macs", "0.5",
                                "--finetune-epochs", "1", "--out", out, "-q", *FAST_TIMING)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["macs-0.50", "pareto.png", "ratio-0.30", "ratio-0.60",
                                                     "sweep.json", "widths.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # no staging folder left
    record = json.loads((out / "sweep.json").read_text())
    assert [p["folder"] for p in record["points"]] == ["ratio-0.30", "ratio-0.60", "macs-0.50"]
    for point in record["points"]:
        report = json.loads((out / point["folder"] / "report.json").read_text())
        assert report["finetune_epochs"] == 1 and point["top1"] == report["top1_finetuned"]
        assert point["macs"] == report["macs_after"] and point["path"] == str(out / point["folder"])
    assert record["points"][0]["macs"] > record["points"][1]["macs"]
    assert record["points"][2]["macs"] / record["base"]["macs"] == pytest.approx(0.5, rel=0.02)

    rows = [record["base"], *record["points"]]
    for key, batch in [("macs", None), ("latency_b1", "1"), ("latency_b4", "4")]:
        # A latency flagged untrusted (a busy machine) is on no front and beats nothing.
        def cost(r, batch=batch):
            return r["macs"] if batch is None else r["latency"][batch]["median_ms"]
        counted = [r for r in rows if batch is None or r["latency"][batch].get("trusted", True)]
        for row in rows:
            beaten = any(cost(o) <= cost(row) and o["top1"] >= row["top1"] and (cost(o), o["top1"]) != (cost(row), row["top1"])
                         for o in counted)
            assert row["on_front"][key] == (row in counted and not beaten), (key, row["name"])
        assert record["front"][key] == [row["name"] for row in rows if row["on_front"][key]]
    assert "Pareto front" in stdout
    assert_png(out / "pareto.png")
    assert_png(out / "widths.png")

    # A sweep folder stands for its points in a report, its base found from their source.
    code, _, err = run_cli(capsys, "report", out, "--json", tmp_path / "r.json", *FAST_TIMING)
    assert code == 0, err
    reported = json.loads((tmp_path / "r.json").read_text())
    assert [row["name"] for row in reported["runs"]] == ["base", "ratio-0.30", "ratio-0.60", "macs-0.50"]
    assert [row["top1"] for row in reported["runs"]] == [row["top1"] for row in rows]


@pytest.mark.parametrize("args,fragment", [
    (["--ratios", ""], "no points"),
    (["--ratios", "0.2,1.5"], "--ratio must be in (0, 1)"),
    (["--target-macs", "0"], "--target-macs must be in (0, 1)"),
    (["--ratios", "0.2,abc"], "comma-separated fractions"),
    (["--ratios", "0.2,0.20"], "twice"),
])
def test_sweep_bad_input_writes_nothing(runs, tmp_path, capsys, args, fragment):
    code, _, err = run_cli(capsys, "sweep", runs / "base", *args, "--out", tmp_path / "s")
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_sweep_keeps_an_existing_output(runs, tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "sweep", runs / "base", "--ratios", "0.3", "--out", tmp_path / "s")
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["keep.txt"]


def test_rank_plot(runs, tmp_path, capsys):
    code, out, err = run_cli(capsys, "rank", runs / "base", "--top", "0", "--plot", tmp_path / "rank.png")
    assert code == 0, err
    assert_png(tmp_path / "rank.png", min_width=800, min_height=700)  # channel panels and 9 pixel maps
    assert f"plot: {tmp_path / 'rank.png'}" in " ".join(out.split())


# --------------------------------------------------------------------------- what the pictures show


def _ranking(runs):
    from namprune.core.pruning.saliency import rank_model
    return rank_model(checkpoint.load(runs / "base"), "nam", "auto", calibration=random_batches(16), images=16)


def _log_axis(fig):
    return next(ax for ax in fig.axes if ax.get_yscale() == "log")


def test_the_ranking_axis_fits_the_scores(runs):
    from namprune.app.plots import ranking_figure
    from namprune.core.pruning.saliency import NEAR_ZERO

    ranking = _ranking(runs)
    ax = _log_axis(ranking_figure(ranking))
    values = np.concatenate([(g.scores / ranking.reference).numpy() for g in ranking.groups])
    low, high = ax.get_ylim()
    # every score and the two reference lines in view, and no more than a decade of empty axis either side
    assert low <= min(values.min(), NEAR_ZERO) and high >= max(values.max(), 1.0)
    assert low >= min(values.min(), NEAR_ZERO) / 10 and high <= max(values.max(), 1.0) * 10


def test_flat_pixel_maps_are_left_out_with_a_note(runs):
    from namprune.app.plots import ranking_figure

    ranking = _ranking(runs)
    names = list(ranking.pixels)
    assert len(names) >= 2
    pixels = {name: torch.linspace(0.5, 1.5, m.numel()).view_as(m) for name, m in ranking.pixels.items()}
    pixels[names[0]] = torch.ones_like(pixels[names[0]])  # one value: a single colour
    ranking.pixels = pixels
    fig = ranking_figure(ranking)
    drawn = [ax for ax in fig.axes if ax.images and ax.get_visible()]
    assert len(drawn) == len(names) - 1
    assert names[0].removesuffix(".spatial") not in [ax.get_title().replace("\n", "") for ax in drawn]
    notes = [sub._suptitle.get_text() for sub in fig.subfigs if sub._suptitle is not None]
    assert any(f"1 of {len(names)} pixel maps left out" in n and names[0].removesuffix(".spatial") in n for n in notes)


def _comparison(trusted: list[bool]) -> dict:
    """Three runs, cheaper is less accurate (all on the front when trusted); latency at batch 1
    flagged as given."""
    runs = [{"name": name, "base": name == "base", "macs": macs, "top1": top1,
             "latency": {"1": {"median_ms": ms, "trusted": ok}}}
            for (name, macs, top1, ms), ok in zip([("base", 40e6, 95.0, 4.0), ("p30", 25e6, 94.0, 3.0),
                                                   ("p60", 12e6, 90.0, 2.0)], trusted)]
    result = {"runs": runs, "settings": {"batches": [1], "device": "cpu", "threads": 1, "torch": torch.__version__}}
    return {**result, "fronts": fronts(result)}


def test_untrusted_latencies_are_hollow_and_on_no_front():
    from namprune.app.plots import pareto_figure

    result = _comparison([True, False, True])
    assert result["fronts"]["latency_b1"] == [True, False, True] and result["fronts"]["macs"] == [True] * 3
    fig = pareto_figure(result, result["fronts"])
    macs_ax, latency_ax = fig.axes[:2]
    front = next(line for line in latency_ax.get_lines() if line.get_label() == "Pareto front")
    assert sorted(front.get_xdata()) == [2.0, 4.0]  # p30's untrusted 3 ms is not on it
    hollow = next(c for c in latency_ax.collections if c.get_label().startswith("latency untrusted"))
    assert hollow.get_offsets().tolist() == [[3.0, 94.0]] and hollow.get_facecolors().size == 0
    assert "1 of 3 latencies untrusted" in latency_ax.get_title()
    assert not any(c.get_label().startswith("latency untrusted") for c in macs_ax.collections)
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert "latency untrusted (no front through it)" in legend and "Pareto front" in legend


def test_no_front_is_drawn_when_no_latency_is_trusted(tmp_path):
    from namprune.app.plots import pareto_figure, plot_pareto

    result = _comparison([False, False, False])
    assert result["fronts"]["latency_b1"] == [False] * 3
    fig = pareto_figure(result, result["fronts"])
    assert not [line for line in fig.axes[1].get_lines() if line.get_label() == "Pareto front"]
    assert_png(plot_pareto(result, result["fronts"], tmp_path / "pareto.png"))


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=12))
def test_pareto_front_is_exactly_the_non_dominated_points(points):
    costs, scores = [c for c, _ in points], [s for _, s in points]
    on = pareto_front(costs, scores)

    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and a != b
    for i, p in enumerate(points):
        assert on[i] == (not any(dominates(q, p) for q in points))
    assert any(on)  # the cheapest of the most accurate points is always on it


def test_pareto_front_ties():
    # identical points both stay; equal cost: the less accurate goes; equal accuracy: the costlier goes
    assert pareto_front([1, 1], [50, 50]) == [True, True]
    assert pareto_front([1, 1], [50, 60]) == [False, True]
    assert pareto_front([1, 2], [50, 50]) == [True, False]
    assert pareto_front([1.0, 2.0, 3.0, 2.0], [50, 60, 55, 40]) == [True, True, False, False]
    with pytest.raises(ValueError):
        pareto_front([1, 2], [3])


def test_latency_records_its_settings():
    net = models.create("resnet20", num_classes=10, attention="none", input_size=16, in_channels=1)
    small = copy.deepcopy(net)
    _scramble_scales(small)
    prune(small, PruneConfig(ratio=0.7), random_batches(16))
    result = measure_latency({"full": net, "small": small}, LatencySettings(batches=(1, 8), threads=1,
                                                                           min_run_time=0.01, rounds=2))
    for name in ("full", "small"):
        assert sorted(result[name]) == [1, 8]
        record = result[name][8]
        assert record["input_shape"] == [8, 1, 16, 16] and record["threads"] == 1 and record["device"] == "cpu"
        assert record["median_ms"] > 0 and record["per_image_ms"] == pytest.approx(record["median_ms"] / 8, rel=1e-3)
        assert record["timed_runs"] >= 2 and record["torch"] == torch.__version__
    with pytest.raises(NampruneError, match="batch sizes"):
        LatencySettings(batches=(0,))


def test_measure_accuracy_is_evaluate_with_its_settings():
    data = load_data("digits", batch_size=256)
    net = models.create("resnet20", num_classes=10, attention="none", input_size=16, in_channels=1).eval()
    measured = measure_accuracy(net, data, "cpu")
    assert {k: measured[k] for k in ("top1", "top5")} == {k: evaluate(net, data.test)[k] for k in ("top1", "top5")}
    assert (measured["dataset"], measured["split"], measured["device"]) == ("digits", "test", "cpu")
    assert measured["samples"] == data.info.test_size
