"""Models in the state training leaves them, for tests that need more than initial weights."""

import torch
import torch.nn as nn

from namprune import NAM, load_data, models
from namprune.core.store import checkpoint


def trained_like(model: nn.Module, seed: int = 0, batches: int = 3) -> nn.Module:
    """Distinct BatchNorm scales and shifts (NAM's included) and running statistics gathered
    from random images, so rankings are not ties and every BatchNorm has real statistics
    to fold. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    spec = model.namprune_spec
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2 - 0.5)
            m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
            m.momentum = None  # cumulative averages: the statistics of exactly these batches
            m.reset_running_stats()
        model.train()
        for _ in range(batches):
            model(torch.randn(8, spec["in_channels"], spec["input_size"], spec["input_size"], generator=g))
    for m in norms:
        m.momentum = 0.1
    return model.eval()


def digits_model(name: str, attention: str = "nam", size: int = 16, seed: int = 0) -> nn.Module:
    """A registry model for digits images (one channel, ten classes) of side ``size``."""
    torch.manual_seed(seed)
    return trained_like(models.create(name, num_classes=10, attention=attention, input_size=size, in_channels=1), seed)


def save_digits_checkpoint(path, model: nn.Module):
    """Save ``model`` as a checkpoint trained on digits at the model's input size."""
    info = load_data("digits", image_size=model.namprune_spec["input_size"], batch_size=32).info.as_dict()
    return checkpoint.save(path, model, info)


def random_batches(size: int, channels: int = 1, batches: int = 2, seed: int = 0) -> list:
    """Random calibration batches: enough for data-driven scores and recalibration to run on any architecture."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, channels, size, size, generator=g), torch.randint(0, 10, (8,), generator=g))
            for _ in range(batches)]


def small_nam_net(seed: int = 0) -> nn.Module:
    """A convolution, a BatchNorm and a full NAM (channel + spatial) for 16x16 one-channel images:
    enough to learn digits in a few epochs, small enough to compile or train in a second."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), NAM(8, 16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10))


def pruned_digits_run(root):
    """A digits ResNet-20 checkpoint (``root/base``) and a run pruned from it to half its
    channels (``root/pruned``, with the report.json that names its source): the pair an
    export times pruned against unpruned. Returns both paths."""
    from namprune.app.stages import prune_checkpoint
    from namprune.core.settings import PruneConfig

    base = save_digits_checkpoint(root / "base" / "model.pt", digits_model("resnet20", "nam", 16))
    prune_checkpoint(base, PruneConfig(ratio=0.5), root / "pruned", progress=False)
    return base, root / "pruned"
