import pickle

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms import v2

from namprune import NampruneError
from namprune.core.data.batches import Augment, random_crop_flip
from namprune.core.data.datasets import load_data


def _normalize(info):
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)])


def _all_batches(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_digits_is_embedded_resized_and_split():
    data = load_data("digits", batch_size=64, augment=False)
    info = data.info
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, 16)
    assert (info.train_size, info.test_size) == (1437, 360)
    x, y = _all_batches(data.test)
    assert x.shape == (360, 1, 16, 16) and y.shape == (360,)
    assert torch.bincount(y).min() >= 35  # stratified split: every digit is in the test set
    # normalized with the training statistics
    xt, _ = _all_batches(data.train)
    assert abs(xt.mean().item()) < 0.05 and abs(xt.std().item() - 1) < 0.05


def test_mnist_loads_through_torchvision_and_matches_its_samples(shared_data):
    data = load_data("mnist", shared_data, batch_size=500, augment=False)
    assert (data.info.train_size, data.info.test_size, data.info.image_size) == (60000, 10000, 28)
    x, y = next(iter(data.test))
    reference = torchvision.datasets.MNIST(str(shared_data), train=False, transform=_normalize(data.info))
    for i in (0, 1, 123, 499):
        image, label = reference[i]
        torch.testing.assert_close(x[i], image, atol=1e-5, rtol=0)
        assert y[i].item() == label


def test_training_order_is_a_seeded_shuffle_per_epoch(shared_data):
    data = load_data("mnist", shared_data, batch_size=256, augment=False, seed=3)
    data.train.set_epoch(0)
    a = next(iter(data.train))[1]
    data.train.set_epoch(1)
    b = next(iter(data.train))[1]
    data.train.set_epoch(0)
    assert torch.equal(next(iter(data.train))[1], a) and not torch.equal(a, b)


def test_batched_crop_and_flip_equal_torchvision_per_sample():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    augment = Augment(pad=2, flip=True)
    out = random_crop_flip(images, augment, torch.Generator().manual_seed(0))
    # draw the same parameters again and apply torchvision's functional ops one sample at a time
    g = torch.Generator().manual_seed(0)
    dy = torch.randint(0, 5, (6, 1), generator=g)
    dx = torch.randint(0, 5, (6, 1), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    for i in range(6):
        expected = v2.functional.crop(v2.functional.pad(images[i], [2]), int(dy[i]), int(dx[i]), 8, 8)
        if flip[i]:
            expected = v2.functional.horizontal_flip(expected)
        assert torch.equal(out[i], expected)


def test_cifar100_reads_the_real_format(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def write(name, n):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(rng.integers(0, 100, n)),
                 "coarse_labels": [0] * n, "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        return entry
    train = write("train", 40)
    write("test", 12)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)

    data = load_data("cifar100", tmp_path, batch_size=10, augment=False)
    assert (data.info.num_classes, data.info.train_size, data.info.test_size) == (100, 40, 12)
    assert data.info.classes[7] == "class7"
    # pixel 0 of image 0 in the test file's channel-major layout comes back in place
    xs = data.train.images
    assert torch.equal(xs[0], torch.from_numpy(train["data"][0].reshape(3, 32, 32)))


def test_image_folder_slice_of_cifar10(cifar_slice):
    data = load_data("imagefolder", cifar_slice, batch_size=16)
    assert data.info.classes == ("airplane", "automobile", "bird")
    assert (data.info.train_size, data.info.test_size, data.info.image_size) == (120, 30, 32)
    x, y = next(iter(data.train))
    assert x.shape == (16, 3, 32, 32) and y.max() <= 2


def test_in_memory_image_folder_yields_the_samples_of_torchvision_image_folder(cifar_slice):
    data = load_data("imagefolder", cifar_slice, batch_size=16, augment=False)
    for split, loader in (("train", data.train), ("test", data.test)):
        reference = torchvision.datasets.ImageFolder(str(cifar_slice / split), transform=_normalize(data.info))
        loader.set_epoch(0)
        order = list(loader.sampler)  # the training split is shuffled; this is the epoch's order
        x, y = _all_batches(loader)
        assert len(x) == (112 if split == "train" else 30)  # 120 training images in 7 full batches of 16
        for position in range(0, len(x), 5):
            image, label = reference[order[position]]
            torch.testing.assert_close(x[position], image, atol=1e-5, rtol=0)
            assert y[position].item() == label


def test_ranks_train_on_disjoint_shards_that_cover_the_split(cifar_slice):
    labels = torch.tensor(torchvision.datasets.ImageFolder(str(cifar_slice / "train")).targets)
    orders = []
    for rank in (0, 1):
        data = load_data("imagefolder", cifar_slice, batch_size=20, augment=False, seed=5, rank=rank, world_size=2)
        data.train.set_epoch(0)
        order = list(data.train.sampler)
        assert torch.equal(_all_batches(data.train)[1], labels[order])
        orders.append(set(order))
    assert not orders[0] & orders[1] and orders[0] | orders[1] == set(range(120))


def test_cifar10_name_accepts_the_image_folder_copy(cifar_slice):
    data = load_data("cifar10", cifar_slice, batch_size=16)
    assert data.info.name == "cifar10" and data.info.train_size == 120


def test_missing_dataset_offline_names_data_dir(tmp_path, offline):
    with pytest.raises(NampruneError, match=r"could not be downloaded.*--data-dir"):
        load_data("mnist", tmp_path / "empty")


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "needs --data-dir"),
    (lambda p: p / "nowhere", "does not exist"),
    (lambda p: (p / "train").mkdir() or p, "must contain train/ and val/"),
    (lambda p: [(p / s).mkdir() for s in ("train", "val")] and p, "find any class folder"),
])
def test_bad_image_folders(tmp_path, make, message):
    with pytest.raises(NampruneError, match=message):
        load_data("imagefolder", make(tmp_path))


def test_corrupt_image_is_named(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(NampruneError, match="cannot read image .*a.jpg"):
        load_data("imagefolder", tmp_path)


def test_unknown_dataset():
    with pytest.raises(NampruneError, match="unknown dataset 'svhn'"):
        load_data("svhn")


def test_batchnorm_is_re_estimated_on_augmented_batches_that_every_process_shares():
    # what `prune` re-estimates BatchNorm on (DataBundle.recalibration): the training images in
    # the calibration order, augmented as in training, whole on every torchrun process
    ranks = [load_data("digits", batch_size=64, rank=rank, world_size=2) for rank in (0, 1)]
    for data in ranks:
        data.recalibration.set_epoch(0)
        data.calibration.set_epoch(0)
    (x0, y0), (x1, y1) = (next(iter(data.recalibration)) for data in ranks)
    clean, labels = next(iter(ranks[0].calibration))
    assert torch.equal(x0, x1) and torch.equal(y0, y1)  # not sharded: every process re-estimates alike
    assert torch.equal(y0, labels) and not torch.equal(x0, clean)  # the same images, augmented
    assert len(ranks[0].recalibration) == len(ranks[0].calibration) > len(ranks[0].train)
    unaugmented = load_data("digits", batch_size=64, augment=False)
    unaugmented.recalibration.set_epoch(0)
    assert torch.equal(next(iter(unaugmented.recalibration))[0], clean)  # no augmentation asked, none used
