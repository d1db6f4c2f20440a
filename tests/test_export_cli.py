"""``namprune export`` end to end: files written, fallback, a broken file caught, bad input."""

import json
import re

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import namprune
from cli_helpers import assert_one_line_error, run_cli, run_subprocess
from model_helpers import digits_model, save_digits_checkpoint
from namprune.core.deploy.onnx import TOLERANCE, relative_difference


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    return save_digits_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", digits_model("resnet20", "nam", 16))


@pytest.fixture(scope="module")
def exported(digits_ckpt, tmp_path_factory):
    """The default export (dynamic batch, NAM folded, checked, latency measured), run as a user would,
    keeping every gate (--gate-tolerance 0) so the file is the unfolded model's exact equal
    (removing constant gates is tested in test_gates.py)."""
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    proc = run_subprocess("export", digits_ckpt, "--out", out, "--threads", "1", "--gate-tolerance", "0")
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_export_writes_the_file_and_its_report(exported, digits_ckpt):
    proc, out = exported
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.export.json", "model.onnx"]  # no temporary files
    report = json.loads(out.with_name("model.export.json").read_text())
    assert report["exporter"] == "dynamo" and report["batch"] == "dynamic" and report["folded"]
    assert report["file_bytes"] == out.stat().st_size
    assert report["params"] == sum(p.numel() for p in namprune.load(digits_ckpt).parameters())
    assert [r["inputs"] for r in report["parity"]["results"]] == ["random", "test images"]
    assert all(r["ok"] and r["max_rel_diff"] < TOLERANCE for r in report["parity"]["results"])
    assert report["latency"]["settings"]["threads"] == 1
    for name, runtime in (("onnxruntime", "onnxruntime"), ("torch_eager", "torch"), ("torch_eager_folded", "torch")):
        records = report["latency"]["records"][name]
        assert set(records) == {"1", "32"}
        for batch, r in records.items():
            assert (r["runtime"], r["batch"], r["threads"]) == (runtime, int(batch), 1)
            assert r["median_ms"] > 0 and len(r["round_ms"]) == 5 and r["spread"] >= 0
            assert r["trusted"] == (r["untrusted_because"] is None)
    # every gate measured on training images, none removed (they all vary, if only a little)
    gates = report["nam_gates"]
    assert gates["total"] == 18 and gates["removed"] == 0 and gates["calibration_images"] == 256
    assert gates["tolerance"] == 0 and all(g["spread"] > 0 for g in gates["gates"])
    assert "onnxruntime vs torch" in proc.stdout and "median CPU latency" in proc.stdout
    assert proc.stderr == ""  # the exporters' warnings and logs are kept out of the user's way


def test_dynamic_batch_runs_any_batch_size(exported, digits_ckpt):
    _, out = exported
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = namprune.load(digits_ckpt)
    for batch in (1, 3, 40):
        x = torch.randn(batch, 1, 16, 16)
        with torch.no_grad():
            expected = model(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, 10) and relative_difference(expected, got) < TOLERANCE


def test_opset_the_dynamo_exporter_cannot_make_falls_back_to_torchscript(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, stdout, err = run_cli(capsys, "export", digits_ckpt, "--out", out, "--opset", "13", "--batch", "4",
                                "--no-latency")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.strip()]
    assert len(notes) == 1 and "dynamo exporter failed" in notes[0] and "TorchScript" in notes[0], err
    report = json.loads((tmp_path / "model.export.json").read_text())
    assert report["exporter"] == "torchscript" and report["opset"] == 13 and report["batch"] == 4
    model = onnx.load(str(out))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [4, 1, 16, 16]
    assert all(r["ok"] for r in report["parity"]["results"]) and report["latency"] is None


def _tamper(source, target, scale=1.5):
    """Scale the weights of the first convolution of an ONNX file: a real, wrong model."""
    model = onnx.load(str(source))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * scale, weight.name))
    onnx.save(model, str(target))


def test_a_broken_file_fails_the_check_with_the_measured_difference(exported, digits_ckpt, tmp_path, capsys):
    _, out = exported
    # the check repeats what the export recorded beside the file (here: every gate kept)
    code, stdout, err = run_cli(capsys, "export", digits_ckpt, "--out", out, "--check-only")
    assert code == 0 and "agrees" in stdout, err

    broken = tmp_path / "broken.onnx"
    _tamper(out, broken)
    code, _, err = run_cli(capsys, "export", digits_ckpt, "--out", broken, "--check-only", "--gate-tolerance", "0")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: parity check failed"), err
    reported = float(re.search(r"max relative difference ([0-9.e+-]+)", lines[0]).group(1))
    # the difference the message reports is the one onnxruntime really shows
    x = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = namprune.load(digits_ckpt)(x).numpy()
    got = ort.InferenceSession(str(broken), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert reported > TOLERANCE
    assert reported == pytest.approx(relative_difference(expected, got), rel=1e-2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]  # the check writes nothing


@pytest.mark.parametrize("args,fragment", [
    (["--batch", "0"], "--batch must be 'dynamic' or a positive batch size"),
    (["--batch", "many"], "--batch must be 'dynamic' or a positive batch size"),
    (["--opset", "99"], "--opset must be between 7 and"),
    (["--opset", "5"], "--opset must be between 7 and"),
    (["--check-only", "--no-check"], "contradict"),
    (["--threads", "0"], "--threads"),
])
def test_bad_arguments_are_one_line_and_write_nothing(digits_ckpt, tmp_path, capsys, args, fragment):
    code, _, err = run_cli(capsys, "export", digits_ckpt, "--out", tmp_path / "model.onnx", *args)
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_bad_files_are_one_line_and_write_nothing(digits_ckpt, tmp_path, capsys):
    plain = tmp_path / "in" / "plain.pt"
    plain.parent.mkdir()
    torch.save(digits_model("resnet20").state_dict(), plain)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", plain, "--out", out / "model.onnx")
    assert_one_line_error(code, err, "not a namprune checkpoint")
    code, _, err = run_cli(capsys, "export", digits_ckpt, "--out", out / "missing.onnx", "--check-only")
    assert_one_line_error(code, err, "no ONNX file")
    code, _, err = run_cli(capsys, "export", digits_ckpt, "--out", plain, "--check-only")
    assert_one_line_error(code, err, "onnxruntime cannot load")
    assert not out.exists()


def test_existing_output_is_kept_without_overwrite(exported, digits_ckpt, capsys):
    _, out = exported
    before = out.read_bytes(), out.with_name("model.export.json").read_bytes()
    code, _, err = run_cli(capsys, "export", digits_ckpt, "--out", out)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert (out.read_bytes(), out.with_name("model.export.json").read_bytes()) == before


# --------------------------------------------------------------------------- gates removed only when predictions stay


def _file_agreement(ckpt, onnx_file) -> tuple[int, int]:
    """Digits test images on which the real file (onnxruntime) and namprune.load's model give the same class."""
    model = namprune.load(ckpt).eval()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    test = namprune.load_data("digits", image_size=model.namprune_spec["input_size"]).test
    agree = total = 0
    with torch.no_grad():
        for images, _ in test:
            ours = model(images).argmax(1).numpy()
            agree += int((sess.run(None, {"input": images.numpy()})[0].argmax(1) == ours).sum())
            total += len(ours)
    return agree, total


@pytest.fixture(scope="module")
def sparse_2_epochs(tmp_path_factory):
    """The issue's model: ResNet-20 sparse-trained for 2 epochs on digits, its logits close together,
    where replacing every gate within the spread tolerance changed 4 % of the predictions."""
    run = tmp_path_factory.mktemp("sparse") / "train"
    proc = run_subprocess("train", "--epochs", "2", "--attention", "nam", "--sparsity", "1e-4", "--no-bn-weight-decay",
                          "--out", run)
    assert proc.returncode == 0, proc.stderr
    return run / "model.pt"


def test_the_default_export_keeps_the_models_predictions(sparse_2_epochs, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, stdout, err = run_cli(capsys, "export", sparse_2_epochs, "--out", out, "--no-latency")
    assert code == 0, err
    agree, total = _file_agreement(sparse_2_epochs, out)
    assert total == 360 and agree >= 0.995 * total
    gates = json.loads(out.with_name("model.export.json").read_text())["nam_gates"]
    check = gates["check"]
    assert check["candidates"] > 0 and check["refused"] == check["candidates"] - gates["removed"]
    assert check["images"] == 256 + 64 and check["top1_agree"] >= 0.999 * check["images"]
    assert check["max_rel_diff"] <= check["logit_tolerance"]
    # the record's count of agreeing test images is the one onnxruntime shows
    assert (gates["test_top1_agree"], gates["test_images"]) == (agree, total)
    assert f"on {check['top1_agree']}/{check['images']} images checked" in " ".join(stdout.replace("│", " ").split())
    # --check-only repeats the same removal and finds the file equal to it
    code, stdout, err = run_cli(capsys, "export", sparse_2_epochs, "--out", out, "--check-only")
    assert code == 0 and "agrees" in stdout, err


def test_keep_gates_exports_every_gate_and_the_file_is_exact(sparse_2_epochs, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, _, err = run_cli(capsys, "export", sparse_2_epochs, "--out", out, "--no-latency", "--keep-gates")
    assert code == 0, err
    gates = json.loads(out.with_name("model.export.json").read_text())["nam_gates"]
    assert gates["removed"] == 0 and gates["mode"] == "keep" and gates["total"] == 18
    assert _file_agreement(sparse_2_epochs, out) == (360, 360) == (gates["test_top1_agree"], gates["test_images"])
    assert gates["max_rel_diff_vs_unfolded"] < 1e-5  # folding alone is exact
    sigmoids = [n for n in onnx.load(str(out)).graph.node if n.op_type == "Sigmoid"]
    assert len(sigmoids) == 18  # one per NAM branch: nothing replaced
