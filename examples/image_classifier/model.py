"""The example classifier: a small VGG-style CNN for 28x28 grey-scale digits."""

from __future__ import annotations

from torch import nn


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def build_model(num_classes: int = 10, width: int = 16) -> nn.Module:
    """Five conv blocks with three 2x max-pools (28 -> 3 pixels) and a two-layer head; 0.28M parameters."""
    return nn.Sequential(
        _conv_block(1, width),
        _conv_block(width, 2 * width),
        nn.MaxPool2d(2),
        _conv_block(2 * width, 4 * width),
        _conv_block(4 * width, 4 * width),
        nn.MaxPool2d(2),
        _conv_block(4 * width, 8 * width),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * width * 3 * 3, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )
