"""Small seeded architectures that pruning must handle, built in code."""

from __future__ import annotations

import torch
from torch import nn


class ResidualDepthwiseCNN(nn.Module):
    """Stem, a depthwise-separable block with a residual add, global pooling and a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU())
        self.pointwise = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32))
        self.expand = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, image):
        x = self.stem(image)
        x = torch.relu(x + self.pointwise(self.depthwise(x)))
        return self.head(self.expand(x).mean(dim=(2, 3)))


class MLP(nn.Module):
    """Three Linear layers."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))

    def forward(self, features):
        return self.net(features)


class EmbeddingModel(nn.Module):
    """User and item tables combined with dense features, by concat or (buggy for pruning) stack."""

    def __init__(self, combine: str = "cat"):
        super().__init__()
        self.combine = combine
        self.users, self.items = nn.Embedding(50, 16), nn.Embedding(40, 16)
        self.dense = nn.Linear(4, 16)
        self.top = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, user, item, dense):
        parts = [self.users(user), self.items(item), self.dense(dense)]
        joined = torch.cat(parts, dim=1) if self.combine == "cat" else torch.stack(parts, dim=1).flatten(1)
        return self.top(joined)


class QKVAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections; head_dim is fixed, heads may go."""

    def __init__(self, dim: int = 32, num_heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, _ = x.shape
        shape = (batch, tokens, self.num_heads, self.head_dim)
        q, k, v = (layer(x).reshape(shape).transpose(1, 2) for layer in (self.q, self.k, self.v))
        attention = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, dim=-1)
        return self.out((attention @ v).transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))


class TinyTransformer(nn.Module):
    """Token projection, one attention block (custom q/k/v or nn.MultiheadAttention), mean pool, head."""

    def __init__(self, kind: str = "qkv"):
        super().__init__()
        self.kind = kind
        self.embed = nn.Linear(8, 32)
        self.attn = QKVAttention() if kind == "qkv" else nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = x + (self.attn(x) if self.kind == "qkv" else self.attn(x, x, x, need_weights=False)[0])
        return self.head(x.mean(dim=1))
