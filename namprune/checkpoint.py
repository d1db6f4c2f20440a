"""Checkpoints: ``DIR/model.pt`` holds a format tag and version, the architecture spec
(registry name + arguments), the pruning history, the state_dict, the data description,
the metrics and the config.

Everything in it is a tensor, a number, a string or a container of those, so it loads
with ``torch.load(path, weights_only=True)``: loading never runs code from the file.
Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from .distributed import unwrap
from .errors import NampruneError
from .files import write_atomic

FORMAT = "namprune-checkpoint"
VERSION = 1


def save(path: str | Path, model: nn.Module, data_info: dict, metrics: dict | None = None,
         config: dict | None = None) -> Path:
    """Write ``model`` (built by ``namprune.models.create``, maybe pruned) to ``path`` atomically.

    A DDP or torch.compile wrapper is looked through: the plain module's weights are saved."""
    model = unwrap(model)
    spec = getattr(model, "namprune_spec", None)
    if spec is None:
        raise NampruneError("only models built by namprune.models.create can be saved as namprune checkpoints")
    from . import __version__

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "namprune_version": __version__,
        "arch": dict(spec),
        "pruning_history": [list(step) for step in getattr(model, "namprune_history", [])],
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "data": dict(data_info),
        "metrics": dict(metrics or {}),
        "config": dict(config or {}),
    }
    return write_atomic(path, lambda tmp: torch.save(payload, tmp))


def model_file(path: str | Path) -> Path:
    """``DIR`` -> ``DIR/model.pt``; a file path is returned as is."""
    path = Path(path)
    return path / "model.pt" if path.is_dir() else path


def read(path: str | Path) -> dict:
    """Load and validate a checkpoint's contents without building the model."""
    file = model_file(path)
    if not file.exists():
        raise NampruneError(f"no checkpoint at {path} (expected a model.pt file or a run folder holding one)")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise NampruneError(f"{file} was refused: it holds objects a safe load does not allow ({first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise NampruneError(f"{file} is truncated or corrupt ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        kind = "a plain state_dict" if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()) \
            else "another tool's file"
        raise NampruneError(f"{file} is not a namprune checkpoint (it looks like {kind}); train one with `namprune train`")
    if payload.get("version", 0) > VERSION:
        raise NampruneError(f"{file} was written by a newer namprune (format {payload['version']}); upgrade namprune")
    missing = [k for k in ("arch", "state_dict", "data") if k not in payload]
    if missing:
        raise NampruneError(f"{file} is an incomplete namprune checkpoint (missing {', '.join(missing)})")
    return payload


def build(payload: dict) -> nn.Module:
    """Rebuild the architecture, replay its pruning history and load the weights."""
    from .models import from_spec
    from .graph import replay_history

    model = from_spec(payload["arch"])
    history = payload.get("pruning_history") or []
    if history:
        replay_history(model, history)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise NampruneError(f"the checkpoint's weights do not fit its architecture: {str(exc).splitlines()[0]}") from None
    return model


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """``namprune.load``: a ready ``nn.Module`` in eval mode from ``DIR`` or ``DIR/model.pt``."""
    model = build(read(path))
    return model.to(device).eval()
