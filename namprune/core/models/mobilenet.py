"""MobileNetV2 for 32x32 inputs: the stem and the second stage keep stride 1, otherwise
Sandler et al.'s layout (inverted residuals, linear bottlenecks, ReLU6)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops import Conv2dNormActivation

from ..nam.modules import create_attention
from . import register

# (expansion t, output channels c, repeats n, first stride s), CIFAR variant.
CIFAR_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3), project (1x1, linear), attention; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, attention: str, out_size: int):
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(Conv2dNormActivation(cin, hidden, 1, activation_layer=nn.ReLU6))
        layers += [
            Conv2dNormActivation(hidden, hidden, 3, stride, groups=hidden, activation_layer=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.attn = create_attention(attention, cout, out_size)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(self.conv(x))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, attention: str, input_size: int, in_channels: int, last_channels: int = 1280):
        super().__init__()
        layers: list[nn.Module] = [Conv2dNormActivation(in_channels, 32, 3, 1, activation_layer=nn.ReLU6)]
        cin, size = 32, input_size
        for t, c, n, s in CIFAR_SETTINGS:
            for i in range(n):
                stride = s if i == 0 else 1
                size = -(-size // stride)
                layers.append(InvertedResidual(cin, c, stride, t, attention, size))
                cin = c
        layers.append(Conv2dNormActivation(cin, last_channels, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("mobilenetv2")
def mobilenetv2(**kw) -> nn.Module:
    return MobileNetV2(**kw)
