"""One timing path for torch and onnxruntime, and its verdict on whether a figure can be trusted."""

import os
import subprocess
import sys

import pytest

from model_helpers import digits_model
from namprune import NampruneError, fold_nam
from namprune.core.deploy.onnx import session, to_onnx
from namprune.core.deploy.timing import (settings_record, DEFAULT_THREADS, LatencySettings, is_trustworthy, measure_latency, speedups, summary,
                                  trust_problem)

FAST = dict(batches=(1, 4), rounds=3, min_run_time=0.02)


@pytest.fixture(scope="module")
def model():
    return digits_model("resnet20", "nam", 16)


def test_torch_and_onnxruntime_are_timed_side_by_side_into_records(model):
    onnx_bytes = to_onnx(fold_nam(model), None)[0].SerializeToString()
    records = measure_latency({"torch": model, "file": onnx_bytes, "session": session(onnx_bytes, 2)},
                              LatencySettings(**FAST))
    assert DEFAULT_THREADS == 1
    # a session brings its own thread count; a module or a file is timed with the settings' one
    for name, runtime, threads in (("torch", "torch", 1), ("file", "onnxruntime", 1), ("session", "onnxruntime", 2)):
        assert sorted(records[name]) == [1, 4]
        r = records[name][4]
        assert (r["runtime"], r["batch"], r["threads"], r["input_shape"]) == (runtime, 4, threads, [4, 1, 16, 16])
        assert len(r["round_ms"]) == 3 and r["median_ms"] == pytest.approx(sorted(r["round_ms"])[1], abs=1e-4)
        assert r["spread"] == pytest.approx((max(r["round_ms"]) - min(r["round_ms"])) / r["median_ms"], abs=1e-3)
        assert r["trusted"] == (r["untrusted_because"] is None) == is_trustworthy(r)
        assert r["cores"] >= 1 and (r["cpu_wait"] is None or 0 <= r["cpu_wait"] <= 1)
    ratio = speedups(records, "torch", "file")
    per_round = sorted(a / b for a, b in zip(records["torch"][4]["round_ms"], records["file"][4]["round_ms"]))
    assert ratio["4"] == pytest.approx(per_round[1], rel=1e-3)  # the median of the 3 rounds' ratios


def test_a_fixed_batch_file_is_timed_at_its_batch(model):
    onnx_bytes = to_onnx(fold_nam(model), 3)[0].SerializeToString()
    records = measure_latency({"file": onnx_bytes}, LatencySettings(**FAST))
    assert list(records["file"]) == [3]


def record(**changes):
    base = {"runtime": "onnxruntime", "batch": 32, "threads": 2, "spread": 0.05, "cpu_wait": 0.01,
            "max_spread": 0.2, "max_cpu_wait": 0.2, "trusted": True, "load_before": 3.1, "cores": 2}
    return {**base, **changes}


def test_the_verdict_names_what_is_wrong_and_how_to_get_a_clean_figure():
    assert trust_problem(record()) is None
    noisy = trust_problem(record(spread=0.93))
    assert "disagree by 93%" in noisy and "--threads" in noisy and "--rounds" in noisy
    waited = trust_problem(record(cpu_wait=0.74))
    assert "waited for a CPU 74%" in waited and "other jobs" in waited
    # a ratio of figures timed side by side holds while the rounds agree, even on a busy machine
    assert is_trustworthy(record(cpu_wait=0.74), absolute=False)
    assert not is_trustworthy(record(spread=0.5), absolute=False)
    assert trust_problem(record(cpu_wait=None)) is None  # no scheduler statistics: the spread decides
    line = summary([record(), record(spread=0.4, trusted=False), record(cpu_wait=0.6, trusted=False)])
    assert line.startswith("! 2 of 3 latency figures") and "40%" in line and "60%" in line
    assert summary([record()]) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not os.path.exists(f"/proc/{os.getpid()}/task"),
                    reason="needs Linux CPU affinity and scheduler statistics")
def test_a_timing_that_shares_its_core_with_another_job_is_not_trusted(model):
    """Pin this thread and a busy loop to the same core: the timing thread waits for it about
    half of the time, and the record must say so."""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    try:
        os.sched_setaffinity(0, {cpu})
        records = measure_latency({"torch": model}, LatencySettings(batches=(4,), rounds=2, min_run_time=0.3))
    finally:
        os.sched_setaffinity(0, before)
        burner.kill()
        burner.wait()
    r = records["torch"][4]
    assert r["cpu_wait"] > 0.3 and not r["trusted"]
    assert "waited for a CPU" in r["untrusted_because"]


@pytest.mark.parametrize("settings,fragment", [(dict(threads=0), "--threads"), (dict(rounds=0), "--rounds"),
                                               (dict(min_run_time=0), "--min-time"), (dict(batches=(0,)), "batch")])
def test_bad_settings_are_refused(settings, fragment):
    with pytest.raises(NampruneError, match=fragment):
        LatencySettings(**settings)


def test_report_flags_untrusted_figures():
    from namprune.app.comparison import markdown

    result = {"base": "a", "settings": {**settings_record(LatencySettings(batches=(1,)))},
              "runs": [{"name": "a", "base": True, "params": 1, "macs": 1, "top1": 1.0, "top1_change": 0.0,
                        "macs_speedup": 1.0, "measured_speedup": {"1": 1.0},
                        "latency": {"1": {**record(batch=1, spread=0.5, trusted=False), "median_ms": 2.0}}}]}
    text = markdown(result)
    assert "| 2.00! |" in text and "1.00x! |" in text and "not to be trusted" in text
