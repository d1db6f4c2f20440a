"""``namprune export --runtime openvino``: OpenVINO IR converted from the ONNX file the export
has just checked with onnxruntime, held to the same check in OpenVINO, and with ``--int8``
its twin quantized by NNCF, top-1 of both on the test split.

Each IR is checked as the bytes about to be written, read back into OpenVINO: what the
user loads is what was checked. A failed check raises before any file is written.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..core.deploy import openvino
from ..core.deploy.onnx import check_parity
from ..core.deploy.quantize import int8_path, int8_record
from ..core.settings import ExportSettings


def ir_files(xml_path: Path, model) -> tuple[dict[Path, bytes], "openvino.IRSession"]:
    """The .xml and .bin of ``model`` under ``xml_path``'s name, and a session of those bytes."""
    xml, weights = openvino.ir_bytes(model)
    return {xml_path.with_suffix(".bin"): weights, xml_path: xml}, openvino.read_ir(xml, weights)


def export_ir(exported: nn.Module, onnx_bytes: bytes, xml_path: Path, images: torch.Tensor | None, calib, data,
              s: ExportSettings, threads: int | None,
              timed: dict) -> tuple[dict[Path, bytes], dict | None, dict | None]:
    """The IR files to write (``{path: bytes}``), their parity record (None without ``s.check``)
    and the INT8 record (None without ``s.int8``); the sessions are added to ``timed``."""
    model = openvino.from_onnx(onnx_bytes)
    files, written = ir_files(xml_path, model)
    timed["openvino"] = sess = openvino.session(written, threads)
    parity = check_parity(exported, sess, images) if s.check else None
    if not s.int8:
        return files, parity, None
    path = int8_path(xml_path)
    int8_files, written8 = ir_files(path, openvino.quantize_int8(model, calib, s.fixed_batch))
    timed["openvino_int8"] = sess8 = openvino.session(written8, threads)
    record = int8_record(sess, sess8, sum(map(len, int8_files.values())), path, data, len(calib),
                         openvino.INT8_SETTINGS)
    return {**files, **int8_files}, parity, record
