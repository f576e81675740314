"""The example classifier: a small CNN for 28x28 grey-scale digits."""

from __future__ import annotations

from torch import nn


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def build_model(num_classes: int = 10, width: int = 32) -> nn.Module:
    """Four conv blocks (28 -> 4 pixels) and a two-layer head; about 0.4M parameters at width 32."""
    return nn.Sequential(
        _conv_block(1, width, 1),
        _conv_block(width, 2 * width, 2),
        _conv_block(2 * width, 2 * width, 2),
        _conv_block(2 * width, 4 * width, 2),
        nn.Flatten(),
        nn.Linear(4 * width * 4 * 4, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )
