"""ONNX export of a checkpoint, checked against torch with onnxruntime, with measured latency.

``export_checkpoint`` folds the NAM branches (``fold_nam``), exports with torch's dynamo
exporter (falling back to the TorchScript exporter when it fails, or when it cannot give
the opset asked for), runs the file in onnxruntime next to the unfolded torch model, and
only then writes the ONNX file and its record beside it (``model.onnx`` ->
``model.export.json``, so several exports share a folder). A file that fails the check is
not written.

Parity: on every input batch both runtimes produce logits ``a`` (torch, the reference) and
``b`` (onnxruntime). The *relative difference* is ``max|a - b| / max|a|`` over all logits
of all batches: the largest deviation measured against the scale of the logits, which
stays meaningful where single logits are near zero (an element-wise ratio would blow up
there). It must stay under ``TOLERANCE`` and every image must get the same top-1 class.

NAM gates that act as constants on training images are replaced by them before export
(``gates.fold_for_export``); the check holds the file to the model exported, and reports the
difference from the unfolded model and its test top-1. ``--int8``: ``quantize``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from . import checkpoint
from .calibrate import check_count
from .datasource import GATE_IMAGES, calibration_images, checkpoint_data
from .console import note
from .engine import evaluate
from .errors import NampruneError
from .files import read_json, write_atomic, write_json
from .gates import DEFAULT_TOLERANCE, check_tolerance, fold_for_export, has_gates
from .graph import example_input
from .measure import count_params
from .quantize import int8_path, int8_record, onnx_accuracy, quantize_int8, unpruned_source
from .timing import LatencySettings, measure_latency, session_options, speedups

TOLERANCE = 1e-4
# torch's exporters: the dynamo one implements opsets 18+ (lower ones through a version
# converter that may fail), the TorchScript one 7-20. onnxruntime 1.31 runs released
# opsets up to 26 and refuses newer, still-changing ones.
MIN_OPSET, TORCHSCRIPT_MAX_OPSET = 7, 20
MAX_OPSET = min(26, onnx.defs.onnx_opset_version())
INPUT, OUTPUT = "input", "logits"
RANDOM_SAMPLES, TEST_SAMPLES = 16, 64


class ExportError(RuntimeError):
    """The export failed or its output disagrees with torch: not a user error (exit code 1)."""


def _first_line(exc: Exception, limit: int = 200) -> str:
    """An exception in one short line (exporters and onnxruntime raise pages)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


# --------------------------------------------------------------------------- arguments


def parse_batch(text: str | int) -> int | None:
    """``dynamic`` -> None (any batch size); a positive integer -> that fixed batch size."""
    if str(text) == "dynamic":
        return None
    try:
        batch = int(text)
    except ValueError:
        batch = 0
    if batch < 1:
        raise NampruneError(f"--batch must be 'dynamic' or a positive batch size, got {text!r}")
    return batch


def check_opset(opset: int | None) -> int | None:
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise NampruneError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (this onnx), got {opset}")
    return opset


def record_path(onnx_path: str | Path) -> Path:
    """The JSON record of an export, named after its ONNX file: ``dir/a.onnx`` -> ``dir/a.export.json``."""
    return Path(onnx_path).with_suffix(".export.json")


def output_paths(out: str | Path, overwrite: bool) -> tuple[Path, Path]:
    """The ONNX file and its record beside it; refuses to replace either without ``overwrite``."""
    onnx_path = Path(out)
    json_path = record_path(onnx_path)
    if onnx_path.is_dir():
        raise NampruneError(f"--out {onnx_path} is a folder; give the path of the ONNX file to write")
    for path in (onnx_path, json_path):
        if path.exists() and not overwrite:
            raise NampruneError(f"{path} already exists; pass --overwrite to replace it")
    return onnx_path, json_path


# --------------------------------------------------------------------------- export


def input_shape(model: nn.Module, batch: int) -> tuple[int, ...]:
    return tuple(example_input(model, batch).shape)


def to_onnx(model: nn.Module, batch: int | None, opset: int | None = None,
            optimize: bool = True) -> tuple[onnx.ModelProto, str]:
    """Export ``model`` (eval mode) with the dynamo exporter, else the TorchScript one.

    Returns the model and the name of the exporter that made it. ``batch=None`` gives a
    dynamic batch dimension.
    """
    # A dynamic dimension is traced with batch 2: torch.export specializes a size of 1.
    example = torch.randn(input_shape(model, batch or 2), generator=torch.Generator().manual_seed(0))
    try:
        return _dynamo_export(model, example, batch is None, opset, optimize), "dynamo"
    except Exception as exc:  # any exporter failure: the TorchScript exporter gets its chance
        note(f"the dynamo exporter failed ({_first_line(exc)}); exporting with the TorchScript exporter instead")
    try:
        return _torchscript_export(model, example, batch is None, opset, optimize), "torchscript"
    except Exception as exc:
        raise ExportError(f"both ONNX exporters failed; the TorchScript exporter said: {_first_line(exc)}") from exc


def _dynamo_export(model, example, dynamic: bool, opset: int | None, optimize: bool) -> onnx.ModelProto:
    with _quiet_exporters():
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=opset, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None, optimize=optimize, verbose=False)
    proto = program.model_proto
    if optimize:
        strip_debug_info(proto)
    produced = opset_of(proto)
    if opset is not None and produced != opset:
        # Below opset 18 the dynamo exporter converts its output, and when the converter
        # fails it keeps opset 18 with only a log message: not what was asked for.
        raise ExportError(f"it produced opset {produced}, not the requested {opset}")
    return proto


def _torchscript_export(model, example, dynamic: bool, opset: int | None, optimize: bool) -> onnx.ModelProto:
    if opset is not None and opset > TORCHSCRIPT_MAX_OPSET:
        raise ExportError(f"it supports opsets up to {TORCHSCRIPT_MAX_OPSET}, not {opset}")
    buffer = io.BytesIO()
    axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic else None
    with _quiet_exporters():
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes=axes, do_constant_folding=optimize)
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet_exporters():
    """The exporters warn and log at length (deprecation, tracer, version-converter
    tracebacks); what matters reaches the user as an exception or as the check's verdict."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the dynamo exporter's per-node metadata (Python stack traces with local paths, FX
    node text, module names): debugging aids, 190 KB of a 1.3 MB ResNet-20 file."""
    for graph_nodes in [proto.graph.node, *(f.node for f in proto.functions)]:
        for node in graph_nodes:
            del node.metadata_props[:]


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def onnx_params(proto: onnx.ModelProto) -> int:
    """Elements stored in the file's initializers (weights and constants)."""
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer)


# --------------------------------------------------------------------------- onnxruntime


def session(model: bytes | str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session with ``threads`` intra-op threads (``timing.session_options``)."""
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ExportError(f"onnxruntime cannot load {'the exported model' if isinstance(model, bytes) else model}: "
                          f"{_first_line(exc)}") from None


def fixed_batch(sess: ort.InferenceSession) -> int | None:
    """The batch size the session's input requires, None when it is dynamic."""
    first = sess.get_inputs()[0].shape[0]
    return first if isinstance(first, int) and first > 0 else None


def run_onnx(sess: ort.InferenceSession, x: torch.Tensor) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def run_checked(sess: ort.InferenceSession, x: torch.Tensor) -> np.ndarray:
    """``run_onnx`` for the check: a file that cannot take the model's input fails the check."""
    try:
        return run_onnx(sess, x)
    except Exception as exc:  # onnxruntime's own exception types
        raise ExportError(f"onnxruntime could not run the file on a {tuple(x.shape)} input: "
                          f"{_first_line(exc)}") from None


# --------------------------------------------------------------------------- parity


def relative_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """``max|reference - other| / max|reference|`` (the absolute difference if the reference is all zero)."""
    scale = float(np.abs(reference).max())
    diff = float(np.abs(reference - other).max())
    return diff / scale if scale > 0 else diff


def batches(x: torch.Tensor, batch: int | None, largest: int = 32) -> list[torch.Tensor]:
    """``x`` cut into runs of exactly ``batch`` images (repeating images to fill the last one).
    A dynamic batch gets a single image first (the export was traced with two, and batch 1
    is what a specialized graph gets wrong), then runs of at most ``largest``."""
    if batch is None:
        return [x[:1], *x[1:].split(largest)] if len(x) > 1 else [x]
    filled = x[torch.arange(-(-len(x) // batch) * batch) % len(x)]
    return list(filled.split(batch))


@torch.no_grad()
def compare(model: nn.Module, sess: ort.InferenceSession, x: torch.Tensor, label: str) -> dict:
    """Logits of torch (``model``, the reference) and onnxruntime on the same images."""
    runs = batches(x, fixed_batch(sess))
    reference = np.concatenate([model(b).numpy() for b in runs])
    other = np.concatenate([run_checked(sess, b) for b in runs])
    agree = int((reference.argmax(1) == other.argmax(1)).sum())
    rel = relative_difference(reference, other)
    return {"inputs": label, "images": len(reference), "max_abs_diff": float(np.abs(reference - other).max()),
            "max_rel_diff": rel, "top1_agree": agree, "ok": rel < TOLERANCE and agree == len(reference)}


def check_parity(model: nn.Module, sess: ort.InferenceSession, test_images: torch.Tensor | None = None) -> dict:
    """Compare on seeded random inputs and, when given, real test images; raise ``ExportError``
    with the measured difference when any comparison fails."""
    shape = input_shape(model, RANDOM_SAMPLES)
    results = [compare(model, sess, torch.randn(shape, generator=torch.Generator().manual_seed(0)), "random")]
    if test_images is not None:
        results.append(compare(model, sess, test_images, "test images"))
    for r in results:
        if not r["ok"]:
            raise ExportError(f"parity check failed on {r['inputs']}: max relative difference {r['max_rel_diff']:.3g} "
                              f"(limit {TOLERANCE:g}; max |difference| {r['max_abs_diff']:.3g}), top-1 agrees on "
                              f"{r['top1_agree']}/{r['images']} images")
    return {"tolerance": TOLERANCE, "definition": "max|onnxruntime - torch| / max|torch| over all logits",
            "results": results}


def removal_effect(model: nn.Module, sess: ort.InferenceSession, images: torch.Tensor | None, data) -> dict:
    """What replacing gates by constants changed: the file against the unfolded ``model`` (on
    test images, else the check's random inputs), and top-1 on the whole test split."""
    x = images if images is not None else torch.randn(input_shape(model, RANDOM_SAMPLES),
                                                        generator=torch.Generator().manual_seed(0))
    c = compare(model, sess, x, f"{'test images' if images is not None else 'random'} vs unfolded")
    effect = {"vs_unfolded": {**c, "ok": None}, "max_rel_diff_vs_unfolded": c["max_rel_diff"]}
    if data is not None:
        unfolded, exported = evaluate(model, data.test, "cpu")["top1"], onnx_accuracy(sess, data.test)
        effect |= {"top1_unfolded": unfolded, "top1_exported": exported["top1"], "test_images": exported["images"],
                   "top1_change": round(exported["top1"] - unfolded, 4)}
    return effect


# --------------------------------------------------------------------------- the whole job


def export_checkpoint(ckpt: str | Path, out: str | Path, opset: int | None = None, batch: str | int = "dynamic",
                      fold: bool = True, check: bool = True, optimize: bool = True,
                      latency: bool | LatencySettings = True, data_dir=None, overwrite: bool = False,
                      threads: int | None = None, gate_tolerance: float = DEFAULT_TOLERANCE, int8: bool = False,
                      calibration: int = GATE_IMAGES) -> dict:
    """Export a checkpoint to ``out`` (ONNX) and its record beside it (``record_path``); returns the report.

    Raises ``NampruneError`` for bad arguments (before any work) and ``ExportError`` when
    both exporters fail or the check fails; then nothing is written. ``latency``: True (the
    default settings with ``threads``), False, or the ``LatencySettings`` to time with.
    ``gate_tolerance``: NAM gates whose spread on ``calibration`` training images is at most
    this are replaced by constants. ``int8`` also writes ``<out stem>.int8.onnx``.
    """
    fixed = parse_batch(batch)
    settings = latency if isinstance(latency, LatencySettings) else LatencySettings(threads=threads) if latency else None
    check_opset(opset)
    check_tolerance(gate_tolerance)
    check_count(calibration)
    onnx_path, json_path = output_paths(out, overwrite)
    if int8 and int8_path(onnx_path).exists() and not overwrite:
        raise NampruneError(f"{int8_path(onnx_path)} already exists; pass --overwrite to replace it")
    payload = checkpoint.read(ckpt)
    model = checkpoint.build(payload).eval()
    data = checkpoint_data(payload, data_dir) if check or int8 or fold and has_gates(model) else None
    if int8 and data is None:
        raise NampruneError(f"--int8 calibrates on {payload['data']['name']} training images: give --data-dir")
    calib = calibration_images(data, calibration)
    images = test_images(data) if check else None
    exported, gates = fold_for_export(model, calib, gate_tolerance) if fold else (model, None)

    proto, exporter = to_onnx(exported, fixed, opset, optimize)
    onnx_bytes = proto.SerializeToString()
    sess = session(onnx_bytes, settings.num_threads if settings else None)
    parity = check_parity(exported, sess, images) if check else None
    if gates and gates["removed"]:  # the check above held the file to what was exported; this, to the checkpoint
        gates |= removal_effect(model, sess, images, data)
        parity = parity and {**parity, "vs_unfolded": gates.pop("vs_unfolded")}
    files = {onnx_path: onnx_bytes}
    timed = {"onnxruntime": sess, "torch_eager": model, **({"torch_eager_folded": exported} if fold else {})}
    int8_report = None
    if int8:
        files[int8_path(onnx_path)] = quantize_int8(onnx_bytes, calib, fixed)
        timed["onnxruntime_int8"] = sess8 = session(files[int8_path(onnx_path)], settings and settings.num_threads)
        int8_report = int8_record(sess, sess8, files[int8_path(onnx_path)], int8_path(onnx_path), data, len(calib))
        source = unpruned_source(ckpt)
        int8_report["unpruned_source"] = str(source) if source else None
        if source and settings:
            timed["onnxruntime_unpruned"] = unpruned_session(source, calib, gate_tolerance, fixed, opset, optimize,
                                                             settings.num_threads)
    timings = measure_latency(timed, settings) if settings else None
    if int8_report and timings:
        int8_report["speedup_vs_fp32"] = speedups(timings, "onnxruntime", "onnxruntime_int8")
        if "onnxruntime_unpruned" in timings:
            int8_report["speedup_vs_unpruned_fp32"] = {
                "fp32": speedups(timings, "onnxruntime_unpruned", "onnxruntime"),
                "int8": speedups(timings, "onnxruntime_unpruned", "onnxruntime_int8")}
    report = {
        "source": str(checkpoint.model_file(ckpt)), "onnx": str(onnx_path),
        "model": payload["arch"]["name"], "attention": payload["arch"]["attention"],
        "pruning_steps": len(payload.get("pruning_history") or []),
        "exporter": exporter, "opset": opset_of(proto), "batch": fixed or "dynamic",
        "input_shape": [fixed or "batch", *input_shape(model, 1)[1:]],
        "folded": fold, "optimized": optimize, "nam_gates": gates,
        "file_bytes": len(onnx_bytes), "params": count_params(model), "onnx_params": onnx_params(proto),
        "parity": parity, "int8": int8_report,
        "latency": {"settings": settings.describe(), "records": timings} if timings else None,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    for path, content in files.items():
        write_atomic(path, lambda tmp, content=content: tmp.write_bytes(content))
    write_json(json_path, report)
    return report


def test_images(data) -> torch.Tensor | None:
    """Up to ``TEST_SAMPLES`` test images for the check (the first test batch: 128), None without data."""
    return None if data is None else next(iter(data.test))[0][:TEST_SAMPLES].cpu()


def unpruned_session(source: Path, calib, gate_tolerance: float, fixed, opset, optimize, threads) -> ort.InferenceSession:
    """The unpruned model exported as ``namprune export`` would, for timing next to the pruned one."""
    model = checkpoint.load(source).eval()
    exported, _ = fold_for_export(model, calib, gate_tolerance)
    return session(to_onnx(exported, fixed, opset, optimize)[0].SerializeToString(), threads)


def check_file(ckpt: str | Path, onnx_file: str | Path, data_dir=None, gate_tolerance: float | None = None,
               calibration: int | None = None) -> dict:
    """Check an existing ONNX file against the checkpoint it came from, folded and with its constant
    gates removed as its export did (as recorded beside it, unless given); raises ``ExportError``
    with the measured difference if it disagrees."""
    onnx_file = Path(onnx_file)
    if not onnx_file.is_file():
        raise NampruneError(f"no ONNX file at {onnx_file}")
    recorded = recorded_gates(onnx_file)
    gate_tolerance = check_tolerance(recorded.get("tolerance", DEFAULT_TOLERANCE) if gate_tolerance is None else gate_tolerance)
    calibration = check_count(recorded.get("calibration_images") or GATE_IMAGES if calibration is None else calibration)
    payload = checkpoint.read(ckpt)
    model = checkpoint.build(payload).eval()
    try:
        sess = session(onnx_file)
    except ExportError as exc:  # here the file is the user's input, not the export's output
        raise NampruneError(str(exc)) from None
    data = checkpoint_data(payload, data_dir)
    exported, _ = fold_for_export(model, calibration_images(data, calibration), gate_tolerance)
    return check_parity(exported, sess, test_images(data))


def recorded_gates(onnx_file: Path) -> dict:
    """The ``nam_gates`` record of the export that wrote ``onnx_file`` ({} when there is none)."""
    json_path = output_paths(onnx_file, overwrite=True)[1]
    report = read_json(json_path) if json_path.is_file() else {}
    return (report.get("nam_gates") or {}) if Path(report.get("onnx", "")).name == onnx_file.name else {}
