"""Data-parallel training with real torchrun processes (gloo on CPU): two ranks, no mocks."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from cli_helpers import ROOT


def torchrun(*args, timeout=600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2`` on a free port, one thread per process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RANK", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_torchrun_train_writes_one_checkpoint_and_prints_once(tmp_path):
    out = tmp_path / "run"
    proc = torchrun("-m", "namprune", "train", "--epochs", "1", "-b", "32", "--schedule", "cosine", "--device", "cpu",
                    "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left, no second run folder
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "model.pt", "summary.json"]
    assert proc.stdout.count("trained resnet20") == 1 and proc.stdout.count("checkpoint:") == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the epoch's numbers are totals over both ranks: 1437 digits make 2 shards of 22 batches of 32
    assert len(rows) == 1
    assert rows[0]["images_per_s"] * rows[0]["epoch_time_s"] == pytest.approx(2 * 22 * 32, rel=0.02)
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun(ROOT / "tests" / "torchrun_worker.py", out)
    assert proc.returncode == 0, proc.stderr
    return out


def _states(out, stage):
    return [torch.load(out / f"{stage}-{rank}.pt", weights_only=True) for rank in (0, 1)]


def test_ranks_end_with_identical_weights_after_training_and_after_pruned_fine_tuning(worker_run):
    initial, trained, finetuned = (_states(worker_run, s) for s in ("initial", "trained", "finetuned"))
    assert not torch.equal(initial[0]["fc.weight"], initial[1]["fc.weight"])  # the ranks started apart
    assert not torch.equal(initial[0]["fc.weight"], trained[0]["fc.weight"])  # and trained
    for a, b in (trained, finetuned):
        assert a.keys() == b.keys()
        for key in a:  # parameters and buffers (BatchNorm running statistics included)
            assert torch.equal(a[key], b[key]), key
    # fine-tuning ran on the pruned model: fewer channels than the trained one
    assert sum(v.numel() for v in finetuned[0].values()) < 0.9 * sum(v.numel() for v in trained[0].values())


def test_only_rank_0_writes(worker_run):
    assert (worker_run / "train-rank0" / "model.pt").exists()
    assert not (worker_run / "train-rank1").exists()
    assert sorted(p.name for p in (worker_run / "pruned").iterdir()) == ["metrics.jsonl", "model.pt", "report.json",
                                                                         "summary.json"]
    assert not (worker_run / "pruned.partial").exists()
    report = json.loads((worker_run / "pruned" / "report.json").read_text())
    assert report["finetune_epochs"] == 1 and report["top1_finetuned"] is not None
