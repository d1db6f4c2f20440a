"""namprune run / demo: a recipe end to end, skipping what is done."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cli_helpers import ROOT, assert_one_line_error, run_cli

TINY = {
    "name": "tiny",
    "model": {"name": "resnet20", "attention": "nam"},
    "data": {"dataset": "digits", "image_size": 16, "batch_size": 64},
    "train": {"epochs": 2, "lr": 0.1, "schedule": "cosine"},
    "sparsity": {"strength": 0.01, "targets": "bn"},
    "prune": {"ratio": 0.4},
    "finetune": {"epochs": 1},
    "latency": {"rounds": 1, "min_run_time": 0.01},  # the report and export stages time every model
}
FAST_LATENCY = ["--set", "latency.rounds=1", "--set", "latency.min_run_time=0.01"]


def _recipe(tmp_path, **changes):
    document = {**TINY, **changes}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    out = root / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(_recipe(root)), "--out", str(out), "-q"],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return root, out, proc


def test_run_completes_every_stage(finished):
    _, out, proc = finished
    assert sorted(p.name for p in out.iterdir()) == ["export", "finetune", "prune", "rank", "recipe.yaml", "report", "train"]
    report = json.loads((out / "report" / "report.json").read_text())
    assert [row["name"] for row in report["runs"]] == ["train", "prune", "finetune"]
    assert report["runs"][2]["macs"] < report["runs"][0]["macs"]
    assert (out / "export" / "model.onnx").stat().st_size > 10_000
    assert (out / "rank" / "ranking.png").exists() and (out / "report" / "pareto.png").exists()
    assert "finetune" in proc.stdout and "ONNX model" in proc.stdout
    assert not out.with_name("out.partial").exists()
    # the recipe's latency section is how both timing stages timed
    assert {k: report["settings"][k] for k in TINY["latency"]} == TINY["latency"]
    exported = json.loads((out / "export" / "model.export.json").read_text())["latency"]["settings"]
    assert {k: exported[k] for k in TINY["latency"]} == TINY["latency"]


def test_no_record_names_the_staging_folder_that_is_gone(finished):
    _, out, _ = finished
    records = sorted(out.rglob("*.json"))
    assert {p.name for p in records} >= {"report.json", "model.export.json", "summary.json", "rank.json"}
    for record in records:
        assert ".partial" not in record.read_text(), record
    exported = json.loads((out / "export" / "model.export.json").read_text())
    assert exported["onnx"] == str(out / "export" / "model.onnx") and os.path.exists(exported["source"])


def test_eval_and_report_of_a_run_folder_take_its_final_model(finished, capsys):
    _, out, _ = finished
    code, stdout, err = run_cli(capsys, "eval", out)
    assert code == 0, err
    assert str(out / "finetune" / "model.pt") in stdout.replace("\n", "")
    code, stdout, err = run_cli(capsys, "report", out, "--rounds", "1", "--min-time", "0.01", "--json", out.parent / "r.json")
    assert code == 0, err
    assert [row["name"] for row in json.loads((out.parent / "r.json").read_text())["runs"]] == ["train", "finetune"]


def test_running_again_does_nothing(finished, capsys):
    root, out, _ = finished
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, stdout, err = run_cli(capsys, "run", root / "tiny.yaml", "--out", out, "-q")
    assert code == 0 and "nothing to do" in err and "finetune" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_an_interrupted_run_continues_where_it_stopped(tmp_path, capsys):
    # the export stage is tested on the finished run; here the run stops after its report
    recipe = _recipe(tmp_path, train={"epochs": 3, "lr": 0.1, "schedule": "cosine"}, export={"enabled": False})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", str(recipe), "--out", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    stage = tmp_path / "out.partial"
    deadline = time.monotonic() + 600
    while not (stage / "rank").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    trained = (stage / "train" / "model.pt").read_bytes()
    code, _, err = run_cli(capsys, "run", recipe, "--out", out, "-q", "--set", "prune.ratio=0.2")
    assert_one_line_error(code, err, "interrupted run of a different recipe")
    code, _, err = run_cli(capsys, "run", recipe, "--out", out, "-q")
    assert code == 0, err
    assert "✓ train: done earlier" in err and "✓ rank: done earlier" in err
    assert (out / "train" / "model.pt").read_bytes() == trained
    assert (out / "report" / "report.json").exists()


def test_a_failed_export_in_a_run_is_one_line_and_exit_code_1(finished, tmp_path, capsys, monkeypatch):
    """An export whose check fails is not the user's mistake (exit code 1), and not a bug:
    `namprune run` says what failed in one line, as `namprune export` does."""
    from namprune.core import api
    from namprune.core.deploy.onnx import ExportError

    root, out, _ = finished
    staged = tmp_path / "out.partial"  # the finished run, interrupted before its export
    shutil.copytree(out, staged, ignore=shutil.ignore_patterns("export"))

    def failing_check(*args, **kwargs):
        raise ExportError("parity check failed on 16 random images (onnxruntime): max relative difference 0.5")

    monkeypatch.setattr(api, "check_parity", failing_check)  # the check every export runs
    code, _, err = run_cli(capsys, "run", root / "tiny.yaml", "--out", tmp_path / "out", "-q")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and lines[-1].startswith("error: parity check failed"), err
    assert "internal error" not in err and "✓ finetune: done earlier" in err


def test_a_different_recipe_needs_overwrite(finished, capsys):
    root, out, _ = finished
    other = _recipe(root / "..", prune={"ratio": 0.2})
    code, _, err = run_cli(capsys, "run", other, "--out", out)
    assert_one_line_error(code, err, "different recipe", "--overwrite")


@pytest.mark.parametrize("change,fragment", [
    ({"train": {"epochs": "two"}}, "train.epochs: Input should be a valid integer"),
    ({"prune": {"ratio": 1.2}}, "prune.ratio: must be in (0, 1)"),
    ({"finetune": {"epochz": 1}}, "finetune.epochz: unknown key"),
])
def test_bad_recipes_fail_before_any_work(tmp_path, capsys, change, fragment):
    recipe = _recipe(tmp_path, **change)
    code, _, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    assert_one_line_error(code, err, str(recipe), fragment)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_demo_completes_in_a_shortened_setting(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(capsys, "demo", "--out", out, "-q", "--set", "train.epochs=2", "--set", "finetune.epochs=1",
                                "--set", "export.enabled=false", *FAST_LATENCY)  # the export stage is tested on the finished run
    assert code == 0, err
    for label in ("trade-off", "pruned model:", "pictures:"):
        assert label in stdout
    assert "ONNX model:" not in stdout and not (out / "export").exists()
    assert yaml.safe_load((out / "recipe.yaml").read_text())["name"] == "digits-resnet20"
