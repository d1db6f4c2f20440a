"""Crash, kill and bad-input behaviour of the commands, as a user meets it."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from cli_helpers import ROOT, assert_one_line_error, run_cli
from namprune.core.store import checkpoint

SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TRAIN = ["train", "--epochs", "3", "-b", "64", "--schedule", "cosine", "-q"]


def _cli(*args) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), *map(str, args)]


def _run(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cli(*args), capture_output=True, text=True, env=SINGLE_THREAD, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc


def _kill_after(args, rows_file: Path, rows: int) -> None:
    """Start the command, wait until ``rows_file`` has ``rows`` epochs, then SIGKILL it mid-epoch."""
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=SINGLE_THREAD)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if rows_file.exists() and len(rows_file.read_text().splitlines()) >= rows:
            break
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _same_weights(a: Path, b: Path) -> None:
    wa = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(*TRAIN, "--out", out)
    return out


@pytest.mark.parametrize("killed_after", [0, 2])
def test_killed_training_resumes_to_identical_weights(reference, tmp_path, killed_after):
    out = tmp_path / "run"
    _kill_after([*TRAIN, "--out", out], out.with_name("run.partial") / "metrics.jsonl", killed_after)
    assert not out.exists() and (out.with_name("run.partial") / "train_state.pt").exists()
    _run("train", "--resume", out, "-q")
    _same_weights(reference, out)
    assert not (out / "train_state.pt").exists() and not out.with_name("run.partial").exists()
    ours = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_top1"] for r in ours] == [r["test_top1"] for r in theirs]


def test_killed_fine_tuning_resumes_to_identical_weights(reference, tmp_path):
    prune = ["prune", reference, "--ratio", "0.3", "--finetune-epochs", "2", "-q"]
    _run(*prune, "--out", tmp_path / "ref")
    out = tmp_path / "run"
    _kill_after([*prune, "--out", out], out.with_name("run.partial") / "metrics.jsonl", 1)
    _run(*prune, "--out", out, "--resume")
    _same_weights(tmp_path / "ref", out)
    ours, theirs = (json.loads((d / "report.json").read_text()) for d in (out, tmp_path / "ref"))
    assert ours["top1_finetuned"] == theirs["top1_finetuned"] and ours["top1_pruned"] == theirs["top1_pruned"]


def test_resume_needs_an_interrupted_run(reference, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--resume", reference)
    assert_one_line_error(code, err, "is complete")
    code, _, err = run_cli(capsys, "train", "--resume", tmp_path / "nothing")
    assert_one_line_error(code, err, "no interrupted run")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_diverging_run_keeps_the_earlier_result(reference, tmp_path, capsys):
    out = tmp_path / "run"
    _run(*TRAIN[:-1], "--epochs", "1", "--out", out)
    before = _snapshot(out)
    code, _, err = run_cli(capsys, "train", "--epochs", "2", "-b", "32", "--lr", "1e12", "--momentum", "0",
                           "--sparsity", "0", "--out", out, "--overwrite", "-q")
    assert code == 1
    assert re.search(r"^error: training diverged: the loss is \S+ at epoch 1, step \d+.*initial state is kept", err, re.M)
    assert _snapshot(out) == before
    assert (out.with_name("run.partial") / "train_state.pt").exists()


def test_a_failed_prune_keeps_the_earlier_result(reference, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert run_cli(capsys, "prune", reference, "--ratio", "0.3", "--out", out, "-q")[0] == 0
    before = _snapshot(out)
    code, _, err = run_cli(capsys, "prune", reference, "--target-macs", "0.01", "--max-layer-ratio", "0.5",
                           "--out", out, "--overwrite")
    assert_one_line_error(code, err, "cannot be reached")
    assert _snapshot(out) == before


def _grey_and_rgb_folders(root: Path) -> tuple[Path, Path]:
    """Two image folders with the same 3 classes: one of grey images, one of RGB images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folders = (root / "grey", root / "rgb")
    for split, start in (("train", 0), ("val", 600)):
        for i in range(start, start + 120):
            label = int(digits.target[i])
            if label > 2:
                continue
            image = Image.fromarray((digits.images[i] * 15).astype("uint8")).resize((16, 16))
            for folder, mode in zip(folders, ("L", "RGB")):
                path = folder / split / f"digit{label}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.convert(mode).save(path)
    return folders


def test_wrong_channels_and_wrong_classes(tmp_path, capsys):
    grey, rgb = _grey_and_rgb_folders(tmp_path)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--dataset", "imagefolder", "--data-dir", grey, "--epochs", "1", "-b", "16",
                           "--out", run, "-q")
    assert code == 0, err
    assert checkpoint.read(run)["data"]["in_channels"] == 1
    code, _, err = run_cli(capsys, "eval", run, "--data-dir", rgb)
    assert_one_line_error(code, err, "expects 1-channel images", "3 channels")
    (grey / "val" / "digit2").rename(grey / "val" / "digit9")
    (grey / "train" / "digit2").rename(grey / "train" / "digit9")
    code, _, err = run_cli(capsys, "eval", run, "--data-dir", grey)
    assert_one_line_error(code, err, "trained on 3 classes", "digit9")


@pytest.mark.parametrize("layout,fragment", [
    ({}, "must contain train/ and val/"),
    ({"train/readme.txt": b"x", "val/readme.txt": b"x"}, "find any class folder"),
    ({"train/cat/a.png": b"", "val/cat/b.png": b""}, "cannot read image"),
])
def test_malformed_data_folders(tmp_path, capsys, layout, fragment):
    root = tmp_path / "data"
    root.mkdir()
    for name, content in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    code, _, err = run_cli(capsys, "train", "--dataset", "imagefolder", "--data-dir", root, "--out", tmp_path / "o")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_every_load_in_the_package_is_weights_only():
    calls = []
    for source in (ROOT / "namprune").rglob("*.py"):
        calls += [(source.name, m.group(0)) for m in re.finditer(r"torch\.load\([^)]*\)", source.read_text())]
    assert calls, "no torch.load found: the test would prove nothing"
    assert all("weights_only=True" in call for _, call in calls), calls
