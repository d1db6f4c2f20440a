"""INT8 after pruning: onnxruntime's static quantization of an exported model, calibrated on
training images, and the accuracy of ONNX models on the test split.

``quantize_int8`` runs onnxruntime's pre-processing (shape inference, graph optimization)
and ``quantize_static`` in the QDQ format: weights as signed 8-bit per output channel,
activations as unsigned 8-bit per tensor with MinMax ranges gathered on the calibration
images (U8S8, the combination onnxruntime's x86 kernels run fastest; see BENCHMARKS.md,
"INT8 after pruning").

Pruning and quantization multiply: ``unpruned_source`` follows a pruned run's
``report.json`` back to the checkpoint it was pruned from, so the export can time the
unpruned FP32 model next to the pruned INT8 one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)

from .onnx import fixed_batch, run_onnx


SETTINGS = {"format": "QDQ", "weights": "int8 per channel", "activations": "uint8 per tensor",
            "calibration": "MinMax on training images"}


def int8_path(onnx_path: Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    return onnx_path.with_name(f"{onnx_path.stem}.int8{onnx_path.suffix or '.onnx'}")


class _Images(CalibrationDataReader):
    """Calibration batches for onnxruntime's calibrator."""

    def __init__(self, input_name: str, images: torch.Tensor, batch: int):
        self.batches = iter([{input_name: b.numpy()} for b in _fill(images, batch).split(batch)])

    def get_next(self):
        return next(self.batches, None)


def _fill(images: torch.Tensor, batch: int) -> torch.Tensor:
    """Whole batches of ``batch`` images, repeating images to fill the last one."""
    return images[torch.arange(-(-len(images) // batch) * batch) % len(images)]


def quantize_int8(fp32: bytes, images: torch.Tensor, fixed_batch: int | None = None) -> bytes:
    """The INT8 (QDQ) model of the FP32 ONNX model ``fp32``, calibrated on ``images``."""
    with tempfile.TemporaryDirectory(prefix="namprune-int8-") as tmp, _quiet():
        source, prepared, target = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(prepared))
        input_name = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name
        quantize_static(str(prepared), str(target), _Images(input_name, images, fixed_batch or 32),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        return target.read_bytes()


@contextlib.contextmanager
def _quiet():
    """The quantizer logs and prints its advice on every call; the export reports what matters."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def onnx_accuracy(sess, loader) -> dict:
    """Top-1 / top-5 (%) of an onnxruntime session or OpenVINO ``IRSession`` over a test loader
    (a fixed-batch file gets its batches filled by repetition; the repeats are not counted)."""
    fixed = fixed_batch(sess)
    top1 = top5 = total = 0
    for images, labels in loader:
        images, labels = images.cpu(), labels.cpu()
        logits = np.concatenate([run_onnx(sess, b)
                                 for b in (_fill(images, fixed).split(fixed) if fixed else [images])])[:len(labels)]
        best = torch.from_numpy(logits).topk(min(5, logits.shape[1]), dim=1).indices
        top1 += int((best[:, 0] == labels).sum())
        top5 += int((best == labels[:, None]).any(1).sum())
        total += len(labels)
    return {"top1": round(100 * top1 / total, 4), "top5": round(100 * top5 / total, 4), "images": total}


def int8_record(sess, sess8, file_bytes: int, out: Path, data, calibrated_on: int, settings: dict = SETTINGS) -> dict:
    """The INT8 file (``file_bytes`` long) next to its FP32 original: top-1 of both on the whole
    test split, in the sessions' runtime (onnxruntime, or OpenVINO with its ``settings``)."""
    fp32, int8 = onnx_accuracy(sess, data.test), onnx_accuracy(sess8, data.test)
    return {"file": str(out), "file_bytes": file_bytes, **settings, "calibration_images": calibrated_on,
            "top1_fp32": fp32["top1"], "top1_int8": int8["top1"], "top1_change": round(int8["top1"] - fp32["top1"], 4),
            "test_images": int8["images"]}


__all__ = ["SETTINGS", "int8_path", "int8_record", "onnx_accuracy", "quantize_int8"]
