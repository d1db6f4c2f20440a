import pytest
import torch
import torch.nn as nn

from namprune import NampruneError, models
from namprune.core.nam.modules import ChannelNAM, SpatialNAM
from namprune.core.nam.sparsity import SparsityPenalty, penalized_parameters


def _randomize_scales(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(-1, 1)


@pytest.mark.parametrize("targets", ["nam", "bn", "all"])
def test_penalty_value_and_gradient(targets):
    model = models.create("resnet20", attention="nam", input_size=16)
    _randomize_scales(model)
    nam = [m.bn for m in model.modules() if isinstance(m, (ChannelNAM, SpatialNAM))]
    every = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    expected_layers = {"nam": nam, "bn": [m for m in every if not any(m is n for n in nam)], "all": every}[targets]
    # ResNet-20: 9 blocks, one channel and one spatial NAM each; 19 + 2 shortcut BatchNorms besides
    assert len(expected_layers) == {"nam": 18, "bn": 21, "all": 39}[targets]
    assert {id(p) for p in penalized_parameters(model, targets)} == {id(m.weight) for m in expected_layers}

    p = 3e-4
    penalty = SparsityPenalty(model, p, targets)()
    expected = p * sum(m.weight.abs().sum() for m in expected_layers)
    torch.testing.assert_close(penalty, expected)

    penalty.backward()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if any(m is e for e in expected_layers):
                torch.testing.assert_close(m.weight.grad, p * torch.sign(m.weight.detach()))
            else:
                assert m.weight.grad is None


def test_penalty_off_and_bad_arguments():
    model = models.create("resnet20", attention="none", input_size=16)
    assert SparsityPenalty(model, 1e-4, "nam")() is None  # no NAM layers: nothing to penalise
    assert SparsityPenalty(model, 0.0, "bn")() is None
    with pytest.raises(NampruneError, match="unknown sparsity targets"):
        penalized_parameters(model, "every")
    with pytest.raises(NampruneError, match=">= 0"):
        SparsityPenalty(model, -1.0, "all")
