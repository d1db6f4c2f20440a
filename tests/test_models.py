import pytest
import torch

from namprune import NampruneError, models
from namprune.core.models import attach_nam
from namprune.core.nam.modules import NAM, ChannelNAM, SpatialNAM

BUILTIN = ["resnet20", "resnet56", "resnet18", "resnet34", "resnet50", "mobilenetv2"]
TORCHVISION = ["tv:resnet18", "tv:resnet50", "tv:mobilenet_v2", "tv:mobilenet_v3_small"]


def _forward_backward(model, size, in_channels=3, num_classes=10):
    model.train()
    x = torch.randn(2, in_channels, size, size)
    out = model(x)
    assert out.shape == (2, num_classes)
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", BUILTIN + TORCHVISION)
@pytest.mark.parametrize("attention", ["none", "nam"])
def test_every_registry_model_runs_forward_and_backward(name, attention):
    size = 64 if name.startswith("tv:") else 32
    model = models.create(name, num_classes=10, attention=attention, input_size=size)
    _forward_backward(model, size)
    nams = [m for m in model.modules() if isinstance(m, NAM)]
    assert (len(nams) > 0) == (attention == "nam")
    assert model.namprune_spec == dict(name=name, num_classes=10, attention=attention, input_size=size, in_channels=3)


@pytest.mark.parametrize("attention,kinds", [("nam-channel", {ChannelNAM}), ("nam-spatial", {SpatialNAM})])
def test_single_branch_attention(attention, kinds):
    model = models.create("resnet20", attention=attention, input_size=16, in_channels=1)
    found = {type(m) for m in model.modules() if isinstance(m, (ChannelNAM, SpatialNAM))}
    assert found == kinds
    _forward_backward(model, 16, in_channels=1)


def test_cifar_resnets_have_the_published_depths_and_one_nam_per_block():
    for name, blocks in [("resnet20", 9), ("resnet56", 27)]:
        model = models.create(name, attention="nam")
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert len(convs) + len(linears) == int(name[len("resnet"):])  # 20 or 56 weighted layers
        assert len([m for m in model.modules() if isinstance(m, NAM)]) == blocks
    # spatial sizes follow the stages: 32, 16, 8 for a 32x32 input
    sizes = sorted({(m.height, m.width) for m in models.create("resnet20", attention="nam").modules() if isinstance(m, SpatialNAM)})
    assert sizes == [(8, 8), (16, 16), (32, 32)]


@pytest.mark.parametrize("name,blocks", [("resnet18", 8), ("resnet50", 16), ("mobilenet_v2", 17), ("mobilenet_v3_small", 11)])
def test_attach_nam_on_torchvision_models(name, blocks):
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=5)
    attach_nam(model, torch.zeros(1, 3, 96, 96))
    nams = [m for m in model.modules() if isinstance(m, NAM)]
    assert len(nams) == blocks
    # every spatial branch got the size its feature map really has at 96x96
    for nam in nams:
        assert nam.spatial.height in (48, 24, 12, 6, 3)
    _forward_backward(model, 96, num_classes=5)
    with pytest.raises(NampruneError, match="expects"):
        model.eval()(torch.zeros(1, 3, 64, 64))


def test_attach_nam_refuses_an_unknown_architecture():
    with pytest.raises(NampruneError, match="no residual block"):
        attach_nam(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), torch.zeros(1, 3, 8, 8))


def test_registry_errors_are_clear():
    with pytest.raises(NampruneError, match="unknown model 'resnet21'"):
        models.create("resnet21")
    with pytest.raises(NampruneError, match="unknown torchvision classification model"):
        models.create("tv:not_a_model")
    with pytest.raises(NampruneError, match="unknown attention"):
        models.create("resnet20", attention="cbam")


def test_grey_input_for_torchvision_models():
    model = models.create("tv:resnet18", num_classes=10, attention="nam", input_size=32, in_channels=1)
    _forward_backward(model, 32, in_channels=1)
