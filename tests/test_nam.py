import pytest
import torch
import torch.nn as nn

from namprune import NampruneError
from namprune.core.nam.modules import NAM, ChannelNAM, SpatialNAM, create_attention, normalized_weight


def _randomize(bn: nn.modules.batchnorm._BatchNorm) -> None:
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)


def channel_reference(x, gamma, beta, mean, var, eps):
    """The paper's formula written out: x * sigmoid(w * (gamma * (x - mean) / sqrt(var + eps) + beta))."""
    w = gamma.abs() / gamma.abs().sum()
    shape = (1, -1, 1, 1)
    bn = gamma.view(shape) * (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) + beta.view(shape)
    return x * torch.sigmoid(w.view(shape) * bn)


def test_channel_nam_matches_reference_in_eval_and_train():
    torch.manual_seed(0)
    nam = ChannelNAM(6)
    _randomize(nam.bn)
    x = torch.randn(4, 6, 5, 5)
    nam.eval()
    expected = channel_reference(x, nam.bn.weight, nam.bn.bias, nam.bn.running_mean, nam.bn.running_var, nam.bn.eps)
    torch.testing.assert_close(nam(x), expected)

    nam.train()
    batch_mean, batch_var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    expected = channel_reference(x, nam.bn.weight, nam.bn.bias, batch_mean, batch_var, nam.bn.eps)
    old_mean = nam.bn.running_mean.clone()
    torch.testing.assert_close(nam(x), expected)
    # running statistics move exactly as a plain BatchNorm2d's would
    torch.testing.assert_close(nam.bn.running_mean, 0.9 * old_mean + 0.1 * batch_mean)
    assert int(nam.bn.num_batches_tracked) == 1


def test_gradient_reaches_gamma_through_the_normalized_weight():
    torch.manual_seed(0)
    nam = ChannelNAM(5).eval()
    _randomize(nam.bn)
    x = torch.randn(3, 5, 4, 4)
    nam(x).sum().backward()
    full = nam.bn.weight.grad.clone()

    # the same function with w treated as a constant gives a different gradient:
    gamma = nam.bn.weight.detach().clone().requires_grad_(True)
    w_const = normalized_weight(gamma.detach())
    shape = (1, -1, 1, 1)
    xhat = (x - nam.bn.running_mean.view(shape)) / torch.sqrt(nam.bn.running_var.view(shape) + nam.bn.eps)
    (x * torch.sigmoid(w_const.view(shape) * (gamma.view(shape) * xhat + nam.bn.bias.view(shape)))).sum().backward()
    assert not torch.allclose(full, gamma.grad, atol=1e-6)

    # and the full gradient is the derivative of the reference formula, w included
    gamma2 = nam.bn.weight.detach().clone().requires_grad_(True)
    channel_reference(x, gamma2, nam.bn.bias.detach(), nam.bn.running_mean, nam.bn.running_var, nam.bn.eps).sum().backward()
    torch.testing.assert_close(full, gamma2.grad)


def spatial_reference(x, lam, beta, eps):
    """Pixel normalization by hand: statistics of each pixel over batch and channels."""
    n, c, h, w = x.shape
    mean = x.mean(dim=(0, 1), keepdim=True)
    var = x.var(dim=(0, 1), unbiased=False, keepdim=True)
    wl = (lam.abs() / lam.abs().sum()).view(1, 1, h, w)
    bn = lam.view(1, 1, h, w) * (x - mean) / torch.sqrt(var + eps) + beta.view(1, 1, h, w)
    return x * torch.sigmoid(wl * bn)


def test_spatial_nam_matches_pixel_normalization_reference():
    torch.manual_seed(1)
    nam = SpatialNAM(4, 3).train()
    _randomize(nam.bn)
    x = torch.randn(5, 7, 4, 3)
    expected = spatial_reference(x, nam.bn.weight, nam.bn.bias, nam.bn.eps)
    torch.testing.assert_close(nam(x), expected)
    assert nam.bn.running_mean.shape == (12,)
    assert nam.saliency().shape == (4, 3)
    torch.testing.assert_close(nam.saliency().sum(), torch.tensor(1.0))


def test_spatial_nam_works_on_channels_last_input():
    nam = SpatialNAM(6, 6).eval()
    _randomize(nam.bn)
    x = torch.randn(2, 5, 6, 6)
    torch.testing.assert_close(nam(x.contiguous(memory_format=torch.channels_last)), nam(x))


def test_spatial_nam_gives_the_same_training_step_in_both_memory_layouts():
    # the two layouts take different views into BatchNorm; outputs, gradients and statistics agree
    x = torch.randn(4, 5, 6, 7, generator=torch.Generator().manual_seed(3))
    upstream = torch.linspace(-1, 1, x.numel()).view_as(x)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(4)
        nam = SpatialNAM(6, 7).train()
        _randomize(nam.bn)
        inp = x.clone(memory_format=fmt).requires_grad_(True)
        out = nam(inp)
        out.backward(upstream)
        results.append([out.detach(), inp.grad, nam.bn.weight.grad, nam.bn.bias.grad, nam.bn.running_mean,
                        nam.bn.running_var])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_spatial_nam_rejects_a_wrong_size_naming_both_sizes():
    nam = SpatialNAM(8, 8)
    with pytest.raises(NampruneError, match=r"expects 8x8 .* received 16x16"):
        nam(torch.randn(2, 3, 16, 16))


def test_nam_applies_channel_then_spatial():
    torch.manual_seed(2)
    nam = NAM(4, (5, 5), mode="both").eval()
    _randomize(nam.channel.bn)
    _randomize(nam.spatial.bn)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(nam(x), nam.spatial(nam.channel(x)))
    assert list(dict(nam.named_children())) == ["channel", "spatial"]


def test_attention_factory_by_short_name():
    assert isinstance(create_attention("none", 8), nn.Identity)
    assert [type(m) for m in create_attention("nam", 8, 4).children()] == [ChannelNAM, SpatialNAM]
    assert [type(m) for m in create_attention("nam-channel", 8).children()] == [ChannelNAM]
    assert [type(m) for m in create_attention("nam-spatial", 8, (4, 2)).children()] == [SpatialNAM]
    with pytest.raises(NampruneError, match="unknown attention 'se'"):
        create_attention("se", 8)
    with pytest.raises(NampruneError, match="feature-map size"):
        create_attention("nam", 8)
