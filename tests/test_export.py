"""ONNX export of every architecture family, pruned and not, checked by running the
written file in onnxruntime (independently of the export's own check)."""

import onnx
import onnxruntime as ort
import pytest
import torch

import namprune
from model_helpers import digits_model, random_batches, save_digits_checkpoint
from namprune.app.exporting import export_checkpoint
from namprune.core.deploy.onnx import TOLERANCE, relative_difference
from namprune.core.pruning.prune import prune
from namprune.core.settings import ExportSettings, PruneConfig

# One architecture per family: CIFAR ResNet, our MobileNetV2, torchvision ResNet and
# MobileNet with NAM attached. ResNet-20 is pruned once at 0.5 (the file-size test uses
# it); the others are pruned twice, each time reloaded from a checkpoint.
FAMILIES = {"resnet20": 16, "mobilenetv2": 16, "tv:resnet18": 32, "tv:mobilenet_v3_small": 32}
PRUNING = {"resnet20": [0.5]}
# A fixed batch: the dynamo exporter takes about twice as long with a dynamic one, which
# the CLI tests cover.
BATCH = 8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name, pruned, fold=True)`` -> (checkpoint, ONNX file, report), made once per module."""
    cache = {}

    def export(name: str, pruned: bool, fold: bool = True):
        key = (name, pruned, fold)
        if key not in cache:
            folder = tmp_path_factory.mktemp(name.replace(":", "_"))
            model = digits_model(name, "nam", FAMILIES[name])
            ckpt = save_digits_checkpoint(folder / "model.pt", model)
            for round_, ratio in enumerate(PRUNING.get(name, [0.3, 0.3]) if pruned else []):
                prune(model, PruneConfig(ratio=ratio, seed=round_), random_batches(FAMILIES[name]))
                ckpt = save_digits_checkpoint(folder / f"pruned{round_}.pt", model.eval())
                model = namprune.load(ckpt)
            # gate_tolerance=0: these tests check the exact fold against the unfolded model
            # (removing constant gates is tested in test_gates.py)
            report = export_checkpoint(ckpt, folder / "model.onnx", ExportSettings(batch=BATCH, fold=fold, gate_tolerance=0),
                                       latency=None)
            cache[key] = ckpt, folder / "model.onnx", report
        return cache[key]

    return export


# Every family pruned (the harder graph: odd widths, replayed history); unpruned once.
@pytest.mark.parametrize("name, pruned", [(name, True) for name in FAMILIES] + [("resnet20", False)],
                         ids=lambda v: {True: "pruned", False: "unpruned"}.get(v, v) if isinstance(v, bool) else v)
def test_onnxruntime_matches_torch(exported, name, pruned):
    ckpt, path, report = exported(name, pruned)
    model = namprune.load(ckpt)
    assert bool(getattr(model, "namprune_history", None)) == pruned
    size = FAMILIES[name]
    x = torch.randn(BATCH, 1, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.std(axis=0).min() > 0  # the logits depend on the image: the comparison can fail
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    assert relative_difference(expected, got) < TOLERANCE
    assert (expected.argmax(1) == got.argmax(1)).all()
    # the export's own check ran on random inputs and on real digits images
    results = {r["inputs"]: r for r in report.parity["results"]}
    assert results["random"]["ok"] and results["test images"]["ok"] and results["test images"]["images"] == 64
    assert report.exporter == "dynamo" and report.batch == BATCH
    assert report.file_bytes == path.stat().st_size


def test_pruned_onnx_file_shrinks_with_the_parameter_count(exported):
    _, full_path, full = exported("resnet20", False)
    _, pruned_path, pruned = exported("resnet20", True)
    assert pruned.params < 0.35 * full.params
    # every parameter removed takes its 4 float32 bytes out of the file; what stays is
    # the graph itself (a few tens of KB), the same in both files
    saved_bytes = full_path.stat().st_size - pruned_path.stat().st_size
    assert saved_bytes == pytest.approx(4 * (full.params - pruned.params), rel=0.03)
    assert pruned_path.stat().st_size / full_path.stat().st_size < 0.35


def test_folded_and_unfolded_exports_both_match_torch_and_folding_leaves_fewer_nodes(exported):
    ckpt, folded_path, _ = exported("resnet20", False)
    _, unfolded_path, unfolded_report = exported("resnet20", False, fold=False)
    model = namprune.load(ckpt)
    x = torch.randn(BATCH, 1, 16, 16, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = model(x).numpy()
    nodes = {}
    for path in (folded_path, unfolded_path):
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert relative_difference(expected, got) < TOLERANCE, path.name
        nodes[path] = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert not unfolded_report.folded and all(r["ok"] for r in unfolded_report.parity["results"])
    # gate_tolerance=0 keeps every gate: one sigmoid per NAM branch, folded or not
    branches = sum(isinstance(m, (namprune.ChannelNAM, namprune.SpatialNAM)) for m in model.modules())
    assert nodes[folded_path].count("Sigmoid") == nodes[unfolded_path].count("Sigmoid") == branches > 0
    # folding turns each branch's normalization (for the pixel branch, with the reshapes around
    # it) into a few elementwise nodes: a smaller graph computing the same
    assert len(nodes[folded_path]) < len(nodes[unfolded_path])
