"""namprune: NAM-guided structural pruning for PyTorch CNNs.

    import namprune
    model = namprune.models.create("resnet20", num_classes=10, attention="nam")
    model = namprune.load("runs/train")          # a checkpoint folder or its model.pt

    # any nn.Module of your own
    namprune.attach_nam(net, x)                  # NAM at the end of every residual branch
    namprune.prune(net, namprune.PruneConfig(ratio=None, target_macs=0.5), example_input=x)
    namprune.save(net, "net.pt")
    net = namprune.load("net.pt", model=Net())   # rebuilt on a fresh instance
"""

import logging

# torch-pruning imports torch.utils.cpp_extension, which logs a warning on machines
# without a CUDA toolkit; it is noise for users of a CPU or a driver-only GPU machine.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

__version__ = "0.1.0"

from .core import models  # noqa: E402
from .core.api import export_onnx, load, save  # noqa: E402
from .core.attach import attach_nam  # noqa: E402
from .core.fold import fold_nam  # noqa: E402
from .core.data import load_data  # noqa: E402
from .core.train import TrainConfig, evaluate, fit  # noqa: E402
from .core.errors import NampruneError  # noqa: E402
from .core.nam import NAM, ChannelNAM, SpatialNAM, create_attention  # noqa: E402
from .core.prune import PruneConfig, PruneResult, prune  # noqa: E402
from .core.sparsity import SparsityPenalty  # noqa: E402

__all__ = ["NAM", "ChannelNAM", "NampruneError", "PruneConfig", "PruneResult", "SpatialNAM", "SparsityPenalty",
           "TrainConfig", "attach_nam", "create_attention", "evaluate", "export_onnx", "fit", "fold_nam", "load",
           "load_data", "models", "prune", "save"]
