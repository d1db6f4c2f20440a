"""Bring your own model: timm and torchvision networks and a user's own CNN (below) go
through attach_nam -> sparse training -> prune to half the MACs -> save -> load into a
fresh instance -> ONNX export checked by onnxruntime, from Python."""

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import namprune
from namprune import NAM, NampruneError, PruneConfig, TrainConfig
from namprune.core.deploy.measure import count_macs

timm = pytest.importorskip("timm")
import torchvision  # noqa: E402


class Residual(nn.Module):
    """1x1 expand, 3x3 grouped convolution, 1x1 project, added to the input."""

    def __init__(self, channels: int, width: int, groups: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(x + self.bn3(self.conv3(out)))


class UserCNN(nn.Module):
    """A network of the user's own: a stem, a residual block with a grouped convolution, a
    depthwise convolution, a linear classifier."""

    def __init__(self, num_classes: int = 4, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = Residual(16, 32, groups=4)
        self.down = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(), nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.down(self.block(self.stem(x))).mean((2, 3)))


def small_cnn(num_classes: int = 4, in_channels: int = 3) -> nn.Module:
    """The constructor the CLI tests name as ``tests/test_byom.py:small_cnn``."""
    return UserCNN(num_classes, in_channels)


USER_NAM_AFTER = ["block.bn3", "down.4"]
# name -> (fresh model, input side, where NAM goes (None: the residual branches attach_nam knows),
# ONNX exporter: the dynamo exporter takes 15 s on the deeper two, which test_byom_cli exports with it)
ARCHITECTURES = {
    "timm-resnet18": (lambda: timm.create_model("resnet18", num_classes=4), 32, None, "dynamo"),
    "timm-efficientnet_b0": (lambda: timm.create_model("efficientnet_b0", num_classes=4), 32, None, "torchscript"),
    "tv-regnet_x_400mf": (lambda: torchvision.models.regnet_x_400mf(num_classes=4), 32, None, "torchscript"),
    "user-cnn": (lambda: UserCNN(4), 16, USER_NAM_AFTER, "dynamo"),
}


def _batches(size: int, n: int = 3, batch: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 4, (batch,), generator=g)) for _ in range(n)]


SPARSE = TrainConfig(epochs=1, lr=0.01, sparsity=1e-3, sparsity_targets="bn", bn_weight_decay=False, device="cpu",
                     channels_last=False)  # the penalty alone on the scale factors


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_attach_train_prune_save_reload_export(arch, tmp_path):
    build, size, after, exporter = ARCHITECTURES[arch]
    torch.manual_seed(0)
    net = build()
    x = torch.randn(4, 3, size, size)
    namprune.attach_nam(net, x, after=after)
    assert sum(isinstance(m, NAM) for m in net.modules()) >= 2
    data = _batches(size)
    if arch == "user-cnn":  # any iterable of (images, labels): here a DataLoader the user already has
        data = DataLoader(TensorDataset(torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])), batch_size=8)
    summary = namprune.fit(net, data, SPARSE, progress=False)
    assert summary.final["penalty"] > 0 and summary.final["test_top1"] is None  # sparse, and no test set given

    base = count_macs(net)
    # calibration on 256 images: three training steps leave BatchNorm statistics far from the
    # data, and the eval-mode logits of a deep network on noise then reach 1e5-1e9, where
    # float32 cannot hold the 1e-4 parity with onnxruntime; recalibrated, they stay near 1e6
    calibration = _batches(size, n=32, seed=1)
    result = namprune.prune(net, PruneConfig(ratio=None, target_macs=0.5), calibration, example_input=x)
    assert abs(count_macs(net) / base - 0.5) <= 0.02 and result.channels_after < result.channels_before
    for conv in (m for m in net.modules() if isinstance(m, nn.Conv2d)):  # grouped convolutions stay valid
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0
    net.eval()
    with torch.no_grad():
        expected = net(x)

    path = namprune.save(net, tmp_path / "net.pt")
    assert set(torch.load(path, weights_only=True)) >= {"state_dict", "pruning_history", "arch"}
    reloaded = namprune.load(path, model=build())
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)

    record = namprune.export_onnx(reloaded, tmp_path / "net.onnx", test_images=x, exporter=exporter)
    assert [r["inputs"] for r in record.parity["results"]] == ["random", "test images"]
    assert all(r["ok"] for r in record.parity["results"])
    assert (tmp_path / "net.export.json").is_file()


def test_grouped_convolutions_lose_the_same_positions_in_every_group():
    """torchvision's RegNet crashed inside torch-pruning ("INDICES element is out of DATA
    bounds"): its grouped convolutions need every group to lose the same channels."""
    net = torchvision.models.regnet_x_400mf(num_classes=4)
    before = {name: (m.groups, m.in_channels) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    x = torch.randn(2, 3, 32, 32)
    namprune.prune(net, PruneConfig(ratio=0.4, importance="random"), example_input=x)
    convs = {name: m for name, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    assert {name: m.groups for name, m in convs.items()} == {name: g for name, (g, _) in before.items()}
    thinner = [m for name, m in convs.items() if 1 < m.groups < before[name][1] and m.in_channels < before[name][1]]
    assert len(thinner) > 10  # grouped convolutions were pruned, each group by the same amount
    assert all(m.weight.shape[1] * m.groups == m.in_channels for m in thinner)
    assert net.eval()(x).shape == (2, 4)


def test_pixel_attention_before_a_flattening_classifier_prunes_its_inputs_in_blocks():
    """A SpatialNAM's own (N*C, H*W) view once passed for the flatten into the classifier:
    planning looped, its index lists growing until memory ran out. The flatten is the one
    that maps each removed channel to its 4x4 block of classifier inputs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), NAM(32, 16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, 10))
    x = torch.randn(2, 1, 16, 16)
    namprune.prune(net, PruneConfig(ratio=0.5, importance="l1"), example_input=x)
    assert net[0].out_channels == 16 and net[6].in_features == 16 * 16
    assert net[2].spatial.bn.num_features == 16 * 16  # the pixels are all kept
    assert net.eval()(x).shape == (2, 10)


def test_ignored_layers_keep_their_channels_and_unknown_names_are_refused():
    net = UserCNN(4)
    x = torch.randn(2, 3, 16, 16)
    namprune.prune(net, PruneConfig(ratio=0.5, importance="l1"), example_input=x, ignored=["down.3", net.stem[0]])
    assert net.down[3].out_channels == 32 and net.stem[0].out_channels == 16 and net.head.out_features == 4
    assert net.block.conv1.out_channels < 32
    with pytest.raises(NampruneError, match="'nope'"):
        namprune.prune(UserCNN(4), PruneConfig(ratio=0.5), example_input=x, ignored=["nope"])


def test_a_model_without_a_known_input_size_asks_for_one():
    with pytest.raises(NampruneError, match="pass example_input="):
        namprune.prune(UserCNN(4), PruneConfig(ratio=0.3))
    with pytest.raises(NampruneError, match="pass calibration="):  # the nam score is measured on images
        namprune.prune(UserCNN(4), PruneConfig(ratio=0.3, importance="nam"), example_input=torch.randn(2, 3, 16, 16))
    # the default for a model without NAM (auto: l1) reads weights only
    result = namprune.prune(UserCNN(4), PruneConfig(ratio=0.3), example_input=torch.randn(2, 3, 16, 16))
    assert result.config.importance == "l1" and result.ratio > 0.2


def test_attach_nam_on_timm_blocks_sizes_every_spatial_branch():
    net = timm.create_model("efficientnet_b0", num_classes=4)
    namprune.attach_nam(net, torch.randn(1, 3, 64, 64))
    nams = [m for m in net.modules() if isinstance(m, NAM)]
    assert len(nams) == 16  # one per MBConv / depthwise-separable block
    assert {(n.spatial.height, n.spatial.width) for n in nams} == {(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)}
    assert net.namprune_nam["after"][0] == "blocks.0.0.bn2"
    with pytest.raises(NampruneError, match="already has NAM"):
        namprune.attach_nam(net, torch.randn(1, 3, 64, 64))


def test_attach_nam_after_names_checks_them():
    with pytest.raises(NampruneError, match="no layer named 'nope'"):
        namprune.attach_nam(UserCNN(), torch.randn(1, 3, 16, 16), after=["nope"])
    with pytest.raises(NampruneError, match=r"\(N, C, H, W\) output, but 'head' gives \(1, 4\)"):
        namprune.attach_nam(UserCNN(), torch.randn(1, 3, 16, 16), after=["head"])


class Narrower(UserCNN):
    """The same layers, but a narrower residual block than the one saved."""

    def __init__(self):
        super().__init__(4)
        self.block = Residual(16, 16, groups=4)


@pytest.fixture(scope="module")
def saved_user_model(tmp_path_factory):
    net = UserCNN(4)
    x = torch.randn(2, 3, 16, 16)
    namprune.attach_nam(net, x, after=USER_NAM_AFTER)
    namprune.prune(net, PruneConfig(ratio=0.4, importance="l1"), example_input=x)
    return namprune.save(net, tmp_path_factory.mktemp("user") / "net.pt")


@pytest.mark.parametrize("fresh,fragment", [
    (lambda: UserCNN(5), "does not fit the given UserCNN: its weights differ (size mismatch for head.weight"),
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten()),
     "does not fit the given Sequential: its NAM cannot be attached where it was: Sequential has no layer named"),
    (Narrower, "does not fit the given Narrower: the pruning history removes channel"),
])
def test_a_history_that_does_not_fit_is_one_clear_error(saved_user_model, fresh, fragment):
    with pytest.raises(NampruneError) as caught:
        namprune.load(saved_user_model, model=fresh())
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_a_custom_checkpoint_needs_the_model_class(saved_user_model):
    with pytest.raises(NampruneError, match=r"your own class .*UserCNN.*namprune.load\(path, model="):
        namprune.load(saved_user_model)


def test_fit_refuses_data_it_cannot_iterate_every_epoch():
    with pytest.raises(NampruneError, match="one-pass iterator"):
        namprune.fit(UserCNN(4), iter(_batches(16)), SPARSE, progress=False)
    with pytest.raises(NampruneError, match=r"\(images, labels\) batches"):
        namprune.fit(UserCNN(4), [{"image": torch.zeros(2, 3, 16, 16)}], SPARSE, progress=False)
