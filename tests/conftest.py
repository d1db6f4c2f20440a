import gc
import os
import tarfile
from pathlib import Path

import pytest
import torch

import namprune  # noqa: F401  (quiets torch's CUDA-toolkit warning before anything imports torch_pruning)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAMPRUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"

# Under pytest-xdist each worker gets one thread: two workers with two threads each on a
# two-core machine spend most of their time waiting for each other. OMP_NUM_THREADS carries
# that to training (cpus.default_threads) and to the commands tests run as subprocesses.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

# Every test ends with a full garbage collection (below). The half a million objects the
# libraries' imports make are never garbage, yet a full collection walks them all: 0.2-0.3 s
# a test, over a minute and a half of the suite. Imported once here and frozen out of the
# collector's sight, each collection walks only what the tests made.
import matplotlib.pyplot  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401
import torch_pruning  # noqa: E402,F401
import torchvision  # noqa: E402,F401

import namprune.app.recipe_run  # noqa: E402,F401
import namprune.cli  # noqa: E402,F401

gc.freeze()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is not on this machine")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cifar_slice(tmp_path_factory) -> Path:
    """An image folder (train/ and test/, 3 classes) cut from the CIFAR-10 JPEG archive."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"{CIFAR_ARCHIVE} is not on this machine")
    root = tmp_path_factory.mktemp("cifar_slice")
    keep = {"train": 40, "test": 10}
    classes = ("airplane", "automobile", "bird")
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR_ARCHIVE) as archive:
        for member in archive:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            if split in keep and cls in classes and counts.get((split, cls), 0) < keep[split]:
                counts[(split, cls)] = counts.get((split, cls), 0) + 1
                target = root / split / cls / parts[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
            if len(counts) == 6 and all(counts[k] >= keep[k[0]] for k in counts):
                break
    return root


@pytest.fixture
def offline(monkeypatch):
    """Point every HTTP(S) request at a closed local port, so a download attempt fails for sure."""
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")


@pytest.fixture(autouse=True)
def _collect_cycles():
    """Models, torch-pruning graphs and traced tensors left in reference cycles by one test are
    freed before the next, so a worker's memory does not grow over the suite."""
    yield
    gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _freeze_survivors():
    """What outlives a module (modules imported on first use, caches, session fixtures) is
    frozen too, once that module's fixtures are freed, so the next module's collections
    walk only what its own tests made."""
    yield
    gc.collect()
    gc.freeze()
