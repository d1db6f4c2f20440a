import json

import pytest

from cli_helpers import assert_one_line_error, run_cli, run_subprocess


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run_subprocess("train", "--epochs", "2", "-b", "32", "--schedule", "cosine", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "top-1" in proc.stdout
    return out


def test_train_writes_the_run_folder(trained):
    assert sorted(p.name for p in trained.iterdir()) == ["metrics.jsonl", "model.pt", "summary.json"]
    assert not trained.with_name("run.partial").exists()
    summary = json.loads((trained / "summary.json").read_text())
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    # one row per epoch asked for; the summary ends on the last of them
    assert [r["epoch"] for r in rows] == [1, 2] and summary["epochs"] == 2 and summary["final"] == rows[-1]
    assert summary["best_top1"] == max(r["test_top1"] for r in rows)
    assert (summary["config"]["batch_size"], summary["config"]["schedule"]) == (32, "cosine")  # the flags reached the engine
    # it learned: two epochs take a ResNet-20 on digits far above chance (10 %; 94.7 % measured)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and summary["final"]["test_top1"] > 50


def test_eval_and_info(trained, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "eval", trained, "--json", tmp_path / "e.json")
    assert code == 0 and "top-1" in out
    result = json.loads((tmp_path / "e.json").read_text())
    summary = json.loads((trained / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["final"]["test_top1"], abs=1e-6)
    code, out, _ = run_cli(capsys, "info", trained, "--json", tmp_path / "i.json")
    info = json.loads((tmp_path / "i.json").read_text())
    assert code == 0 and info["model"] == "resnet20" and info["attention"] == "none" and info["params"] > 200_000
    # the checkpoint carries the metrics of the epoch it holds, the last one
    assert (info["metrics"]["epoch"], info["metrics"]["top1"]) == (summary["final"]["epoch"], summary["final"]["test_top1"])
    assert info["macs"] > 1_000_000 and "resnet20" in out


def test_existing_output_is_kept_without_overwrite(trained, capsys):
    before = (trained / "model.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--out", trained)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert (trained / "model.pt").read_bytes() == before


@pytest.mark.parametrize("args,fragment", [
    (["train", "--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["train", "--model", "resnet21"], "unknown model 'resnet21'"),
    (["train", "--attention", "cbam"], "unknown attention"),
    (["train", "--optimizer", "lamb"], "unknown --optimizer 'lamb'"),
    (["train", "--shrink-scope", "layer"], "unknown --shrink-scope 'layer'"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--bogus"], "No such option"),
    (["eval", "/nonexistent/model.pt"], "no checkpoint"),
    (["train", "--dataset", "imagefolder"], "needs --data-dir"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, fragment):
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "x") if args[0] == "train" else run_cli(capsys, *args)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_debug_shows_the_traceback_and_keeps_the_exit_code(capsys):
    code, _, err = run_cli(capsys, "train", "--model", "resnet21", "--debug")
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "unknown model" in err


def test_every_command_documents_every_flag(capsys):
    import typer

    from namprune.cli import commands  # noqa: F401  (registers the commands)
    from namprune.cli.app import app

    group = typer.main.get_command(app)
    expected = {"train", "eval", "info", "rank", "prune", "sweep", "report", "export", "run", "demo"}
    assert expected <= set(group.commands)
    for name, command in group.commands.items():
        assert command.help, name
        undocumented = [p.name for p in command.params if p.name != "help" and not getattr(p, "help", None)]
        assert not undocumented, (name, undocumented)
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0 and "Usage" in out


def test_unknown_normalization_is_one_line_and_exit_2(trained, capsys, tmp_path):
    code, _, err = run_cli(capsys, "prune", trained, "--normalization", "median", "--out", tmp_path / "p")
    assert_one_line_error(code, err, "unknown --normalization 'median'")
    assert not (tmp_path / "p").exists()
