"""ONNX in one place: export a module (torch's dynamo exporter, the TorchScript one as the
fallback), open it in onnxruntime on the CPU, and check it against torch.

Parity: on every input batch both runtimes produce logits ``a`` (torch, the reference) and
``b`` (onnxruntime). The *relative difference* is ``max|a - b| / max|a|`` over all logits
of all batches: the largest deviation measured against the scale of the logits, which
stays meaningful where single logits are near zero (an element-wise ratio would blow up
there). It must stay under ``TOLERANCE`` and every image must get the same top-1 class.
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

from ..console import note
from ..errors import NampruneError, first_line
from ..identity import example_input
from ..settings import PARITY_TOLERANCE

TOLERANCE = PARITY_TOLERANCE
# torch's exporters: the dynamo one implements opsets 18+ (lower ones through a version
# converter that may fail), the TorchScript one 7-20. onnxruntime 1.31 runs released
# opsets up to 26 and refuses newer, still-changing ones.
MIN_OPSET, TORCHSCRIPT_MAX_OPSET = 7, 20
MAX_OPSET = min(26, onnx.defs.onnx_opset_version())
INPUT, OUTPUT = "input", "logits"
RANDOM_SAMPLES = 16  # seeded random images of the check


class ExportError(NampruneError):
    """The export failed or its output disagrees with torch: not the user's mistake, so the
    command exits with code 1 (still one line, like every ``NampruneError``)."""

    exit_code = 1


# --------------------------------------------------------------------------- arguments


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


def input_shape(model: nn.Module, batch: int) -> tuple[int, ...]:
    return tuple(example_input(model, batch).shape)


EXPORTERS = ("dynamo", "torchscript")  # to_onnx's choices: the first falls back on the second


def to_onnx(model: nn.Module, batch: int | None, opset: int | None = None, optimize: bool = True,
            exporter: str = "dynamo") -> tuple[onnx.ModelProto, str]:
    """Export ``model`` (eval mode) with the dynamo exporter, else the TorchScript one
    (``exporter="torchscript"``: that one alone, much faster to run, for models it handles).

    Returns the model and the name of the exporter that made it. ``batch=None`` gives a
    dynamic batch dimension.
    """
    if exporter not in EXPORTERS:
        raise NampruneError(f"unknown exporter {exporter!r}; choose {' or '.join(EXPORTERS)}")
    # A dynamic dimension is traced with batch 2: torch.export specializes a size of 1.
    example = torch.randn(input_shape(model, batch or 2), generator=torch.Generator().manual_seed(0))
    if exporter == "dynamo":
        try:
            return _dynamo_export(model, example, batch is None, opset, optimize), "dynamo"
        except Exception as exc:  # any exporter failure: the TorchScript exporter gets its chance
            note(f"the dynamo exporter failed ({first_line(exc)}); exporting with the TorchScript exporter instead")
    try:
        return _torchscript_export(model, example, batch is None, opset, optimize), "torchscript"
    except Exception as exc:
        raise ExportError(f"{'both ONNX exporters' if exporter == 'dynamo' else 'the TorchScript exporter'} failed; "
                          f"the TorchScript exporter said: {first_line(exc)}") from exc


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


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """CPU session options with ``threads`` intra-op threads (default ``timing.DEFAULT_THREADS``: one)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # Idle onnxruntime threads spin by default, competing with torch's threads and with
    # other jobs for the cores; a fair measurement wants them asleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def session(model: bytes | str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session with ``threads`` intra-op threads (``session_options``)."""
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise ExportError(f"onnxruntime cannot load {'the exported model' if isinstance(model, bytes) else model}: "
                          f"{first_line(exc)}") from None


# A "session" below is an onnxruntime session or an OpenVINO ``openvino.IRSession``: the
# check, the accuracy and the timing take either, so both runtimes are held to one rule.


def runtime_of(sess) -> str:
    return getattr(sess, "runtime", "onnxruntime")


def fixed_batch(sess) -> int | None:
    """The batch size the session's input requires, None when it is dynamic."""
    if not isinstance(sess, ort.InferenceSession):
        return sess.fixed_batch
    first = sess.get_inputs()[0].shape[0]
    return first if isinstance(first, int) and first > 0 else None


def run_onnx(sess, x: torch.Tensor) -> np.ndarray:
    if not isinstance(sess, ort.InferenceSession):
        return sess.run(x.numpy())
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def run_checked(sess, x: torch.Tensor) -> np.ndarray:
    """``run_onnx`` for the check: a file that cannot take the model's input fails the check."""
    try:
        return run_onnx(sess, x)
    except Exception as exc:  # the runtimes' own exception types
        raise ExportError(f"{runtime_of(sess)} could not run the file on a {tuple(x.shape)} input: "
                          f"{first_line(exc)}") from None


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
def compare(model: nn.Module, sess, x: torch.Tensor, label: str) -> dict:
    """Logits of torch (``model``, the reference) and the session's runtime on the same images."""
    runs = batches(x, fixed_batch(sess))
    reference = np.concatenate([model(b).numpy() for b in runs])
    other = np.concatenate([run_checked(sess, b) for b in runs])
    agree = int((reference.argmax(1) == other.argmax(1)).sum())
    rel = relative_difference(reference, other)
    return {"inputs": label, "images": len(reference), "max_abs_diff": float(np.abs(reference - other).max()),
            "max_rel_diff": rel, "top1_agree": agree, "ok": rel < TOLERANCE and agree == len(reference)}


def check_parity(model: nn.Module, sess, test_images: torch.Tensor | None = None) -> dict:
    """Compare on seeded random inputs and, when given, real test images; raise ``ExportError``
    with the measured difference when any comparison fails."""
    shape = input_shape(model, RANDOM_SAMPLES)
    results = [compare(model, sess, torch.randn(shape, generator=torch.Generator().manual_seed(0)), "random")]
    if test_images is not None:
        results.append(compare(model, sess, test_images, "test images"))
    for r in results:
        if not r["ok"]:
            raise ExportError(f"parity check failed on {r['inputs']} ({runtime_of(sess)}): max relative difference "
                              f"{r['max_rel_diff']:.3g} "
                              f"(limit {TOLERANCE:g}; max |difference| {r['max_abs_diff']:.3g}), top-1 agrees on "
                              f"{r['top1_agree']}/{r['images']} images")
    return {"runtime": runtime_of(sess), "tolerance": TOLERANCE,
            "definition": f"max|{runtime_of(sess)} - torch| / max|torch| over all logits", "results": results}
