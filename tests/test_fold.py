import copy

import pytest
import torch

import namprune
from model_helpers import digits_model, random_batches, save_digits_checkpoint, trained_like
from namprune import NampruneError, fold_nam, models
from namprune.core.nam.fold import FoldedChannelNAM, FoldedNAM, FoldedSpatialNAM, fold_branch
from namprune.core.nam.modules import ChannelNAM, SpatialNAM
from namprune.core.pruning.prune import prune
from namprune.core.settings import PruneConfig
from test_nam import _randomize


def channel_nams(model):
    return [m for m in model.modules() if isinstance(m, ChannelNAM)]


def spatial_nams(model):
    return [m for m in model.modules() if isinstance(m, SpatialNAM)]


def _with_statistics(nam, x):
    """Random scales, then running statistics gathered from ``x`` (train mode), then eval."""
    _randomize(nam.bn)
    nam.bn.momentum = None  # a cumulative average: the statistics of all batches seen
    nam.train()
    with torch.no_grad():
        for chunk in x.split(4):
            nam(chunk * 1.5 + 0.3)
    return nam.eval()


def test_channel_branch_folds_exactly():
    torch.manual_seed(0)
    x = torch.randn(16, 6, 5, 5)
    nam = _with_statistics(ChannelNAM(6), x)
    folded = fold_branch(nam)
    assert isinstance(folded, FoldedChannelNAM) and folded.a.shape == (6,)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), nam(x), rtol=1e-5, atol=1e-5)
        # the folded gate is x * sigmoid(a * x + b), written out
        a, b = folded.a.view(1, -1, 1, 1), folded.b.view(1, -1, 1, 1)
        torch.testing.assert_close(folded(x), x * torch.sigmoid(a * x + b))


def test_spatial_branch_folds_exactly_also_on_channels_last():
    torch.manual_seed(1)
    x = torch.randn(16, 7, 4, 3)
    nam = _with_statistics(SpatialNAM(4, 3), x)
    folded = fold_branch(nam)
    assert isinstance(folded, FoldedSpatialNAM) and folded.a.shape == (1, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), nam(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded(x.contiguous(memory_format=torch.channels_last)), nam(x),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,size", [("resnet20", 16), ("mobilenetv2", 16), ("tv:mobilenet_v3_small", 32)])
def test_both_branches_fold_in_a_real_model(name, size):
    model = digits_model(name, "nam", size)
    branches = len(channel_nams(model)) + len(spatial_nams(model))
    folded = fold_nam(model)
    assert sum(isinstance(m, FoldedNAM) for m in folded.modules()) == branches > 0
    assert not channel_nams(folded) and not spatial_nams(folded)
    x = torch.randn(8, 1, size, size)
    with torch.no_grad():
        expected = model(x)
        assert expected.std(dim=0).min() > 0  # the logits depend on the image: the comparison can fail
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_works_on_a_model_pruned_twice_and_reloaded(tmp_path):
    model = digits_model("resnet20", "nam", 16)
    for round_ in (1, 2):
        prune(model, PruneConfig(ratio=0.3, seed=round_), random_batches(16))
        model = namprune.load(save_digits_checkpoint(tmp_path / f"round{round_}.pt", model.eval()))
    assert len(model.namprune_history) > 0
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fold_nam(model)(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_returns_a_copy_unless_in_place():
    model = digits_model("resnet20", "nam-channel", 16)
    before = copy.deepcopy(model.state_dict())
    folded = fold_nam(model)
    assert folded is not model and len(channel_nams(model)) == 9
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert fold_nam(model, inplace=True) is model and not channel_nams(model)


def test_folded_model_is_for_inference_only(tmp_path):
    folded = fold_nam(digits_model("resnet20", "nam", 16))
    with pytest.raises(NampruneError, match="cannot save a folded model"):
        save_digits_checkpoint(tmp_path / "model.pt", folded)
    with pytest.raises(NampruneError, match="cannot prune a folded model"):
        prune(folded, PruneConfig(ratio=0.3))
    assert not (tmp_path / "model.pt").exists()


def _gradients(model, x):
    """d(a weighted sum of the logits)/d(image and every parameter), in eval mode."""
    x = x.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    (model(x) * torch.linspace(-1, 1, 10)).sum().backward()
    return x.grad, {name: p.grad for name, p in model.named_parameters()}


def test_folded_model_gives_the_gradients_of_the_unfolded_one():
    """Gradients through a folded model (saliency maps, attacks) take the autograd path, not the
    in-place inference one, and equal the unfolded model's."""
    model = digits_model("resnet20", "nam", 16)
    folded = fold_nam(model)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    image_grad, param_grads = _gradients(model, x)
    folded_image_grad, folded_param_grads = _gradients(folded, x)
    assert image_grad.abs().max() > 0
    torch.testing.assert_close(folded_image_grad, image_grad, rtol=1e-4, atol=1e-6)
    shared = folded_param_grads.keys() & param_grads.keys()  # all but the NAM BatchNorms, which folding turned into constants
    assert len(shared) == len(folded_param_grads) > 0
    for name in shared:
        torch.testing.assert_close(folded_param_grads[name], param_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("nam", [ChannelNAM(4), SpatialNAM(3, 3)], ids=["channel", "spatial"])
def test_folded_branch_gradients_match_finite_differences(nam):
    torch.manual_seed(2)
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    folded = fold_branch(_with_statistics(nam.double(), x))
    assert torch.autograd.gradcheck(folded, (x.requires_grad_(),))


def test_model_without_nam_is_unchanged():
    model = trained_like(models.create("resnet20", attention="none", input_size=16))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fold_nam(model)(x), model(x))
