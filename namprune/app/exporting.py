"""``namprune export``: a checkpoint to an ONNX file checked against torch with onnxruntime
(``--runtime openvino``: to OpenVINO IR converted from it and checked again, ``openvino_export``),
with its record beside it (``model.onnx`` -> ``model.export.json``, so several exports share a
folder) and measured latency. A file that fails the check is not written.

NAM gates that act as constants on training images are replaced by them before export when
the model without them keeps the unfolded model's predictions (``gates.fold_for_export``); the
check holds the file to the model exported, and the record reports the difference from the
unfolded model: on how many test images the two agree, and both test top-1. ``--int8``: ``quantize``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from ..core.api import checked_onnx
from ..core.deploy.measure import count_params
from ..core.deploy.onnx import (RANDOM_SAMPLES, ExportError, batches, check_opset, check_parity, compare, fixed_batch,
                         input_shape, output_paths, run_checked, session, to_onnx)
from ..core.deploy.quantize import int8_path, int8_record, quantize_int8
from ..core.deploy.timing import measure_latency, open_session, settings_record, speedups
from ..core.errors import NampruneError
from ..core.nam.gates import fold_for_export, has_gates
from ..core.settings import (EXPORT, GATE_IMAGES, GATE_TOLERANCE, LATENCY, ExportSettings, LatencySettings,
                             check_runtime)
from ..core.store import checkpoint
from ..core.store.files import write_atomic, write_json
from ..core.store.records import ExportRecord
from .datasource import calibration_images, checkpoint_data
from .run_folders import unpruned_source

TEST_SAMPLES = 64


def removal_effect(model: nn.Module, sess: ort.InferenceSession, images: torch.Tensor | None, data) -> dict:
    """What replacing gates by constants changed: the file against the unfolded ``model`` (on
    test images, else the check's random inputs), and on the whole test split the images whose
    top-1 the file and the unfolded model agree on, and the top-1 of both."""
    x = images if images is not None else torch.randn(input_shape(model, RANDOM_SAMPLES),
                                                        generator=torch.Generator().manual_seed(0))
    c = compare(model, sess, x, f"{'test images' if images is not None else 'random'} vs unfolded")
    effect = {"vs_unfolded": {**c, "ok": None}, "max_rel_diff_vs_unfolded": c["max_rel_diff"]}
    if data is not None:
        split = split_agreement(model, sess, data.test)
        effect |= {**split, "top1_change": round(split["top1_exported"] - split["top1_unfolded"], 4)}
    return effect


@torch.no_grad()
def split_agreement(model: nn.Module, sess: ort.InferenceSession, loader) -> dict:
    """Top-1 of ``model`` (torch) and of the file (onnxruntime) over ``loader``, and the images
    on which the two give the same class."""
    agree = right_model = right_file = total = 0
    for images, labels in loader:
        images, labels = images.cpu(), labels.cpu()
        ours = model(images).argmax(1)
        theirs = torch.from_numpy(np.concatenate([run_checked(sess, b) for b in batches(images, fixed_batch(sess))])
                                  [:len(images)]).argmax(1)
        agree += int((ours == theirs).sum())
        right_model, right_file = right_model + int((ours == labels).sum()), right_file + int((theirs == labels).sum())
        total += len(labels)
    return {"test_images": total, "test_top1_agree": agree, "top1_unfolded": round(100 * right_model / total, 4),
            "top1_exported": round(100 * right_file / total, 4)}


# --------------------------------------------------------------------------- the whole job


def export_checkpoint(ckpt: str | Path, out: str | Path, settings: ExportSettings = EXPORT,
                      latency: LatencySettings | None = LATENCY, data_dir=None, overwrite: bool = False) -> ExportRecord:
    """Export a checkpoint to ``out`` (ONNX) and its record beside it (``record_path``); returns the record.

    Raises ``NampruneError`` for bad arguments (before any work) and ``ExportError`` when
    both exporters fail or the check fails; then nothing is written. ``latency``: how the
    files are timed (None: not at all). NAM gates whose spread on the calibration images is
    at most ``settings.gate_tolerance`` are replaced by constants when the model without them
    keeps the unfolded model's predictions (``gates.checked_removal``; ``settings.remove_gates``
    False keeps every gate); ``settings.int8`` also
    writes ``<out stem>.int8.onnx``.
    """
    s = settings
    check_opset(s.opset)
    onnx_path, json_path = output_paths(out, overwrite)
    if s.runtime == "openvino" and onnx_path.suffix != ".xml":
        raise NampruneError(f"--runtime openvino writes OpenVINO IR: give --out a path ending in .xml "
                            f"(its weights go beside it, .bin), got {onnx_path}")
    for path in [*([int8_path(onnx_path)] if s.int8 else []), *written_beside(onnx_path, s)]:
        if path.exists() and not overwrite:
            raise NampruneError(f"{path} already exists; pass --overwrite to replace it")
    payload = checkpoint.read(ckpt)
    model = checkpoint.build(payload).eval()
    data = checkpoint_data(payload, data_dir) if s.check or s.int8 or s.fold and has_gates(model) else None
    if s.int8 and data is None:
        raise NampruneError(f"--int8 calibrates on {payload['data']['name']} training images: give --data-dir")
    calib = calibration_images(data, s.calibration_images)
    images = test_images(data)
    exported, gates = fold_for_export(model, calib, s.gate_tolerance, images, s.remove_gates) if s.fold else (model, None)
    images = images if s.check else None
    threads = latency.num_threads if latency else None
    # the library's export (namprune.export_onnx's engine); this job adds to its record and writes it all at the end
    base, onnx_bytes, sess = checked_onnx(exported, onnx_path, fold=False, check=s.check, opset=s.opset, batch=s.batch,
                                          test_images=images, optimize=s.optimize, threads=threads)
    parity = base.parity
    if gates:  # the check above held the file to what was exported; this, to the checkpoint (exact when none removed)
        gates |= removal_effect(model, sess, images, data)
        parity = parity and {**parity, "vs_unfolded": gates.pop("vs_unfolded")}
    # the folded model is timed only where folding changed something: a model with NAM
    timed = {"onnxruntime": sess, "torch_eager": model, **({"torch_eager_folded": exported} if s.fold and has_gates(model) else {})}
    onnx_parity, versions = None, {}
    if s.runtime == "openvino":  # the IR of the ONNX file just checked, held to the same check
        from ..core.deploy.openvino import versions as openvino_versions
        from .openvino_export import export_ir

        onnx_parity, versions = parity, openvino_versions()
        files, parity, int8_report = export_ir(exported, onnx_bytes, onnx_path, images, calib, data, s, threads, timed)
    else:
        files = {onnx_path: onnx_bytes}
        int8_report = _quantize(s, onnx_bytes, onnx_path, calib, data, files, timed, threads) if s.int8 else None
    if int8_report:
        _add_unpruned(ckpt, s, calib, timed, threads, int8_report)
    timings = measure_latency(timed, latency) if latency else None
    if int8_report and timings:
        int8_report |= _int8_speedups(timings, s.runtime)
    record = base.model_copy(update={
        "source": str(checkpoint.model_file(ckpt)), "runtime": s.runtime,
        "onnx": str(onnx_path) if s.runtime == "onnxruntime" else None,
        "ir": str(onnx_path) if s.runtime == "openvino" else None, "onnx_parity": onnx_parity,
        "model": payload["arch"]["name"], "attention": payload["arch"]["attention"],
        "pruning_steps": len(payload.get("pruning_history") or []),
        "folded": s.fold, "nam_gates": gates,
        "file_bytes": sum(len(files[p]) for p in [onnx_path, *written_beside(onnx_path, s.with_(int8=False))]),
        "params": count_params(model), "parity": parity, "int8": int8_report,
        "latency": {"settings": settings_record(latency), "records": timings} if timings else None,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__, **versions},
    })
    for path, content in files.items():
        write_atomic(path, lambda tmp, content=content: tmp.write_bytes(content))
    write_json(json_path, record.to_json())
    return record


def written_beside(path: Path, s: ExportSettings) -> list[Path]:
    """The files an export writes besides ``path`` and its record: an IR's weights (.bin)."""
    if s.runtime != "openvino":
        return []
    return [path.with_suffix(".bin"), *([int8_path(path).with_suffix(".bin")] if s.int8 else [])]


def _quantize(s: ExportSettings, onnx_bytes: bytes, onnx_path: Path, calib, data, files: dict, timed: dict,
              threads: int | None) -> dict:
    """``--int8``: the quantized file (added to ``files``), its session (added to ``timed``), and
    the INT8 record."""
    path = int8_path(onnx_path)
    files[path] = quantize_int8(onnx_bytes, calib, s.fixed_batch)
    timed["onnxruntime_int8"] = sess8 = session(files[path], threads)
    return int8_record(timed["onnxruntime"], sess8, len(files[path]), path, data, len(calib))


def _add_unpruned(ckpt, s: ExportSettings, calib, timed: dict, threads: int | None, report: dict) -> None:
    """For a pruned run, the unpruned FP32 model in the export's runtime (added to ``timed``):
    pruning and INT8 are timed against it together."""
    source = unpruned_source(ckpt)
    report["unpruned_source"] = str(source) if source else None
    if source and threads:
        timed[f"{s.runtime}_unpruned"] = open_session(unpruned_onnx(source, calib, s), s.runtime, threads)


def _int8_speedups(timings: dict, runtime: str) -> dict:
    found = {"speedup_vs_fp32": speedups(timings, runtime, f"{runtime}_int8")}
    if f"{runtime}_unpruned" in timings:
        found["speedup_vs_unpruned_fp32"] = {"fp32": speedups(timings, f"{runtime}_unpruned", runtime),
                                             "int8": speedups(timings, f"{runtime}_unpruned", f"{runtime}_int8")}
    return found


def test_images(data) -> torch.Tensor | None:
    """Up to ``TEST_SAMPLES`` test images for the check (the first test batch: 128), None without data."""
    return None if data is None else next(iter(data.test))[0][:TEST_SAMPLES].cpu()


def unpruned_onnx(source: Path, calib, s: ExportSettings) -> bytes:
    """The unpruned model exported as ``namprune export`` would, for timing next to the pruned one."""
    model = checkpoint.load(source).eval()
    exported, _ = fold_for_export(model, calib, s.gate_tolerance, remove=s.remove_gates)
    return to_onnx(exported, s.fixed_batch, s.opset, s.optimize)[0].SerializeToString()


def check_file(ckpt: str | Path, onnx_file: str | Path, data_dir=None, gate_tolerance: float | None = None,
               calibration: int | None = None) -> dict:
    """Check an existing ONNX file (or OpenVINO IR, .xml) against the checkpoint it came from, folded and with its constant
    gates removed as its export did (with the tolerance and calibration images recorded beside
    it, unless given); raises ``ExportError`` with the measured difference if it disagrees."""
    onnx_file = Path(onnx_file)
    if not onnx_file.is_file():
        raise NampruneError(f"no {'OpenVINO IR' if onnx_file.suffix == '.xml' else 'ONNX'} file at {onnx_file}")
    recorded = recorded_gates(onnx_file)
    s = EXPORT.with_(gate_tolerance=recorded.get("tolerance", GATE_TOLERANCE) if gate_tolerance is None else gate_tolerance,
                     calibration_images=recorded.get("calibration_images") or GATE_IMAGES if calibration is None
                     else calibration)
    payload = checkpoint.read(ckpt)
    model = checkpoint.build(payload).eval()
    try:
        sess = _checked_session(onnx_file)
    except ExportError as exc:  # here the file is the user's input, not the export's output
        raise NampruneError(str(exc)) from None
    data = checkpoint_data(payload, data_dir)
    images = test_images(data)
    exported, _ = fold_for_export(model, calibration_images(data, s.calibration_images), s.gate_tolerance, images,
                                  remove=recorded.get("mode", "remove") == "remove")
    return check_parity(exported, sess, images)


def _checked_session(path: Path):
    """An onnxruntime session of an ONNX file, or an OpenVINO one of an IR file (.xml)."""
    if path.suffix != ".xml":
        return session(path)
    check_runtime("openvino", "--check-only of an IR file: runtime")
    return open_session(path, "openvino")


def recorded_gates(onnx_file: Path) -> dict:
    """The ``nam_gates`` record of the export that wrote ``onnx_file`` ({} when there is none)."""
    json_path = output_paths(onnx_file, overwrite=True)[1]
    if not json_path.is_file():
        return {}
    record = ExportRecord.read(json_path)
    return (record.nam_gates or {}) if Path(record.onnx or record.ir).name == onnx_file.name else {}
