"""Models from outside namprune's registry, built without NAM (``create`` attaches it):

* ``tv:<name>``: any torchvision classification model;
* ``timm:<name>``: any timm model (the optional ``namprune[timm]`` extra);
* ``path/to/file.py:function``: a user's own constructor, called with the keyword arguments
  it declares among ``num_classes``, ``in_channels`` and ``input_size``.

Nothing is downloaded: every model starts from its own initial weights (``--weights FILE``
loads a local state_dict). A checkpoint of a file-built model records the file's absolute
path and SHA-256; it is rebuilt only from that same, unchanged file, so a checkpoint cannot
make namprune run some other code. A user who changed the file knowingly (a comment, a
docstring) says so with ``accepting_changed_files()`` (``--accept-changed-model``; in a recipe
``model.accept_changed_model``): the file as it is now is run, with a note.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import inspect
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torchvision

from ..console import note
from ..errors import NampruneError, first_line
from ..identity import classifier_name

TIMM_MISSING = 'timm models need timm, which is not installed: pip install "namprune[timm]"'
FILE_ARGUMENTS = ("num_classes", "in_channels", "input_size")
_loaded_files: dict[tuple[str, str], object] = {}  # (path, sha256) -> module: a file runs once per process
_accept_changed = [False]  # set while accepting_changed_files() is active
ACCEPT_FLAG, ACCEPT_KEY = "--accept-changed-model", "model.accept_changed_model: true"


@contextmanager
def accepting_changed_files(accept: bool = True) -> Iterator[None]:
    """While active, a checkpoint's model file whose SHA-256 changed is rebuilt from the file as
    it is now (with a note) instead of refused: the user vouches for the change."""
    before, _accept_changed[0] = _accept_changed[0], accept
    try:
        yield
    finally:
        _accept_changed[0] = before


def is_foreign(name: str) -> bool:
    return name.startswith(("tv:", "timm:")) or split_file_ref(name) is not None


def split_file_ref(name: str) -> tuple[Path, str] | None:
    """``path/to/file.py:function`` -> (path, function); None for any other name."""
    path, sep, function = name.rpartition(":")
    if not sep or not path.endswith(".py") or not function.isidentifier():
        return None
    return Path(path), function


def check_name(name: str) -> None:
    """Refuse a foreign model name that cannot be built, without building it (or running a file)."""
    if name.startswith("tv:"):
        _torchvision_name(name[3:])
    elif name.startswith("timm:"):
        _timm_name(name[5:])
    else:
        path, function = split_file_ref(name)
        _defines(path, function)


def build(name: str, num_classes: int, in_channels: int, input_size: int, sha256: str | None = None) -> tuple[nn.Module, dict]:
    """The model without NAM, and what its spec must add to rebuild it (file path and hash)."""
    if name.startswith("tv:"):
        return create_torchvision(name[3:], num_classes, in_channels), {}
    if name.startswith("timm:"):
        return create_timm(name[5:], num_classes, in_channels), {}
    path, function = split_file_ref(name)
    return create_from_file(path, function, num_classes, in_channels, input_size, sha256)


# --------------------------------------------------------------------------- torchvision


def _torchvision_name(name: str) -> str:
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise NampruneError(f"unknown torchvision classification model {name!r}{_similar(name, known)}")
    return name


def _similar(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else f" (e.g. {', '.join(known[:5])}, ...)"


def create_torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    model = torchvision.models.get_model(_torchvision_name(name), weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_stem(model, in_channels)
    return model


def _replace_stem(model: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one that takes ``in_channels`` (e.g. grey images)."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, child = name.rpartition(".")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    setattr(model.get_submodule(parent_name), child, new)


# --------------------------------------------------------------------------- timm


def _timm():
    try:
        import timm
    except ImportError:
        raise NampruneError(TIMM_MISSING) from None
    return timm


def _timm_name(name: str) -> str:
    timm = _timm()
    if not timm.is_model(name):
        raise NampruneError(f"unknown timm model {name!r}{_similar(name, timm.list_models())}")
    return name


def create_timm(name: str, num_classes: int, in_channels: int) -> nn.Module:
    # exportable: timm picks the layer variants that trace and export cleanly (same weights)
    return _timm().create_model(_timm_name(name), pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                exportable=True)


# --------------------------------------------------------------------------- a user's file


def _defines(path: Path, function: str) -> None:
    """Check that ``path`` is a Python file defining ``function`` at top level, without running it."""
    if not path.is_file():
        raise NampruneError(f"there is no model file {path}")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise NampruneError(f"the model file {path} is not valid Python ({type(exc).__name__})") from None
    names = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    names |= {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    names |= {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    if function not in names:
        raise NampruneError(f"the model file {path} defines no {function!r} at top level")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_file(path: Path, sha256: str):
    key = (str(path), sha256)
    if key not in _loaded_files:
        name = f"namprune_user_model_{sha256[:12]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # as an import does: dataclasses and pickling look the module up there
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise NampruneError(f"{path} failed to run: {type(exc).__name__}: {first_line(exc)}") from None
        _loaded_files[key] = module
    return _loaded_files[key]


def create_from_file(path: Path, function: str, num_classes: int, in_channels: int, input_size: int,
                     sha256: str | None = None) -> tuple[nn.Module, dict]:
    """Call ``function`` of the Python file ``path``. With ``sha256`` (rebuilding a checkpoint)
    the file must be exactly the one the checkpoint was made with."""
    path = path.expanduser().resolve()
    _defines(path, function)
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        if not _accept_changed[0]:
            raise NampruneError(f"{path} changed since the checkpoint was made (its SHA-256 differs); namprune rebuilds a "
                                "model only from the unchanged file it was trained with. If you changed it and the "
                                f"model it builds is the same, pass {ACCEPT_FLAG} (in a recipe: {ACCEPT_KEY})")
        note(f"{path} changed since the checkpoint was made; building the model from it as it is now "
             f"({ACCEPT_FLAG})")
    constructor = getattr(_load_file(path, digest), function)
    values = dict(zip(FILE_ARGUMENTS, (num_classes, in_channels, input_size)))
    try:
        params = inspect.signature(constructor).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        model = constructor(**{k: v for k, v in values.items() if takes_all or k in params})
    except NampruneError:
        raise
    except Exception as exc:
        raise NampruneError(f"{path}:{function} failed: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise NampruneError(f"{path}:{function} returned a {type(model).__name__}, not a torch.nn.Module")
    return model, {"file": str(path), "sha256": digest}


# --------------------------------------------------------------------------- input size


def _failure(model: nn.Module, in_channels: int, size: int) -> str | None:
    """Why the model cannot run on a ``size`` x ``size`` input, or None when it can."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size))
        return None
    except RuntimeError as exc:
        return first_line(exc)


def check_input(model: nn.Module, name: str, in_channels: int, input_size: int, num_classes: int,
                announce: bool = True) -> None:
    """One forward pass at the input size: too small an input (a pooling window larger than the
    feature map) is named with the smallest side that works; a wrong class count is resized
    (with a note when ``announce``)."""
    was_training = model.training
    model.eval()
    try:
        failure = _failure(model, in_channels, input_size)
        if failure is not None:
            smallest = smallest_input(model, in_channels, input_size)
            if smallest is None:
                raise NampruneError(f"{name} cannot run on {in_channels}x{input_size}x{input_size} inputs: {failure}")
            raise NampruneError(f"{name} needs inputs of at least {smallest}x{smallest} pixels, got {input_size}x{input_size} "
                                f"(use --image-size {smallest} or larger)")
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise NampruneError(f"{name} must return class scores of shape (batch, classes), got "
                            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    if out.shape[1] != num_classes:
        resize_classifier(model, num_classes, f"{name} gives {out.shape[1]} classes", announce)


def smallest_input(model: nn.Module, in_channels: int, failing: int, largest: int = 1024) -> int | None:
    """The smallest square input side above ``failing`` the model runs on (bisection), or None
    when it runs on no larger input either."""
    high = failing
    while True:
        high = min(largest, high * 2)
        if _failure(model, in_channels, high) is None:
            break
        if high == largest:
            return None
    low = failing
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _failure(model, in_channels, mid) is None else (mid, high)
    return high


def resize_classifier(model: nn.Module, num_classes: int, why: str, announce: bool = True) -> None:
    """Replace the final ``nn.Linear`` by a fresh one with ``num_classes`` outputs."""

    name = classifier_name(model)
    old = model.get_submodule(name)
    if not isinstance(old, nn.Linear):
        raise NampruneError(f"{why}, not {num_classes}, and its last layer {name!r} is not an nn.Linear to resize")
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    if announce:
        note(f"[yellow]note:[/] {why}; its classifier {name!r} was replaced by a new one with {num_classes} outputs")


__all__ = ["accepting_changed_files", "FILE_ARGUMENTS", "TIMM_MISSING", "build", "check_input", "check_name", "create_from_file", "create_timm",
           "create_torchvision", "file_sha256", "is_foreign", "resize_classifier", "smallest_input", "split_file_ref"]
