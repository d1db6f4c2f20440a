"""A model's identity: what namprune knows about a model besides its weights.

Every ``namprune_*`` attribute namprune keeps on a model is read and written here, and
nowhere else:

* ``namprune_spec``: the recipe of a model namprune built (``models.create``), from which a
  checkpoint rebuilds it;
* ``namprune_input_shape``: the input shape (without the batch) a namprune function was last
  given for a model namprune did not build (``attach_nam``, ``prune``, ``save``);
* ``namprune_nam``: which NAM ``attach_nam`` attached, and after which layers;
* ``namprune_history``: the pruning steps applied (torch-pruning's history), replayed when a
  checkpoint is loaded.

Also here: the example input those steps trace a model with, and its classifier (the layer
whose outputs are the classes, which pruning keeps whole).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import NampruneError


# --------------------------------------------------------------------------- recipe and input


def spec(model: nn.Module) -> dict | None:
    """The recipe of a model namprune built (name, classes, attention, input size, channels), or None."""
    return getattr(model, "namprune_spec", None)


def set_spec(model: nn.Module, recipe: dict) -> None:
    model.namprune_spec = recipe


def knows_input(model: nn.Module) -> bool:
    """Whether namprune knows the input size of ``model`` (built by namprune, or given one)."""
    return spec(model) is not None or getattr(model, "namprune_input_shape", None) is not None


def remember_input(model: nn.Module, example_input: torch.Tensor) -> None:
    """Keep the input shape (without the batch) on the model, for the steps that trace or
    measure it later (pruning, MACs, export) when they are not given an input."""
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise NampruneError("example_input must be a batch of inputs, a tensor such as torch.randn(1, 3, 224, 224)")
    model.namprune_input_shape = tuple(int(s) for s in example_input.shape[1:])


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A zero input of the shape the model was built for: from ``model.namprune_spec`` (models
    namprune built), else from the input a namprune function was last given for it
    (``attach_nam``, ``prune(..., example_input=x)``, ``save``)."""
    recipe = spec(model)
    if recipe is not None:
        shape = (recipe["in_channels"], recipe["input_size"], recipe["input_size"])
    else:
        shape = getattr(model, "namprune_input_shape", None)
        if shape is None:
            raise NampruneError(f"namprune does not know the input size of this {type(model).__name__}; pass "
                                "example_input= (one batch of inputs, e.g. torch.randn(1, 3, 224, 224))")
    device = next(model.parameters()).device
    return torch.zeros(batch, *shape, device=device)


# --------------------------------------------------------------------------- NAM and pruning


def nam_placement(model: nn.Module) -> dict | None:
    """``{"attention": ..., "after": [layer names]}`` for a model ``attach_nam`` gave NAM, else None."""
    return getattr(model, "namprune_nam", None)


def set_nam_placement(model: nn.Module, attention: str, after: list[str]) -> None:
    model.namprune_nam = {"attention": attention, "after": list(after)}


def pruning_history(model: nn.Module) -> list[list]:
    """The pruning steps applied to ``model`` so far, each ``[layer name, is_out, indices]`` (a copy)."""
    return [list(step) for step in getattr(model, "namprune_history", [])]


def set_pruning_history(model: nn.Module, history: list) -> None:
    model.namprune_history = [list(step) for step in history]


# --------------------------------------------------------------------------- classifier


def classifier_name(model: nn.Module) -> str:
    """The final layer, whose outputs are the classes: the last ``nn.Linear``, else the last
    convolution (a fully convolutional classifier)."""
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)] or \
             [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not layers:
        raise NampruneError("the model has no nn.Linear or nn.Conv2d classifier; name the layers to keep whole "
                            "with ignored=[...]")
    return layers[-1]


def classifier(model: nn.Module) -> nn.Module:
    return model.get_submodule(classifier_name(model))
