"""namprune: NAM-guided structural pruning for PyTorch CNNs.

    import namprune
    model = namprune.models.create("resnet20", num_classes=10, attention="nam")
    model = namprune.load("runs/train")          # a checkpoint folder or its model.pt
"""

import logging

# torch-pruning imports torch.utils.cpp_extension, which logs a warning on machines
# without a CUDA toolkit; it is noise for users of a CPU or a driver-only GPU machine.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

__version__ = "0.1.0"

from . import models  # noqa: E402
from .checkpoint import load  # noqa: E402
from .fold import fold_nam  # noqa: E402
from .data import load_data  # noqa: E402
from .engine import TrainConfig, evaluate, fit  # noqa: E402
from .errors import NampruneError  # noqa: E402
from .nam import NAM, ChannelNAM, SpatialNAM, create_attention  # noqa: E402
from .sparsity import SparsityPenalty  # noqa: E402

__all__ = ["NAM", "ChannelNAM", "NampruneError", "SpatialNAM", "SparsityPenalty", "TrainConfig",
           "create_attention", "evaluate", "fit", "fold_nam", "load", "load_data", "models"]
