"""``namprune export --int8``: onnxruntime static quantization after pruning, its accuracy and speed."""

import json

import onnx
import onnxruntime as ort
import pytest

from cli_helpers import assert_one_line_error, run_cli
from model_helpers import digits_model, pruned_digits_run
from namprune import load_data
from namprune.app.run_folders import unpruned_source
from namprune.cli import main
from namprune.core.store import checkpoint

FAST = ["--rounds", "2", "--min-time", "0.02"]


@pytest.fixture(scope="module")
def pruned_export(tmp_path_factory):
    """A digits base, a run pruned from it (with the report.json prune writes), and its INT8 export."""
    root = tmp_path_factory.mktemp("int8")
    base, _ = pruned_digits_run(root)
    out = root / "export" / "model.onnx"
    code = main(["export", str(root / "pruned"), "--out", str(out), "--int8", *FAST])
    assert code == 0
    return base, root / "pruned", out, json.loads(out.with_name("model.export.json").read_text())


def accuracy(path, images, labels):
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]
    return 100 * float((logits.argmax(1) == labels).mean())


def test_int8_file_is_quantized_smaller_and_its_top1_is_what_onnxruntime_gives(pruned_export):
    _, _, out, report = pruned_export
    int8 = out.with_name("model.int8.onnx")
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.export.json", "model.int8.onnx", "model.onnx"]
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    record = report["int8"]
    assert record["file"] == str(int8) and record["file_bytes"] == int8.stat().st_size
    assert int8.stat().st_size < out.stat().st_size  # 8-bit weights (and the graph of QDQ nodes)
    data = load_data("digits", image_size=16, batch_size=512, augment=False)
    images, labels = (t.numpy() for t in next(iter(data.test)))
    assert record["test_images"] == len(labels) == data.info.test_size
    assert record["top1_fp32"] == pytest.approx(accuracy(out, images, labels), abs=1e-3)
    assert record["top1_int8"] == pytest.approx(accuracy(int8, images, labels), abs=1e-3)
    assert record["calibration_images"] == 256 and record["format"] == "QDQ"


def test_the_combined_speedup_is_measured_against_the_unpruned_fp32_model(pruned_export):
    base, pruned, _, report = pruned_export
    assert unpruned_source(pruned) == checkpoint.model_file(base).resolve()
    assert report["int8"]["unpruned_source"] == str(checkpoint.model_file(base).resolve())
    records = report["latency"]["records"]
    assert {"onnxruntime", "onnxruntime_int8", "onnxruntime_unpruned"} <= set(records)
    def ratio(slow, fast, batch):  # measured within each round, the median of the two rounds
        return sum(a / b for a, b in zip(records[slow][batch]["round_ms"], records[fast][batch]["round_ms"])) / 2

    for batch in ("1", "32"):
        combined = report["int8"]["speedup_vs_unpruned_fp32"]
        assert combined["int8"][batch] == pytest.approx(ratio("onnxruntime_unpruned", "onnxruntime_int8", batch), rel=1e-3)
        assert combined["fp32"][batch] == pytest.approx(ratio("onnxruntime_unpruned", "onnxruntime", batch), rel=1e-3)
        assert report["int8"]["speedup_vs_fp32"][batch] == pytest.approx(ratio("onnxruntime", "onnxruntime_int8", batch),
                                                                           rel=1e-3)


def test_unpruned_model_has_no_unpruned_source(pruned_export):
    base, *_ = pruned_export
    assert unpruned_source(base) is None


def test_int8_without_training_images_is_one_line(tmp_path, capsys):
    model = digits_model("resnet20", "nam", 32)
    ckpt = checkpoint.save(tmp_path / "in" / "model.pt", model, {**load_data("digits", image_size=32).info.as_dict(),
                                                                 "name": "cifar10"})
    code, _, err = run_cli(capsys, "export", ckpt, "--out", tmp_path / "out" / "model.onnx", "--int8")
    assert_one_line_error(code, err, "--int8", "--data-dir")
    assert not (tmp_path / "out").exists()


def test_existing_int8_file_is_kept_without_overwrite(pruned_export, tmp_path, capsys):
    _, pruned, _, _ = pruned_export
    existing = tmp_path / "model.int8.onnx"
    existing.write_bytes(b"an earlier result")
    code, _, err = run_cli(capsys, "export", pruned, "--out", tmp_path / "model.onnx", "--int8")
    assert_one_line_error(code, err, "model.int8.onnx already exists", "--overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]
    assert existing.read_bytes() == b"an earlier result"
