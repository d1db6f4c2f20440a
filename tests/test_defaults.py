"""The zero-flag path: `namprune train` and `namprune prune` with nothing but an output folder
and a MACs target must give a pruned model that still works before any fine-tuning."""

import json

import pytest
import torch

from cli_helpers import run_cli
from namprune.cli import main


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`namprune train` on the embedded digits with every default (30 epochs, batch 128), on one
    thread: the thread count changes the floating-point sums and so the trained model, and
    the check below is of one model (the one a test worker trains), not of training noise."""
    out = tmp_path_factory.mktemp("defaults") / "train"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--out", str(out), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_default_prune_to_half_the_macs_keeps_90_percent_before_fine_tuning(default_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", default_run, "--target-macs", "0.5", "--out", tmp_path / "p", "-q")
    assert code == 0, err
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["importance"] == "nam" and report["recalibrated"]
    assert report["macs_kept"] == pytest.approx(0.5, abs=0.02)
    assert report["top1_pruned"] >= 0.9 * report["top1_before"], report


def test_rank_of_a_trained_model_does_not_rank_groups_by_width(default_run, tmp_path, capsys):
    code, stdout, err = run_cli(capsys, "rank", default_run, "--top", "0", "--json", tmp_path / "rank.json")
    assert code == 0, err
    ranking = json.loads((tmp_path / "rank.json").read_text())
    medians = {g["name"]: g["median"] for g in ranking["groups"]}
    assert {g["width"] for g in ranking["groups"]} == {16, 32, 64}
    assert max(medians.values()) / min(medians.values()) < 8, medians
