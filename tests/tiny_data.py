"""A few batches of the embedded digits, for tests that only need the engine to take some steps."""

from namprune import load_data
from namprune.core.data.batches import TensorLoader
from namprune.core.data.datasets import DataBundle


def tiny_digits(train: int = 64, test: int = 32, batch_size: int = 32) -> DataBundle:
    full = load_data("digits", batch_size=batch_size)
    mean, std = full.info.mean, full.info.std
    return DataBundle(TensorLoader(full.train.images[:train], full.train.labels[:train], batch_size, mean, std,
                                   shuffle=True, drop_last=True),
                      TensorLoader(full.test.images[:test], full.test.labels[:test], batch_size, mean, std), full.info)
