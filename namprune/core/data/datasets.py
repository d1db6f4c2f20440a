"""Datasets by name, read into the loaders (``batches``) that feed them to the training engine.

Small datasets (digits, MNIST, Fashion-MNIST, CIFAR, small image folders, fake) are
decoded once into a uint8 tensor that stays in memory (on the GPU when training there);
each batch is cropped, flipped and normalized on tensors in one go. Large image folders
stream through a DataLoader with worker processes and pinned memory.

Every source is read through torchvision (or scikit-learn for the embedded ``digits``),
so a user's files take the same path as the test data.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from ..errors import NampruneError, first_line
from ..settings import DEFAULT_WORKERS
from ..store.paths import check_dataset, image_folder_splits
from .batches import Augment, StreamLoader, TensorLoader

DEFAULT_DATA_DIR = Path.home() / ".cache" / "namprune" / "data"
# Image folders whose images are at most this big are decoded into memory.
IN_MEMORY_MAX_SIDE = 64
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # PIL modes of single-channel images


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data; stored in every checkpoint."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    train_size: int
    test_size: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DataBundle:
    train: "TensorLoader | StreamLoader"
    test: "TensorLoader | StreamLoader"
    info: DataInfo
    # training images as the model sees them at inference (no augmentation), in the same order
    # on every torchrun process: what the data-driven pruning scores read
    calibration: "TensorLoader | StreamLoader | None" = None
    # training images augmented as in training, the same on every torchrun process: what
    # BatchNorm is re-estimated on after pruning. On a CIFAR-10 ResNet-20 they kept 1.0-1.4
    # points more right after pruning than unaugmented ones, and the unpruned model's top-1
    # where unaugmented ones cost it 2.4-2.8 (BENCHMARKS.md, "Which images BatchNorm is
    # re-estimated on"). None: the calibration images.
    recalibration: "TensorLoader | StreamLoader | None" = None

    def __post_init__(self):
        if self.calibration is None:
            self.calibration = self.train
        if self.recalibration is None:
            self.recalibration = self.calibration


# --------------------------------------------------------------------------- in-memory path


@dataclass
class Source:
    """One dataset decoded: uint8 images (N, C, H, W) and int64 labels per split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    augment: Augment


def _digits(data_dir, image_size) -> Source:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]
    labels = torch.from_numpy(digits.target).long()
    idx_train, idx_test = train_test_split(range(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    pad = max(1, image_size // 8)
    return Source(images[idx_train], labels[idx_train], images[idx_test], labels[idx_test],
                  tuple(str(d) for d in range(10)), Augment(pad=pad))


def _torchvision_split(cls, root: Path, train: bool, label: str):
    try:
        return cls(str(root), train=train, download=False)
    except (RuntimeError, FileNotFoundError):
        pass
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        return cls(str(root), train=train, download=True)
    except Exception as exc:  # any network failure: report it in one line
        reason = first_line(exc)
        raise NampruneError(
            f"{label} was not found in {root} and could not be downloaded ({reason}); "
            f"put the files there or pass --data-dir pointing to a copy"
        ) from None
    finally:
        socket.setdefaulttimeout(old)


def _mnist_like(cls, label: str, flip: bool):
    def load(data_dir, image_size) -> Source:
        root = Path(data_dir or DEFAULT_DATA_DIR)
        train, test = (_torchvision_split(cls, root, t, label) for t in (True, False))
        return Source(train.data[:, None], train.targets.long(), test.data[:, None], test.targets.long(),
                      tuple(train.classes), Augment(pad=2, flip=flip))
    return load


def _cifar(cls, label: str):
    def load(data_dir, image_size) -> Source:
        root = Path(data_dir or DEFAULT_DATA_DIR)
        if (root / "train").is_dir():  # an image-folder copy, such as the JPEG one
            return _folder_in_memory(root)
        train, test = (_torchvision_split(cls, root, t, label) for t in (True, False))

        def to_tensor(split):
            return torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(split.targets)
        return Source(*to_tensor(train), *to_tensor(test), tuple(train.classes), Augment(pad=4, flip=True))
    return load


def _fake(data_dir, image_size) -> Source:
    def split(size, offset):
        ds = torchvision.datasets.FakeData(size, (3, image_size, image_size), 10, random_offset=offset)
        images = torch.stack([v2.functional.pil_to_tensor(img) for img, _ in ds])
        return images, torch.tensor([int(label) for _, label in ds])
    return Source(*split(256, 0), *split(64, 10_000), tuple(str(i) for i in range(10)), Augment())


def _image_folder(path: Path, mode: str | None = None) -> torchvision.datasets.ImageFolder:
    """An ImageFolder whose images load in ``mode`` (default: grey if the first image is grey, else RGB)."""
    try:
        folder = torchvision.datasets.ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as exc:
        raise NampruneError(f"{path}: {first_line(exc)}") from None
    folder.mode = mode or _image_mode(folder.samples[0][0])
    folder.loader = partial(_open_image, mode=folder.mode)
    return folder


def _image_mode(path: str) -> str:
    try:
        with Image.open(path) as image:
            return "L" if image.mode in GREY_MODES else "RGB"
    except Exception as exc:
        raise NampruneError(f"cannot read image {path}: {first_line(exc)}") from None


def _open_image(path: str, mode: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert(mode)


def _decode(folder: torchvision.datasets.ImageFolder, path: str) -> torch.Tensor:
    """One image through the folder's loader (PIL), as a uint8 (C, H, W) tensor."""
    try:
        return v2.functional.pil_to_tensor(folder.loader(path))
    except Exception as exc:
        raise NampruneError(f"cannot read image {path}: {first_line(exc)}") from None


def _decode_folder(folder: torchvision.datasets.ImageFolder, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if folder.classes != classes:
        raise NampruneError(f"{folder.root} has classes {folder.classes}, but train/ has {classes}")
    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(lambda sample: _decode(folder, sample[0]), folder.samples))
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) != 1:
        raise NampruneError(f"{folder.root}: images of different sizes {sorted(sizes)[:3]}; resize them or use larger images")
    return torch.stack(images), torch.tensor(folder.targets)


def _folder_in_memory(root: Path) -> Source:
    train_dir, test_dir = image_folder_splits(root)
    train = _image_folder(train_dir)
    train_images, train_labels = _decode_folder(train, train.classes)
    test_images, test_labels = _decode_folder(_image_folder(test_dir, train.mode), train.classes)
    pad = max(1, train_images.shape[-1] // 8)
    return Source(train_images, train_labels, test_images, test_labels, tuple(train.classes), Augment(pad=pad, flip=True))


def _any_checksum(cls):
    """torchvision's CIFAR class, accepting files in the real format whatever their checksum
    (a re-packed or subset copy); a download still checks the archive's published MD5."""
    return type(cls.__name__, (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
    })


SOURCES = {
    "digits": _digits,
    "mnist": _mnist_like(torchvision.datasets.MNIST, "MNIST", flip=False),
    "fashionmnist": _mnist_like(torchvision.datasets.FashionMNIST, "Fashion-MNIST", flip=True),
    "cifar10": _cifar(_any_checksum(torchvision.datasets.CIFAR10), "CIFAR-10"),
    "cifar100": _cifar(_any_checksum(torchvision.datasets.CIFAR100), "CIFAR-100"),
    "fake": _fake,
}
NATIVE_SIZE = {"digits": 16, "mnist": 28, "fashionmnist": 28, "cifar10": 32, "cifar100": 32, "fake": 32}


# --------------------------------------------------------------------------- entry point


def load_data(name: str, data_dir: str | Path | None = None, image_size: int | None = None, batch_size: int = 128,
              device: str | torch.device = "cpu", workers: int = DEFAULT_WORKERS, seed: int = 0, rank: int = 0,
              world_size: int = 1, augment: bool = True, eval_batch_size: int | None = None) -> DataBundle:
    """Load a dataset by name and return its train and test loaders and its ``DataInfo``."""
    check_dataset(name)
    if batch_size < 1:
        raise NampruneError(f"batch size must be at least 1, got {batch_size}")
    if name == "imagefolder" and not _is_small_folder(data_dir):
        return _stream_folder(data_dir, image_size or 224, batch_size, device, workers, seed, rank, world_size,
                              augment, eval_batch_size)
    source = _folder_in_memory(Path(data_dir)) if name == "imagefolder" else \
        SOURCES[name](data_dir, image_size or NATIVE_SIZE[name])
    size = image_size or (NATIVE_SIZE.get(name) or source.train_images.shape[-1])
    train_images, test_images = (_resize(x, size) for x in (source.train_images, source.test_images))
    if len(train_images) == 0 or len(test_images) == 0:
        raise NampruneError(f"dataset {name} has an empty train or test split")
    mean, std = _channel_stats(train_images)
    info = DataInfo(name, len(source.classes), train_images.shape[1], size, mean, std, source.classes,
                    len(train_images), len(test_images))
    common = dict(mean=mean, std=std, device=device, seed=seed)
    train = TensorLoader(train_images, source.train_labels, batch_size, augment=source.augment if augment else None,
                         shuffle=True, drop_last=True, rank=rank, world_size=world_size, **common)
    # both share the images already on the device, and neither is split across torchrun processes
    calibration = TensorLoader(train.images, train.labels, batch_size, shuffle=True, **common)
    recalibration = TensorLoader(train.images, train.labels, batch_size, augment=train.augment, shuffle=True, **common)
    test = TensorLoader(test_images, source.test_labels, eval_batch_size or 2 * batch_size, **common)
    return DataBundle(train, test, info, calibration, recalibration)


def _is_small_folder(data_dir) -> bool:
    train_dir, _ = image_folder_splits(data_dir)
    folder = _image_folder(train_dir)
    _, h, w = _decode(folder, folder.samples[0][0]).shape
    return max(h, w) <= IN_MEMORY_MAX_SIDE


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    return v2.functional.resize(images, [size, size], antialias=True)


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    sample = images[:10_000].float() / 255
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _stream_folder(data_dir, size, batch_size, device, workers, seed, rank, world_size, augment, eval_batch_size):
    train_dir, test_dir = image_folder_splits(data_dir)
    train_set = _image_folder(train_dir)
    test_set = _image_folder(test_dir, train_set.mode)
    grey = train_set.mode == "L"
    mean, std = ((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)) if grey else (IMAGENET_MEAN, IMAGENET_STD)
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train_tf = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if augment else \
        [v2.Resize(size * 8 // 7, antialias=True), v2.CenterCrop(size)]
    test_tf = [v2.Resize(size * 8 // 7, antialias=True), v2.CenterCrop(size)]
    train_set.transform = v2.Compose(train_tf + normalize)
    test_set.transform = v2.Compose(test_tf + normalize)
    if test_set.classes != train_set.classes:
        raise NampruneError(f"{test_dir} has classes {test_set.classes}, but train/ has {train_set.classes}")
    info = DataInfo("imagefolder", len(train_set.classes), 1 if grey else 3, size, mean, std,
                    tuple(train_set.classes), len(train_set), len(test_set))
    common = dict(workers=workers, device=device, seed=seed)
    train = StreamLoader(train_set, min(batch_size, len(train_set)), True, True, rank=rank, world_size=world_size, **common)
    unaugmented = _image_folder(train_dir, train_set.mode)
    unaugmented.transform = test_set.transform
    calibration = StreamLoader(unaugmented, train.batch_size, True, False, **common)
    test = StreamLoader(test_set, eval_batch_size or 2 * batch_size, False, False, **common)
    # BatchNorm is re-estimated on the unaugmented images here: augmented batches were measured
    # with crops of a padded image, not with RandomResizedCrop's 8-100 % of one
    return DataBundle(train, test, info, calibration)
