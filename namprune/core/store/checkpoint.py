"""Checkpoints: ``DIR/model.pt`` holds a format tag and version, the architecture spec
(registry name + arguments), the pruning history, the state_dict, the data description,
the metrics and the config.

Everything in it is a tensor, a number, a string or a container of those, so it loads
with ``torch.load(path, weights_only=True)``: loading never runs code from the file.
Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ... import __version__
from ..errors import NampruneError, first_line
from ..identity import pruning_history, remember_input, spec as spec_of
from ..models import from_spec
from ..nam.attach import attach_nam, has_nam
from ..nam.fold import refuse_folded
from ..pruning.graph import replay_history
from ..training.distributed import unwrap
from .files import write_atomic
from .paths import check_checkpoint, model_file  # noqa: F401  (model_file: checkpoint.model_file for callers)

FORMAT = "namprune-checkpoint"
VERSION = 1


def save(path: str | Path, model: nn.Module, data_info: dict | None = None, metrics: dict | None = None,
         config: dict | None = None, extra: dict | None = None, arch: dict | None = None) -> Path:
    """Write ``model`` (built by ``namprune.models.create``, maybe pruned) to ``path`` atomically.

    A DDP or torch.compile wrapper is looked through: the plain module's weights are saved.
    ``extra`` adds entries (such as a training state); they must be weights_only-safe too.
    ``arch`` describes a model namprune did not build (see ``namprune.save``).
    """
    model = unwrap(model)
    refuse_folded(model, "save")
    spec = arch if arch is not None else spec_of(model)
    if spec is None:
        raise NampruneError("this model was not built by namprune.models.create: save it with "
                            "namprune.save(model, path, example_input=x)")

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "namprune_version": __version__,
        "arch": dict(spec),
        "pruning_history": pruning_history(model),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "data": dict(data_info or {}),
        "metrics": dict(metrics or {}),
        "config": dict(config or {}),
        **(extra or {}),
    }
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def read(path: str | Path) -> dict:
    """Load and validate a checkpoint's contents without building the model."""
    file = check_checkpoint(path)
    if file.suffix.lower() == ".onnx" or _is_onnx(file):
        raise NampruneError(f"{file} is an ONNX file (an exported model), not a checkpoint; give the namprune checkpoint "
                            "it was exported from (a run folder or its model.pt); `namprune export CKPT --out FILE "
                            "--check-only` checks an ONNX file against it")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = (f"the object {blocked.group(1)}, which could run code" if blocked
                else "content a weights-only load cannot read (damaged, or another tool's pickle)")
        raise NampruneError(f"{file} was refused: it holds {what}; nothing in it was run") from None
    except Exception as exc:  # zip, EOF, storage and decoding errors of a damaged file
        raise NampruneError(f"{file} is truncated or corrupt ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        kind = "a plain state_dict" if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()) \
            else "another tool's file"
        raise NampruneError(f"{file} is not a namprune checkpoint (it looks like {kind}); train one with `namprune train`")
    problem = _schema_problem(payload)
    if problem:
        raise NampruneError(f"{file} is a damaged namprune checkpoint ({problem})")
    if payload["version"] > VERSION:
        raise NampruneError(f"{file} was written by a newer namprune (format {payload['version']}); upgrade namprune")
    return payload


def _is_onnx(file: Path) -> bool:
    """An ONNX model under another name: a protobuf (no zip or pickle header) that onnx parses
    into a graph with nodes."""
    with open(file, "rb") as f:
        head = f.read(2)
    if head[:1] != b"\x08":  # protobuf field 1 (ir_version), the first byte of every ONNX file
        return False
    try:
        import onnx  # only for a file that is not a checkpoint: reading checkpoints does not load onnx

        proto = onnx.load(str(file), load_external_data=False)
        return proto.ir_version > 0 and len(proto.graph.node) > 0
    except Exception:  # not protobuf, or not ONNX
        return False


# The fields a checkpoint must have, and their types: checked before anything is built from them.
_FIELDS = {"version": int, "arch": dict, "state_dict": dict, "data": dict}
_ARCH = {"name": str, "num_classes": int, "attention": str, "input_size": int, "in_channels": int}
_OPTIONAL_ARCH = {"nam_after": list, "file": str, "sha256": str, "class": str, "input_shape": list}
_DATA = {"name": str, "num_classes": int, "in_channels": int, "image_size": int, "classes": (list, tuple)}


def _schema_problem(payload: dict) -> str | None:
    """What is wrong with the structure of a checkpoint's contents, or None."""
    data = payload.get("data")
    # a model saved with namprune.save outside a training run names no dataset
    sections = [(payload, _FIELDS), (payload.get("arch"), _ARCH)] + ([(data, _DATA)] if data != {} else [])
    for section, fields in sections:
        if not isinstance(section, dict):
            return "arch and data must be mappings"
        for key, kind in fields.items():
            if not isinstance(section.get(key), kind) or isinstance(section.get(key), bool):
                return f"{key!r} is missing or not a {getattr(kind, '__name__', 'list')}"
    for key, kind in _OPTIONAL_ARCH.items():
        if key in payload["arch"] and not isinstance(payload["arch"][key], kind):
            return f"{key!r} is not a {kind.__name__}"
    arch = payload["arch"]
    if not (2 <= arch["num_classes"] <= 1_000_000 and 1 <= arch["input_size"] <= 8192 and 1 <= arch["in_channels"] <= 64):
        return "the architecture's sizes are out of range"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["state_dict"].items()):
        return "the state_dict holds something other than named tensors"
    history = payload.get("pruning_history", [])
    if not isinstance(history, list) or not all(
            isinstance(step, (list, tuple)) and len(step) == 3 and isinstance(step[0], str)
            and isinstance(step[2], (list, tuple)) and all(isinstance(i, int) for i in step[2]) for step in history):
        return "the pruning history is malformed"
    return None


def build(payload: dict) -> nn.Module:
    """The model a checkpoint holds, built from its architecture spec (``restore``)."""
    try:
        model = from_spec(payload["arch"])
    except TypeError as exc:
        raise NampruneError(f"the checkpoint's architecture cannot be built: {exc}") from None
    return restore(model, payload, "the checkpoint's pruning history or weights do not fit its architecture")


def restore(model: nn.Module, payload: dict, misfit: str) -> nn.Module:
    """``model`` (unpruned, any class) made the checkpoint's model in place: NAM attached where
    it was, its input remembered, the pruning history replayed, the weights loaded. Every way a
    checkpoint and a model can disagree is a ``NampruneError`` that starts with ``misfit``."""
    arch = payload["arch"]
    shape = arch.get("input_shape") or [arch["in_channels"], arch["input_size"], arch["input_size"]]
    x = torch.zeros(1, *shape, device=next(model.parameters()).device)
    if arch["attention"] != "none" and not has_nam(model):
        try:
            attach_nam(model, x, arch["attention"], after=arch.get("nam_after") or None)
        except NampruneError as exc:
            raise NampruneError(f"{misfit}: its NAM cannot be attached where it was: {exc}") from None
    remember_input(model, x)
    history = payload.get("pruning_history") or []
    try:
        if history:
            replay_history(model, history)
    except NampruneError as exc:
        raise NampruneError(f"{misfit}: {exc}") from None
    except Exception as exc:  # torch-pruning's own errors: layers of another kind, shapes that do not chain
        raise NampruneError(f"{misfit}: its pruning history cannot be replayed ({_first_line(exc)})") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise NampruneError(f"{misfit}: its weights differ ({_first_line(exc)})") from None
    return model


def _first_line(exc: Exception) -> str:
    """torch's load_state_dict error in one line: the line that names the mismatch."""
    return first_line(exc, 300, prefer=("size mismatch", "Missing key"))


def load(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """``namprune.load``: the saved model in eval mode, from ``DIR`` or ``DIR/model.pt``; built
    from its spec, or with ``model`` (a fresh instance of the saved model's class) rebuilt in place."""
    payload = read(path)
    if model is None:
        model = build(payload)
    else:
        model = restore(model, payload, f"{model_file(path)} does not fit the given {type(model).__name__}")
    return model.to(device).eval()
