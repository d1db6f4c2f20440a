"""OpenVINO in one place: an ONNX file converted to IR, run on the CPU, and quantized to INT8
by NNCF's post-training quantization.

Only imported where the ``openvino`` runtime is asked for (an optional extra: settings refuse
the runtime with the install command where it is missing).

The IR is converted from the ONNX file namprune exports and checks with onnxruntime, so
both runtimes run the same graph. It is saved with FP32 weights: ``save_model`` would
compress them to FP16 by default, a precision change the parity check would not allow.
It is compiled with an FP32 inference precision for the same reason: on CPUs with AMX or
AVX-512 BF16 OpenVINO runs FP32 models in BF16 unless told otherwise (the same
precision as onnxruntime's, so the two runtimes are timed doing the same arithmetic).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
import torch

from ..errors import first_line
from .timing import Runner

RUNTIME = "openvino"
# symmetric INT8 weights per output channel, activations per tensor; fast bias correction
INT8_SETTINGS = {"format": "OpenVINO IR, FakeQuantize (NNCF)", "weights": "int8 per channel",
                 "activations": "int8 per tensor",
                 "calibration": "nncf.quantize, preset performance, on training images"}

_CORE: ov.Core | None = None


def core() -> ov.Core:
    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


def compile_properties(threads: int | None) -> dict:
    """One stream of ``threads`` threads (default one), FP32 arithmetic, no pinning (onnxruntime
    pins none either, and a pinned thread cannot dodge another job's core)."""
    return {"INFERENCE_NUM_THREADS": threads or 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}


class IRSession:
    """A compiled OpenVINO model and one inference request: what an onnxruntime session is
    to an ONNX file (``onnx.run_onnx`` and ``onnx.fixed_batch`` take either)."""

    runtime = RUNTIME

    def __init__(self, model: ov.Model, threads: int | None = None):
        self.model = model
        self.threads = threads or 1
        self.compiled = core().compile_model(model, "CPU", compile_properties(threads))
        self.request = self.compiled.create_infer_request()
        first = model.inputs[0].get_partial_shape()[0]
        self.fixed_batch = first.get_length() if first.is_static else None

    def input_shape(self, batch: int) -> list[int]:
        return [batch, *(d.get_length() for d in self.model.inputs[0].get_partial_shape()[1:])]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[0]


class OpenVinoRunner(Runner):
    """``timing``'s view of an ``IRSession``: same timer, same rounds as onnxruntime."""

    runtime = RUNTIME

    def __init__(self, sess: IRSession):
        self.sess, self.fixed_batch, self.threads = sess, sess.fixed_batch, sess.threads

    def input_shape(self, batch: int) -> list[int]:
        return self.sess.input_shape(batch)

    def prepare(self, x: torch.Tensor) -> np.ndarray:
        return x.numpy()

    def __call__(self, x: np.ndarray) -> None:
        self.sess.request.infer({0: x}, share_inputs=True, share_outputs=True)


def from_onnx(onnx_bytes: bytes) -> ov.Model:
    """The OpenVINO model of an ONNX file's bytes (its weights inline: nothing is left to read
    from the folder once it is gone)."""
    with tempfile.TemporaryDirectory(prefix="namprune-ov-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_bytes)
        try:  # read_model's ONNX frontend, as convert_model's, without its seconds of imports per call
            return core().read_model(str(path))
        except Exception as exc:  # OpenVINO's own exception types, pages long
            raise _error("convert the ONNX file", exc) from None


def ir_bytes(model: ov.Model) -> tuple[bytes, bytes]:
    """The IR files of ``model``: the graph (.xml) and its FP32 weights (.bin)."""
    with tempfile.TemporaryDirectory(prefix="namprune-ov-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, xml, compress_to_fp16=False)
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def read_ir(xml: bytes | str | Path, weights: bytes | None = None) -> ov.Model:
    """An IR from its files' bytes (what is about to be written) or from an .xml path."""
    try:
        if weights is None:
            return core().read_model(str(xml))
        return core().read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
    except Exception as exc:
        raise _error("read the IR", exc) from None


def session(model: ov.Model | bytes | str | Path, threads: int | None = None) -> IRSession:
    """An ``IRSession`` of an OpenVINO model, or of ONNX bytes / an ONNX or IR file."""
    if isinstance(model, bytes):
        model = from_onnx(model)
    elif isinstance(model, (str, Path)):
        model = read_ir(model) if str(model).endswith(".xml") else from_onnx(Path(model).read_bytes())
    try:
        return IRSession(model, threads)
    except Exception as exc:
        raise _error("compile the model for the CPU", exc) from None


def quantize_int8(model: ov.Model, images: torch.Tensor, fixed_batch: int | None = None) -> ov.Model:
    """The INT8 model of ``model`` by NNCF's post-training quantization, its ranges calibrated on
    every one of ``images`` (one at a time, or in the file's fixed batch)."""
    batch = fixed_batch or 1
    filled = images[torch.arange(-(-len(images) // batch) * batch) % len(images)]
    dataset = nncf.Dataset([b.numpy() for b in filled.split(batch)])
    with _quiet():
        return nncf.quantize(model, dataset, subset_size=len(filled) // batch)


@contextlib.contextmanager
def _quiet():
    """NNCF logs and draws progress bars on every call; the export reports what matters."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def versions() -> dict:
    return {"openvino": ov.__version__.split("-")[0], "nncf": nncf.__version__}


def _error(what: str, exc: Exception):
    from .onnx import ExportError

    return ExportError(f"OpenVINO could not {what}: {first_line(exc)}")


__all__ = ["INT8_SETTINGS", "IRSession", "OpenVinoRunner", "compile_properties", "from_onnx", "ir_bytes",
           "quantize_int8", "read_ir", "session", "versions"]
