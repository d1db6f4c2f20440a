"""``--runtime openvino``: IR from the checked ONNX file, checked in real OpenVINO, its NNCF INT8
twin with top-1 beside the FP32 one, latency by the same timer as onnxruntime's, and
``--latency-runtime openvino`` for pruning. No mocks: OpenVINO and NNCF run here; where the
``openvino`` extra is not installed (CI installs ``.[dev]`` only) the module is skipped."""

import json

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from cli_helpers import ROOT, assert_one_line_error, run_cli
from model_helpers import digits_model, pruned_digits_run, random_batches
from namprune import load_data
from namprune.cli import main
from namprune.core.pruning import latency_cost
from namprune.core.pruning.prune import prune
from namprune.core.settings import PARITY_TOLERANCE, PruneConfig
from namprune.core.store import checkpoint

FAST = ["--rounds", "2", "--min-time", "0.02"]


@pytest.fixture(scope="module")
def ir_export(tmp_path_factory):
    """A digits base, a run pruned from it, and its OpenVINO export with the INT8 twin."""
    root = tmp_path_factory.mktemp("ov")
    base, _ = pruned_digits_run(root)
    out = root / "pruned" / "export" / "m.xml"  # in the run folder: where `namprune report` finds it
    # every gate kept: the files compute what the checkpoint does, so torch needs no folding to compare
    code = main(["export", str(root / "pruned"), "--runtime", "openvino", "--int8", "--keep-gates", "--out", str(out), *FAST])
    assert code == 0
    return base, root / "pruned", out, json.loads(out.with_name("m.export.json").read_text())


def openvino_logits(xml, images: np.ndarray) -> np.ndarray:
    """What a user gets: the file read by OpenVINO on its own, nothing of namprune involved."""
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(images)[0]


def test_ir_and_its_int8_twin_are_written_with_one_record(ir_export):
    _, _, out, record = ir_export
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.bin", "m.export.json", "m.int8.bin", "m.int8.xml", "m.xml"]
    assert record["runtime"] == "openvino" and record["ir"] == str(out) and record["onnx"] is None
    assert record["file_bytes"] == out.stat().st_size + out.with_suffix(".bin").stat().st_size
    assert record["versions"]["openvino"] == ov.__version__.split("-")[0] and record["versions"]["nncf"]
    int8 = out.with_name("m.int8.xml")
    ops = {op.get_type_name() for op in ov.Core().read_model(str(int8)).get_ops()}
    assert "FakeQuantize" in ops
    assert "FakeQuantize" not in {op.get_type_name() for op in ov.Core().read_model(str(out)).get_ops()}


def test_both_files_agree_with_torch_when_openvino_reads_them_alone(ir_export):
    _, pruned, out, record = ir_export
    model = checkpoint.load(pruned).eval()
    data = load_data("digits", image_size=16, batch_size=512, augment=False)
    images, labels = next(iter(data.test))
    with torch.no_grad():
        reference = model(images).numpy()
    fp32 = openvino_logits(out, images.numpy())
    assert np.abs(fp32 - reference).max() / np.abs(reference).max() < PARITY_TOLERANCE
    # the record: OpenVINO's own check, and the one of the ONNX file the IR came from
    assert record["parity"]["runtime"] == "openvino" and all(r["ok"] for r in record["parity"]["results"])
    assert [r["inputs"] for r in record["parity"]["results"]] == ["random", "test images"]
    assert record["onnx_parity"]["runtime"] == "onnxruntime" and all(r["ok"] for r in record["onnx_parity"]["results"])
    # INT8: top-1 recorded for both files is what OpenVINO gives on the whole test split
    int8 = openvino_logits(out.with_name("m.int8.xml"), images.numpy())
    top1 = lambda logits: round(100 * float((logits.argmax(1) == labels.numpy()).mean()), 4)  # noqa: E731
    assert record["int8"]["test_images"] == len(labels) == data.info.test_size
    assert record["int8"]["top1_fp32"] == pytest.approx(top1(fp32), abs=1e-3)
    assert record["int8"]["top1_int8"] == pytest.approx(top1(int8), abs=1e-3)
    assert abs(record["int8"]["top1_change"]) < 5  # a 50 %-pruned untrained-like digits net: a coarse bound
    assert record["int8"]["calibration_images"] == 256 and "NNCF" in record["int8"]["format"]


def test_latency_is_timed_by_the_same_timer_for_both_runtimes(ir_export):
    base, _, _, record = ir_export
    records = record["latency"]["records"]
    assert {"onnxruntime", "openvino", "openvino_int8", "openvino_unpruned", "torch_eager"} <= set(records)
    for name in ("openvino", "openvino_int8", "openvino_unpruned"):
        for batch in ("1", "32"):
            r = records[name][batch]
            assert r["runtime"] == "openvino" and r["threads"] == 1 and r["openvino"] and r["onnxruntime"] is None
            assert len(r["round_ms"]) == 2 and r["input_shape"] == [int(batch), 1, 16, 16]
    assert records["onnxruntime"]["32"]["runtime"] == "onnxruntime"
    assert record["int8"]["unpruned_source"] == str(checkpoint.model_file(base).resolve())
    combined = record["int8"]["speedup_vs_unpruned_fp32"]
    ratios = [a / b for a, b in zip(records["openvino_unpruned"]["32"]["round_ms"], records["openvino_int8"]["32"]["round_ms"])]
    assert combined["int8"]["32"] == pytest.approx(sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2, rel=1e-3)


def test_check_only_checks_an_ir_file_in_openvino(ir_export, tmp_path, capsys):
    _, pruned, out, _ = ir_export
    code, text, err = run_cli(capsys, "export", pruned, "--check-only", "--out", out)
    assert code == 0, err
    assert "openvino vs torch" in text and f"{out} agrees with" in text
    # the INT8 twin is not FP32 arithmetic: held to the FP32 limit it fails, with the measured difference
    code, _, err = run_cli(capsys, "export", pruned, "--check-only", "--out", out.with_name("m.int8.xml"))
    assert code == 1 and "parity check failed" in err and "(openvino)" in err, err


def docs_command() -> list[str]:
    """The ``--runtime openvino`` example of docs/cli.md, as its words."""
    line = next(line for line in (ROOT / "docs" / "cli.md").read_text().splitlines()
                if line.startswith("$ namprune export") and "--runtime openvino" in line)
    return line.split()[2:]


def test_the_docs_example_prints_both_checks_int8_and_the_files(ir_export, tmp_path, capsys):
    """The docs' command as written, on the pruned digits run, the file in a scratch folder."""
    _, pruned, _, _ = ir_export
    words = docs_command()
    assert words[:2] == ["export", "runs/demo/finetune"] and words[words.index("--out") + 1].endswith("/model.xml")
    words[1], words[words.index("--out") + 1] = str(pruned), str(tmp_path / "model.xml")
    code, out, err = run_cli(capsys, *words)
    assert code == 0, err
    assert "onnxruntime vs torch" in out and "openvino vs torch" in out and "INT8 (OpenVINO IR" in out
    assert "pruned INT8" in out and "as fast in openvino" in out and "openvino unpruned" in out
    assert f"OpenVINO IR: {tmp_path / 'model.xml'}   INT8: {tmp_path / 'model.int8.xml'}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.export.json", "model.int8.bin",
                                                         "model.int8.xml", "model.xml"]


def test_report_shows_each_runtime_and_precision_side_by_side(ir_export, tmp_path, capsys):
    """The run exported for onnxruntime too: report lists both runtimes, FP32 and INT8, with the
    speed-ups the exports measured over the unpruned model."""
    base, pruned, out, record = ir_export
    onnx_out = pruned / "onnx" / "m.onnx"
    assert main(["export", str(pruned), "--int8", "--keep-gates", "--out", str(onnx_out), *FAST]) == 0
    capsys.readouterr()
    code, text, err = run_cli(capsys, "report", base, pruned, "--evaluate", "--json", tmp_path / "report.json",
                             "--markdown", tmp_path / "report.md", *FAST)
    assert code == 0, err
    deployed = json.loads((tmp_path / "report.json").read_text())["deployed"]
    assert [(r["runtime"], r["precision"]) for r in deployed] == [
        ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
    openvino_int8 = deployed[3]
    assert openvino_int8["speedup_vs_unpruned_fp32"] == record["int8"]["speedup_vs_unpruned_fp32"]["int8"]
    assert openvino_int8["top1"] == record["int8"]["top1_int8"]
    assert "exported files" in text and "openvino" in text and "onnxruntime" in text
    markdown = (tmp_path / "report.md").read_text()
    for row in deployed:  # every row's speed-up printed as the export measured it
        assert f"{row['speedup_vs_unpruned_fp32']['32']:.2f}x" in text
        assert f"| {row['runtime']} | {row['precision']} |" in markdown


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/m.onnx"], "give --out a path ending in .xml"),
    (["--out", "{tmp}/m.xml", "--runtime", "tensorrt"], "unknown --runtime 'tensorrt'"),
])
def test_bad_openvino_exports_are_one_line_and_write_nothing(ir_export, tmp_path, capsys, args, message):
    _, pruned, _, _ = ir_export
    args = [a.format(tmp=tmp_path / "out") for a in args]
    code, _, err = run_cli(capsys, "export", pruned, "--runtime", "openvino", *args)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out").exists()


def test_an_existing_weights_file_is_kept_without_overwrite(ir_export, tmp_path, capsys):
    _, pruned, _, _ = ir_export
    (tmp_path / "m.bin").write_bytes(b"an earlier result")
    code, _, err = run_cli(capsys, "export", pruned, "--runtime", "openvino", "--out", tmp_path / "m.xml")
    assert_one_line_error(code, err, "m.bin already exists", "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


@pytest.fixture
def timed_runtimes(monkeypatch):
    """The runtimes the latency target and --round-to auto really timed on, as the timer
    recorded them (a spy: the timing itself runs), with shorter rounds (a test, not a figure)
    and any uncertainty taken (the record, not its precision, is under test here)."""
    seen = set()

    def spy(models, settings, runtime="onnxruntime"):
        records = measure_latency(models, settings, runtime)
        seen.update(r["runtime"] for by_batch in records.values() for r in by_batch.values())
        return records

    measure_latency = latency_cost.measure_latency
    monkeypatch.setattr(latency_cost, "measure_latency", spy)
    monkeypatch.setattr(latency_cost.LatencyMeter, "of", classmethod(
        lambda cls, cfg: cls(cfg.latency_runtime, cfg.latency_batch, cfg.latency_threads, rounds=3, min_run_time=0.01)))
    monkeypatch.setattr(latency_cost, "MAX_UNCERTAINTY", 1.0)
    return seen


@pytest.mark.slow  # every group timed, each copy exported and compiled: about a minute
def test_prune_to_a_latency_target_on_openvino_records_openvino(ir_export, tmp_path, capsys, timed_runtimes):
    base, _, _, _ = ir_export
    code, _, err = run_cli(capsys, "prune", base, "--target-latency", "0.6", "--latency-runtime", "openvino",
                           "--out", tmp_path / "p")
    assert code == 0, err
    latency = json.loads((tmp_path / "p" / "report.json").read_text())["latency"]
    assert latency["runtime"] == "openvino" and latency["target"] == 0.6 and latency["threads"] == 1
    assert latency["before_ms"] > latency["after_ms"] > 0 and latency["kept"] < 1
    assert timed_runtimes == {"openvino"}


def test_round_to_auto_times_the_candidates_on_openvino(timed_runtimes):
    model = digits_model("resnet20", "nam", 16)
    result = prune(model, PruneConfig(ratio=None, target_macs=0.5, round_to="auto", latency_runtime="openvino"),
                   random_batches(16))
    assert result.rounding["runtime"] == "openvino" and result.rounding["chosen"] in result.rounding["ms"]
    assert timed_runtimes == {"openvino"}


@pytest.mark.slow  # a recipe end to end: train, prune, report, export (about half a minute)
def test_a_recipe_exports_openvino_ir_when_its_export_runtime_says_so(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps({  # JSON is YAML
        "name": "tiny-openvino", "model": {"name": "resnet20", "attention": "nam"},
        "data": {"dataset": "digits", "image_size": 16, "batch_size": 64},
        "train": {"epochs": 1}, "prune": {"ratio": 0.4}, "finetune": {"epochs": 0},
        "export": {"runtime": "openvino"}}))
    code, out, err = run_cli(capsys, "run", recipe, "--out", tmp_path / "out")
    assert code == 0, err
    export = tmp_path / "out" / "export"
    assert sorted(p.name for p in export.iterdir()) == ["model.bin", "model.export.json", "model.xml"]
    assert json.loads((export / "model.export.json").read_text())["runtime"] == "openvino"
    assert "OpenVINO IR:" in out and str(export / "model.xml") in out
