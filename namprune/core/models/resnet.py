"""CIFAR-style ResNets: ResNet-18/34/50 with a 3x3 stem and no max-pool (as in the NAM
code), and He et al.'s ResNet-20/56 for CIFAR (the usual pruning benchmark).

Every residual branch ends in the attention layer, right before the addition. Shortcuts
that change shape use a 1x1 convolution + BatchNorm ("option B"), which keeps every
channel prunable.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..nam.modules import create_attention
from . import register


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, attention: str, out_size: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, cout, 3)
        self.attn = create_attention(attention, cout, out_size)
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, attention: str, out_size: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, cout, 1)
        self.attn = create_attention(attention, cout, out_size)
        self.shortcut = _shortcut(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attn(self.bn3(self.conv3(out)))
        return self.relu(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))


class ResNet(nn.Module):
    """A 3x3 stem, stages of residual blocks, global average pooling and a linear classifier."""

    def __init__(self, block: type[nn.Module], depths: list[int], widths: list[int], strides: list[int],
                 num_classes: int, attention: str, input_size: int, in_channels: int):
        super().__init__()
        stem = widths[0]
        self.conv1, self.bn1 = _conv_bn(in_channels, stem, 3)
        self.relu = nn.ReLU(inplace=True)
        stages, cin, size = [], stem, input_size
        for depth, width, stride in zip(depths, widths, strides):
            blocks = []
            for i in range(depth):
                s = stride if i == 0 else 1
                size = -(-size // s)  # a 3x3 conv with padding 1 and stride s gives ceil(size / s)
                blocks.append(block(cin, width, s, attention, size))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _imagenet_style(block, depths):
    def build(**kw):
        return ResNet(block, depths, [64, 128, 256, 512], [1, 2, 2, 2], **kw)
    return build


def _cifar_style(n):
    def build(**kw):
        return ResNet(BasicBlock, [n, n, n], [16, 32, 64], [1, 2, 2], **kw)
    return build


register("resnet18")(_imagenet_style(BasicBlock, [2, 2, 2, 2]))
register("resnet34")(_imagenet_style(BasicBlock, [3, 4, 6, 3]))
register("resnet50")(_imagenet_style(Bottleneck, [3, 4, 6, 3]))
register("resnet20")(_cifar_style(3))
register("resnet56")(_cifar_style(9))
