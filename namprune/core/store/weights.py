"""Start from a local weights file (``--weights FILE``): a state_dict saved by torchvision,
timm or any PyTorch code, read with ``torch.load(weights_only=True)``.

A classifier whose class count differs from the data's starts from fresh weights, and a
first convolution made for RGB images is summed over its colour channels for grey images
(what timm does); each is named in a note. Any other mismatch is one clear error.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..console import note
from ..errors import NampruneError
from ..identity import classifier_name
from ..nam.modules import ChannelNAM, SpatialNAM
from .paths import check_weights_file

# Where training scripts keep the weights inside a larger checkpoint dictionary.
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in ``path`` (plain, or nested under ``state_dict`` / ``model``), wrapper
    prefixes removed. Anything else is a ``NampruneError`` naming what the file is."""
    path = check_weights_file(path)
    if path.suffix.lower() == ".onnx":
        raise NampruneError(f"--weights {path} is an ONNX file; --weights takes a PyTorch state_dict (.pt / .pth)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if blocked is None:  # not a pickle of anything
            raise NampruneError(f"--weights {path} is not a PyTorch weights file (torch.load cannot read it)") from None
        raise NampruneError(f"--weights {path} was refused: it holds the object {blocked.group(1)}, which could run "
                            "code (save the model's state_dict(), not the model); nothing in it was run") from None
    except Exception:
        raise NampruneError(f"--weights {path} is not a PyTorch weights file (torch.load cannot read it)") from None
    if isinstance(payload, dict) and payload.get("format") == "namprune-checkpoint":
        raise NampruneError(f"--weights {path} is a namprune checkpoint; continue from it with `namprune prune "
                            "--finetune-epochs N`, or pass a plain state_dict")
    state = _find_state_dict(payload)
    if state is None:
        raise NampruneError(f"--weights {path} holds no state_dict (a mapping of parameter names to tensors)")
    return {_strip(k): v for k, v in state.items()}


def _find_state_dict(payload) -> dict | None:
    if _is_state_dict(payload):
        return payload
    if isinstance(payload, dict):
        for key in NESTED_KEYS:
            if _is_state_dict(payload.get(key)):
                return payload[key]
    return None


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _strip(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def nam_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the NAM layers: a file made without NAM does not have them."""
    return {f"{name}.{key}" for name, m in model.named_modules() if isinstance(m, (ChannelNAM, SpatialNAM))
            for key in m.state_dict()}


def load_weights(model: nn.Module, path: str | Path, model_name: str = "the model") -> None:
    """Load the state_dict in ``path`` into ``model`` (NAM layers and a resized classifier keep
    their fresh weights); one ``NampruneError`` when the file does not fit."""

    state = read_state_dict(path)
    own = model.state_dict()
    head = classifier_name(model) + "."
    take: dict[str, torch.Tensor] = {}
    notes: dict[str, str] = {}  # one per layer, not per tensor
    for key, value in state.items():
        layer = key.rpartition(".")[0]
        if key not in own or value.shape == own[key].shape:
            take[key] = value
        elif key.startswith(head) and value.dim() == own[key].dim():
            notes[layer] = (f"{path} has a {value.shape[0]}-class classifier ({layer}), {model_name} here "
                            f"{own[key].shape[0]} classes: the classifier starts from fresh weights")
        elif _grey_stem(value, own[key]):
            take[key] = value.sum(1, keepdim=True)
            notes[layer] = (f"{layer} of {path} takes {value.shape[1]}-channel images: its weights are summed over "
                            f"them for {own[key].shape[1]}-channel input")
        else:
            raise NampruneError(f"--weights {path} does not fit {model_name}: {key} has shape {tuple(value.shape)} "
                                f"in the file and {tuple(own[key].shape)} here")
    optional = nam_keys(model) | {k for k in own if k.endswith("num_batches_tracked") or k.startswith(head)}
    missing = [k for k in own if k not in take and k not in optional]
    unexpected = [k for k in take if k not in own]
    if missing or unexpected:
        parts = [f"{len(missing)} weights missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"] if missing else []
        parts += [f"{len(unexpected)} not in the model ({', '.join(unexpected[:3])}"
                  f"{', ...' if len(unexpected) > 3 else ''})"] if unexpected else []
        raise NampruneError(f"--weights {path} does not fit {model_name}: {'; '.join(parts)}")
    model.load_state_dict(take, strict=False)
    for text in notes.values():
        note(f"[yellow]note:[/] {text}")


def _grey_stem(value: torch.Tensor, own: torch.Tensor) -> bool:
    """A convolution kernel for 3-channel input where the model takes 1 channel."""
    return value.dim() == 4 and own.dim() == 4 and own.shape[1] == 1 and value.shape[1] == 3 \
        and value.shape[0] == own.shape[0] and value.shape[2:] == own.shape[2:]


__all__ = ["load_weights", "nam_keys", "read_state_dict"]
