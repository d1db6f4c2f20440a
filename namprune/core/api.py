"""Saving, loading and exporting any ``nn.Module``, pruned or not (``namprune.save``,
``namprune.load``, ``namprune.export_onnx``).

A model namprune did not build is saved as its weights, its pruning history, its input
shape and where NAM was attached: no class, no code, so the file loads with
``torch.load(weights_only=True)``. ``load(path, model=YourModel())`` rebuilds it on a fresh
instance: attach NAM where it was, replay the pruning history, load the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .deploy.measure import count_params
from .deploy.onnx import check_opset, check_parity, input_shape, onnx_params, opset_of, output_paths, session, to_onnx
from .identity import example_input, nam_placement, remember_input, spec
from .models import CUSTOM
from .nam.fold import fold_nam, refuse_folded
from .settings import ExportSettings
from .store import checkpoint
from .store.files import write_atomic, write_json
from .store.records import ExportRecord
from .training.distributed import unwrap


def _arch(model: nn.Module) -> dict:
    """The checkpoint's ``arch`` for a user's model: its class (for messages), input shape,
    class count, and the NAM ``attach_nam`` gave it."""
    x = example_input(model)
    was_training = model.training
    with torch.no_grad():
        out = model.eval()(x)
    model.train(was_training)
    nam = nam_placement(model) or {"attention": "none", "after": []}
    channels, height = x.shape[1], x.shape[2]
    return {"name": CUSTOM, "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "num_classes": int(out.shape[-1]), "attention": nam["attention"], "nam_after": list(nam["after"]),
            "input_size": int(height), "in_channels": int(channels), "input_shape": list(x.shape[1:])}


def save(model: nn.Module, path: str | Path, example_input: torch.Tensor | None = None,
         metrics: dict | None = None) -> Path:
    """Save ``model`` (any ``nn.Module``, pruned or not) to ``path`` atomically.

    ``example_input`` (one batch) is needed for a model namprune has not seen an input for;
    a model built by ``namprune.models.create`` keeps its own spec and can be loaded without
    a ``model``. Returns the path.
    """
    model = unwrap(model)
    refuse_folded(model, "save")
    if example_input is not None:
        remember_input(model, example_input)
    arch = None if spec(model) is not None else _arch(model)
    return checkpoint.save(path, model, metrics=metrics, arch=arch)


def load(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A saved model in eval mode. Without ``model``, one namprune built (a checkpoint folder
    or its ``model.pt``); with ``model``, a fresh instance of the saved model's class, rebuilt
    in place: NAM attached where it was, the pruning history replayed, the weights loaded."""
    return checkpoint.load(path, model, device)


def export_onnx(model: nn.Module, path: str | Path, example_input: torch.Tensor | None = None, fold: bool = True,
                check: bool = True, opset: int | None = None, batch: str | int = "dynamic",
                test_images: torch.Tensor | None = None, overwrite: bool = False,
                exporter: str = "dynamo", optimize: bool = True) -> ExportRecord:
    """Export ``model`` to the ONNX file ``path`` (NAM folded) after checking it in onnxruntime
    against torch on random inputs (and ``test_images``, when given); writes the record
    ``<name>.export.json`` beside it and returns it. A failed check writes nothing.

    ``exporter``: ``dynamo`` (torch's current exporter, the TorchScript one taking over if
    it fails) or ``torchscript`` (much faster to run, for models it handles). ``optimize``:
    the exporter's graph optimizations (constant folding, debug names stripped)."""
    if example_input is not None:
        remember_input(model, example_input)
    onnx_path, json_path = output_paths(path, overwrite)
    record, data, _ = checked_onnx(model, onnx_path, fold, check, opset, batch, test_images, exporter, optimize)
    write_atomic(onnx_path, lambda tmp: tmp.write_bytes(data))
    write_json(json_path, record.to_json())
    return record


def checked_onnx(model: nn.Module, onnx_path: Path, fold: bool = True, check: bool = True, opset: int | None = None,
                 batch: str | int = "dynamic", test_images: torch.Tensor | None = None, exporter: str = "dynamo",
                 optimize: bool = True, threads: int | None = None):
    """The one ONNX export behind ``export_onnx`` and ``namprune export``: ``model`` exported
    (NAM folded when ``fold``) and checked in onnxruntime, writing nothing. Returns the record
    (naming ``onnx_path``), the file's bytes and the onnxruntime session (``threads``) that
    checked them."""
    fixed = ExportSettings(batch=batch).fixed_batch
    check_opset(opset)
    model = unwrap(model).eval()
    exported = fold_nam(model) if fold else model
    proto, exporter = to_onnx(exported, fixed, opset, optimize, exporter)
    data = proto.SerializeToString()
    sess = session(data, threads)
    parity = check_parity(model, sess, test_images) if check else None
    record = ExportRecord(onnx=str(onnx_path), exporter=exporter, opset=opset_of(proto), batch=fixed or "dynamic",
                          input_shape=[fixed or "batch", *input_shape(model, 1)[1:]], folded=fold, optimized=optimize,
                          file_bytes=len(data), params=count_params(model), onnx_params=onnx_params(proto),
                          parity=parity)
    return record, data, sess


__all__ = ["export_onnx", "load", "save"]
