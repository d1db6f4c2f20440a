"""NAM gates measured on images and, where they act as constants, folded away for inference."""

import json

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import namprune
from cli_helpers import assert_one_line_error, run_cli
from model_helpers import digits_model, save_digits_checkpoint
from namprune import fold_nam, load_data
from namprune.core.deploy.onnx import relative_difference
from namprune.core.nam.fold import FoldedChannelNAM, FoldedSpatialNAM
from namprune.core.nam.gates import ConstantScale, measure_gates, remove_constant_gates
from namprune.core.nam.modules import NAM, ChannelNAM, SpatialNAM


def flatten_gates(model: nn.Module, branch: type, bias: float = 0.0) -> nn.Module:
    """Make every ``branch`` gate of ``model`` constant: scale factors near zero (the logits
    lose their dependence on x) and one shift, as a strong sparsity penalty leaves them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, branch):
                m.bn.weight.mul_(1e-6)
                m.bn.bias.fill_(bias)
    return model


def images(n=64, size=16, seed=1):
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def outputs(model, x):
    with torch.no_grad():
        return model(x)


def test_spread_is_the_largest_relative_change_the_constant_makes():
    model = digits_model("resnet20", "nam", 16)
    x = images()
    stats = {s.name: s for s in measure_gates(model, x)}
    assert len(stats) == 18 and {s.kind for s in stats.values()} == {"channel", "spatial"}
    # recompute one gate of each kind by hand from the unfolded branch
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o / i[0]))
             for name, m in model.named_modules() if isinstance(m, (ChannelNAM, SpatialNAM))]
    outputs(model, x)
    for h in hooks:
        h.remove()
    channel, spatial = seen["layers.1.0.attn.channel"], seen["layers.1.0.attn.spatial"]
    per_channel = channel.transpose(0, 1).flatten(1)
    c = per_channel.mean(1)  # one constant per channel
    stat = stats["layers.1.0.attn.channel"]
    assert stat.spread == pytest.approx(float((per_channel.std(1, unbiased=False) / c).max()), rel=1e-3)
    assert stat.max_deviation == pytest.approx(float(((per_channel - c[:, None]).abs() / c[:, None]).max()), rel=1e-3)
    s = spatial.mean()  # one constant for the whole map
    stat = stats["layers.1.0.attn.spatial"]
    assert stat.spread == pytest.approx(float(spatial.std(unbiased=False) / s), rel=1e-3)
    assert stat.max_deviation == pytest.approx(float(((spatial - s).abs() / s).max()), rel=1e-3)
    assert stats["layers.1.0.attn.channel"].constant.shape == (32,) and stats["layers.1.0.attn.spatial"].constant.dim() == 0


def test_constant_gates_fold_exactly_into_the_batchnorm_and_leave_the_graph():
    model = flatten_gates(flatten_gates(digits_model("resnet20", "nam", 16), ChannelNAM), SpatialNAM)
    x = images()
    stats = measure_gates(model, x)
    assert max(s.spread for s in stats) < 1e-5
    folded = fold_nam(model)
    bn_before = folded.layers[0][0].bn2.weight.clone()
    removed = remove_constant_gates(folded, stats, 0.01)
    assert len(removed) == 18
    assert not any(isinstance(m, (NAM, FoldedChannelNAM, FoldedSpatialNAM, ConstantScale)) for m in folded.modules())
    assert isinstance(folded.layers[0][0].attn, nn.Identity)
    # both gates read 0.5: the BatchNorm before the NAM now scales by a quarter
    torch.testing.assert_close(folded.layers[0][0].bn2.weight, bn_before * 0.25, rtol=1e-4, atol=0)
    assert relative_difference(outputs(model, x).numpy(), outputs(folded, x).numpy()) < 1e-5


@pytest.mark.parametrize("constant,varies", [(SpatialNAM, ChannelNAM), (ChannelNAM, SpatialNAM)])
def test_only_the_constant_branch_goes_and_the_other_stays_exact(constant, varies):
    model = flatten_gates(digits_model("resnet20", "nam", 16), constant)
    x = images()
    stats = measure_gates(model, x)
    assert all((s.spread < 1e-5) == (s.kind == ("spatial" if constant is SpatialNAM else "channel")) for s in stats)
    folded = fold_nam(model)
    removed = remove_constant_gates(folded, stats, 1e-3)
    assert len(removed) == 9 and all(name.endswith(constant.__name__[:-3].lower()) for name in removed)
    kept = FoldedChannelNAM if varies is ChannelNAM else FoldedSpatialNAM
    assert sum(isinstance(m, kept) for m in folded.modules()) == 9
    assert not any(isinstance(m, ConstantScale) for m in folded.modules())
    # the kept channel gate took the spatial constant back into its slope: still exact
    assert relative_difference(outputs(model, x).numpy(), outputs(folded, x).numpy()) < 1e-5


class TwoReaders(nn.Module):
    """A BatchNorm whose output the NAM and a second path both read: it cannot take the constant."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.attn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), NAM(4, 8, "channel")

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.attn(y) + y


def test_a_constant_that_no_batchnorm_can_take_becomes_one_multiply():
    model = flatten_gates(TwoReaders(), ChannelNAM, bias=0.4).eval()
    x = torch.randn(8, 1, 8, 8)
    stats = measure_gates(model, x)
    folded = fold_nam(model)
    assert remove_constant_gates(folded, stats, 0.01) == ["attn.channel"]
    assert isinstance(folded.attn.channel, ConstantScale)
    torch.testing.assert_close(folded.bn.weight, model.bn.weight)  # untouched: the second path reads it
    assert relative_difference(outputs(model, x).numpy(), outputs(folded, x).numpy()) < 1e-5


@pytest.mark.parametrize("name,size", [("mobilenetv2", 16), ("tv:resnet18", 32)])
def test_other_families_fold_their_constant_gates(name, size):
    model = flatten_gates(flatten_gates(digits_model(name, "nam", size), ChannelNAM), SpatialNAM)
    x = images(8, size)
    stats = measure_gates(model, x)
    folded = fold_nam(model)
    assert len(remove_constant_gates(folded, stats, 0.01)) == len(stats) > 0
    assert not any(isinstance(m, (FoldedChannelNAM, FoldedSpatialNAM, ConstantScale)) for m in folded.modules())
    assert relative_difference(outputs(model, x).numpy(), outputs(folded, x).numpy()) < 1e-5


@pytest.fixture(scope="module")
def flat_ckpt(tmp_path_factory):
    """A digits checkpoint whose gates act as constants, except the last block's spatial gate."""
    model = flatten_gates(flatten_gates(digits_model("resnet20", "nam", 16), ChannelNAM), SpatialNAM)
    with torch.no_grad():
        model.layers[2][2].attn.spatial.bn.weight.fill_(3.0)  # this gate varies: it must stay
    return save_digits_checkpoint(tmp_path_factory.mktemp("flat") / "model.pt", model)


def test_export_removes_the_constant_gates_and_records_what_that_changed(flat_ckpt, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, stdout, err = run_cli(capsys, "export", flat_ckpt, "--out", out, "--no-latency")
    assert code == 0, err
    report = json.loads((tmp_path / "model.export.json").read_text())
    gates = report["nam_gates"]
    assert (gates["total"], gates["removed"], gates["calibration_images"]) == (18, 17, 256)
    assert [g["name"] for g in gates["gates"] if not g["removed"]] == ["layers.2.2.attn.spatial"]
    # the file holds one gate (one Sigmoid); the check compares it with the model that was exported
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("Sigmoid") == 1
    assert all(r["ok"] for r in report["parity"]["results"])
    # and against the unfolded checkpoint, run independently here: the removal changed little
    data = load_data("digits", image_size=16, batch_size=512, augment=False)
    x, _ = next(iter(data.test))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference = outputs(namprune.load(flat_ckpt).eval(), x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    assert relative_difference(reference, got) < 1e-4
    assert gates["max_rel_diff_vs_unfolded"] < 1e-4
    unfolded = report["parity"]["vs_unfolded"]  # the check's table also compares with the checkpoint
    assert unfolded["inputs"] == "test images vs unfolded" and unfolded["max_rel_diff"] == gates["max_rel_diff_vs_unfolded"]
    assert gates["test_images"] == data.info.test_size
    assert gates["top1_exported"] == pytest.approx(100 * float((got.argmax(1) == data.test.labels.numpy()).mean()), abs=1e-3)
    assert gates["top1_change"] == pytest.approx(gates["top1_exported"] - gates["top1_unfolded"], abs=1e-3)
    assert "17 of 18 gates replaced by constants" in stdout


def test_tolerance_zero_keeps_every_gate_that_varies_and_check_only_repeats_the_removal(flat_ckpt, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, _, err = run_cli(capsys, "export", flat_ckpt, "--out", out, "--no-latency", "--gate-tolerance", "0")
    assert code == 0, err
    report = json.loads((tmp_path / "model.export.json").read_text())
    gates = report["nam_gates"]
    assert gates["removed"] < 17 and all(g["spread"] == 0 for g in gates["gates"] if g["removed"])
    # --check-only repeats the removal the export recorded beside the file
    code, stdout, err = run_cli(capsys, "export", flat_ckpt, "--out", out, "--check-only")
    assert code == 0 and "agrees" in stdout, err


@pytest.mark.parametrize("args,fragment", [(["--gate-tolerance", "1.5"], "--gate-tolerance"),
                                           (["--gate-tolerance", "-0.1"], "--gate-tolerance"),
                                           (["--calibration-images", "0"], "--calibration-images")])
def test_bad_gate_settings_are_one_line(flat_ckpt, tmp_path, capsys, args, fragment):
    code, _, err = run_cli(capsys, "export", flat_ckpt, "--out", tmp_path / "model.onnx", *args)
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_info_and_rank_show_what_each_gate_does(flat_ckpt, tmp_path, capsys):
    for command in ("info", "rank"):
        code, stdout, err = run_cli(capsys, command, flat_ckpt, "--json", tmp_path / f"{command}.json")
        assert code == 0, err
        assert "NAM gates on 256 training images" in stdout and "17 of 18 NAM gates act as constants" in stdout
        rows = json.loads((tmp_path / f"{command}.json").read_text())["nam_gates"]
        assert len(rows) == 18 and sum(r["removed"] for r in rows) == 17
        assert all(0 < r["min"] <= r["mean"] <= r["max"] < 1 for r in rows)
