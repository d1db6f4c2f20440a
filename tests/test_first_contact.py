"""What a user meets on a real machine first (issue 21): torch threads that fit the cores the
process may use, a Ctrl-C that says how to continue, interrupted work that a new run does not
delete, and quick answers to simple mistakes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import ROOT, assert_one_line_error, run_cli
from namprune.app.recipe_run import _same_job
from namprune.app.recipes import load_recipe
from namprune.app.stages import finetune_config
from namprune.core.deploy.cpus import available_cores, cgroup_cpu_limit, default_threads
from namprune.core.errors import NampruneError
from namprune.core.settings import FinetuneSettings
from namprune.core.store.files import check_out_dir, run_dir, staging_dir
from namprune.core.training.progress import starved_message

NO_CGROUP = Path("/nonexistent/cgroup")  # "/proc/self/cgroup" of a process outside any cgroup


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("files, cpus", [
    ({"cpu.max": "max 100000\n"}, None),  # cgroup v2 without a quota
    ({"cpu.max": "200000 100000\n"}, 2.0),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # cgroup v1 without a quota
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
    ({}, None),  # no cgroup files at all (macOS, or an unmounted hierarchy)
])
def test_the_cgroup_quota_is_read_from_its_files(tmp_path, files, cpus):
    for name, text in files.items():
        _write(tmp_path / name, text)
    assert cgroup_cpu_limit(tmp_path, NO_CGROUP) == cpus


def test_the_tightest_quota_of_the_process_cgroup_and_its_parents_counts(tmp_path):
    _write(tmp_path / "own", "0::/user.slice/job.scope\n")
    _write(tmp_path / "cpu.max", "max 100000\n")
    _write(tmp_path / "user.slice" / "cpu.max", "100000 100000\n")  # the parent: one CPU
    _write(tmp_path / "user.slice" / "job.scope" / "cpu.max", "400000 100000\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "own") == 1.0


def test_usable_cores_are_the_affinity_lowered_to_the_quota_and_never_below_one(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert available_cores(tmp_path, NO_CGROUP) == affinity
    _write(tmp_path / "cpu.max", "150000 100000\n")  # 1.5 CPUs: one thread fits, two would be throttled
    assert available_cores(tmp_path, NO_CGROUP) == 1
    _write(tmp_path / "cpu.max", "20000 100000\n")
    assert available_cores(tmp_path, NO_CGROUP) == 1
    _write(tmp_path / "cpu.max", f"{100000 * (affinity + 4)} 100000\n")  # a quota above the cores
    assert available_cores(tmp_path, NO_CGROUP) == affinity


def test_training_threads_default_to_omp_num_threads_when_the_user_set_it(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads(load=0.0) == available_cores()


def test_training_threads_leave_the_cores_other_jobs_keep_busy(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = available_cores()
    assert default_threads(load=1.2) == max(1, cores - 1)
    assert default_threads(load=cores + 3.0) == 1  # never below one thread


MODEL_FILE = '''
from pathlib import Path

import torch
import torch.nn as nn

SEEN = Path({seen!r})


class Tiny(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        if self.training:  # what torch runs the training steps with
            SEEN.write_text(str(torch.get_num_threads()))
        return self.body(x)


def build(num_classes, in_channels):
    return Tiny(num_classes, in_channels)
'''


def test_threads_given_on_the_command_line_are_what_training_runs_on(tmp_path, capsys):
    seen = tmp_path / "threads.txt"
    (tmp_path / "tiny.py").write_text(MODEL_FILE.format(seen=str(seen)))
    before = torch.get_num_threads()
    wanted = before + 1  # differs from whatever the process had
    code, _, err = run_cli(capsys, "train", "--model", f"{tmp_path / 'tiny.py'}:build", "--attention", "none",
                           "--epochs", "1", "--threads", wanted, "--out", tmp_path / "run", "-q")
    assert code == 0, err
    assert int(seen.read_text()) == wanted
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["threads"] == wanted
    assert torch.get_num_threads() == before  # the caller's count is put back


def test_fine_tuning_takes_this_machines_threads_not_the_checkpoints():
    trained_with = {"threads": 8, "epochs": 30}
    assert finetune_config(trained_with, FinetuneSettings(epochs=1)).threads is None  # None: default_threads()
    assert finetune_config(trained_with, FinetuneSettings(epochs=1), threads=2).threads == 2


def test_fine_tuning_runs_the_epochs_asked_and_zero_means_none():
    trained_with = {"epochs": 30, "lr": 0.1}
    assert finetune_config(trained_with, FinetuneSettings(epochs=0)) is None
    tuned = finetune_config(trained_with, FinetuneSettings(epochs=3))
    assert tuned.epochs == 3 and tuned.lr == pytest.approx(0.04)  # settings.FINETUNE_LR_FACTOR of 0.1


def test_recipes_take_threads_and_a_run_continues_under_other_threads():
    assert load_recipe("digits-resnet20", ["train.threads=1"]).train.threads == 1
    with pytest.raises(NampruneError, match="--threads 0"):
        load_recipe("digits-resnet20", [], {"train.threads": ("--threads", 0)})
    import yaml

    one = yaml.safe_dump(load_recipe("digits-resnet20", ["train.threads=1"]).model_dump())
    default = yaml.safe_dump(load_recipe("digits-resnet20").model_dump())
    other = yaml.safe_dump(load_recipe("digits-resnet20", ["train.epochs=3"]).model_dump())
    assert _same_job(default, one) and not _same_job(default, other)


@pytest.mark.parametrize("speed, load, threads, expected", [
    (90, 3.9, 2, "--threads 1"),  # slow, busy, two threads: fewer threads help
    (90, 3.9, 1, "when the other jobs end"),  # one thread already: nothing to lower
    (90, 1.5, 2, None),  # slow but the machine is not busy: not a thread problem
    (150, 3.9, 2, None),  # busy but at half speed: not far below
])
def test_a_slow_epoch_on_a_busy_machine_says_what_to_do(speed, load, threads, expected):
    message = starved_message(4, speed, 300, load, 2, threads)
    if expected is None:
        assert message is None
    else:
        assert expected in message and "epoch 4" in message and "300" in message and f"load {load}" in message


# --------------------------------------------------------------------------- interrupted runs


def _staged_epochs(out: Path, epochs: int) -> Path:
    stage = staging_dir(out)
    _write(stage / "train_state.pt", "state")
    _write(stage / "metrics.jsonl", "".join(json.dumps({"epoch": e + 1}) + "\n" for e in range(epochs)))
    return stage


def test_a_staging_folder_with_finished_epochs_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    stage = _staged_epochs(out, 2)
    with pytest.raises(NampruneError, match=r"holds 2 finished epoch\(s\).*--resume.*--overwrite"):
        check_out_dir(out)
    with pytest.raises(NampruneError):
        with run_dir(out):  # every command's run folder goes through the same check
            pass
    assert (stage / "train_state.pt").read_text() == "state"
    with run_dir(out, overwrite=True) as fresh:  # asked to: the old epochs go
        assert not (fresh / "train_state.pt").exists()
    assert out.is_dir() and not stage.exists()


def test_a_staging_folder_without_finished_epochs_is_cleared(tmp_path):
    out = tmp_path / "run"
    _staged_epochs(out, 0)  # killed in its first epoch: only the starting point
    check_out_dir(out)
    with run_dir(out) as stage:
        assert not (stage / "train_state.pt").exists()


def _wait_for_a_finished_epoch(stage: Path, proc: subprocess.Popen, limit: float = 240) -> None:
    """Until the first epoch's training state is written (after its row in metrics.jsonl)."""
    metrics, state = stage / "metrics.jsonl", stage / "train_state.pt"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and state.exists() and metrics.read_text().strip() \
                and state.stat().st_mtime_ns >= metrics.stat().st_mtime_ns:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no finished epoch in {stage}: {proc.communicate()[1]}")


def test_ctrl_c_keeps_the_finished_epochs_and_says_how_to_resume(tmp_path, capsys):
    epochs = 3
    out = tmp_path / "run"
    args = ["train", "--epochs", str(epochs), "-b", "64", "--out", str(out), "-q"]
    # SIGINT as a terminal delivers it: a job started in the background (`cmd &`, nohup) ignores
    # SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_a_finished_epoch(staging_dir(out), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted: "), err
    assert f"saved in {staging_dir(out)}" in lines[-1] and f"`namprune train --resume {out}`" in lines[-1]
    assert "Traceback" not in err and not out.exists()
    stage = staging_dir(out)
    kept = {name: (stage / name).read_bytes() for name in ("train_state.pt", "metrics.jsonl", "model.pt")}
    finished = len(kept["metrics.jsonl"].splitlines())
    assert 1 <= finished < epochs and f"{finished} finished epoch(s)" in lines[-1]

    code, _, err = run_cli(capsys, *args)  # the same command again: refused, nothing deleted
    assert_one_line_error(code, err, "finished epoch(s)", f"namprune train --resume {out}", "--overwrite")
    assert {name: (stage / name).read_bytes() for name in kept} == kept

    code, _, err = run_cli(capsys, "train", "--resume", out, "-q")
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1)) and not stage.exists()


# --------------------------------------------------------------------------- quick answers


def test_simple_mistakes_are_answered_before_torch_loads(tmp_path):
    """Each answer comes from checks that need no torch; none of them imports it."""
    out = tmp_path / "run"
    _staged_epochs(out, 1)
    (tmp_path / "images").mkdir()
    cases = [
        (["prune", "ckpt", "--ratios", "0.3"], "`namprune sweep` takes --ratios (see `namprune prune --help`)"),
        (["rank", "ckpt", "--plot"], "see `namprune rank --help`"),
        (["eval", str(tmp_path / "missing")], "no checkpoint at"),
        (["prune", str(tmp_path / "missing"), "--ratio", "0.3"], "no checkpoint at"),
        (["export", str(tmp_path / "missing"), "--out", str(tmp_path / "m.onnx")], "no checkpoint at"),
        (["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "images")], "must contain train/"),
        (["train", "--weights", str(tmp_path / "w.pt")], "no such file"),
        (["train", "--resume", str(tmp_path / "other")], "no interrupted run to resume"),
        (["train", "--out", str(out)], "--resume"),
    ]
    code = ("import json, sys\nfrom namprune.cli import main\nresults = []\n"
            f"for args in {[args for args, _ in cases]!r}:\n"
            "    results.append(main(args))\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'torch_pruning')"
            " if m in sys.modules)\n"
            "print(json.dumps([results, heavy]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    results, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert heavy == [] and results == [2] * len(cases), done.stderr
    for line, (args, fragment) in zip(errors, cases):
        assert line.startswith("error: ") and fragment in line, (args, line)
