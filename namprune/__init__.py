"""namprune: NAM-guided structural pruning for PyTorch CNNs.

    import namprune
    model = namprune.models.create("resnet20", num_classes=10, attention="nam")
    model = namprune.load("runs/train")          # a checkpoint folder or its model.pt

    # any nn.Module of your own
    namprune.attach_nam(net, x)                  # NAM at the end of every residual branch
    namprune.prune(net, namprune.PruneConfig(target_macs=0.5), example_input=x)
    namprune.save(net, "net.pt")
    net = namprune.load("net.pt", model=Net())   # rebuilt on a fresh instance

The names below load on first use, so ``import namprune`` (and the command line's help)
does not pay for torch until a model is touched.
"""

import importlib
import logging

# torch-pruning imports torch.utils.cpp_extension, which logs a warning on machines
# without a CUDA toolkit; it is noise for users of a CPU or a driver-only GPU machine.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

__version__ = "0.1.0"

_PUBLIC = {  # name -> the module that defines it
    "models": "namprune.core.models",
    "export_onnx": "namprune.core.api", "load": "namprune.core.api", "save": "namprune.core.api",
    "attach_nam": "namprune.core.nam.attach", "fold_nam": "namprune.core.nam.fold", "load_data": "namprune.core.data.datasets",
    "count_macs": "namprune.core.pruning.cost", "count_params": "namprune.core.pruning.cost",
    "evaluate": "namprune.core.training.loop", "fit": "namprune.core.training.loop",
    "TrainConfig": "namprune.core.settings", "PruneConfig": "namprune.core.settings",
    "FinetuneSettings": "namprune.core.settings", "LatencySettings": "namprune.core.settings",
    "ExportSettings": "namprune.core.settings",
    "NampruneError": "namprune.core.errors",
    "NAM": "namprune.core.nam.modules", "ChannelNAM": "namprune.core.nam.modules", "SpatialNAM": "namprune.core.nam.modules",
    "create_attention": "namprune.core.nam.modules",
    "PruneResult": "namprune.core.pruning.prune", "prune": "namprune.core.pruning.prune",
    "SparsityPenalty": "namprune.core.nam.sparsity",
}


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'namprune' has no attribute {name!r}")
    module = importlib.import_module(_PUBLIC[name])
    value = module if name == "models" else getattr(module, name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = sorted(_PUBLIC)
