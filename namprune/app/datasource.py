"""Images to calibrate on and to check accuracy with, from a checkpoint's own dataset.

Calibration (the NAM gates' spread, INT8 ranges) uses the training split without
augmentation, so the test split stays untouched for the accuracy it is checked with.
``None`` means the data is not at hand: a dataset that lives on disk and no
``--data-dir`` given, or recorded in the checkpoint, that exists.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.data.datasets import DataBundle
from ..core.pruning.calibrate import calibration_batches
from ..core.settings import GATE_IMAGES
from .stages import compatible_data

BUILT_IN_DATA = ("digits", "fake")  # datasets that need no --data-dir


def data_dir_for(payload: dict, data_dir=None):
    """``data_dir``, else the one the checkpoint was trained from if it still exists; None when
    the dataset needs none or none is at hand."""
    if data_dir is not None or payload["data"]["name"] in BUILT_IN_DATA:
        return data_dir
    recorded = (payload.get("config") or {}).get("extra", {}).get("data_dir")
    return recorded if recorded and Path(recorded).exists() else None


def at_hand(payload: dict, data_dir=None) -> bool:
    return payload["data"]["name"] in BUILT_IN_DATA or data_dir_for(payload, data_dir) is not None


def checkpoint_data(payload: dict, data_dir=None, batch_size: int = 64) -> DataBundle | None:
    """The checkpoint's dataset (training split not augmented), or None when it is not at hand."""
    if not at_hand(payload, data_dir):
        return None
    return compatible_data(payload, data_dir_for(payload, data_dir), batch_size, "cpu", augment=False)


def calibration_images(data: DataBundle | None, count: int = GATE_IMAGES) -> torch.Tensor | None:
    """Up to ``count`` normalized training images (shuffled with the data's seed)."""
    if data is None:
        return None
    return torch.cat([images for images, _ in calibration_batches(data.calibration, count, torch.device("cpu"))])
