"""Tiny PyTorch models built in the tests from a fixed seed (torch is imported by the caller's importorskip)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

INPUT_SHAPE = (3, 12, 12)
CLASSES = 7


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Mixer(nn.Module):
    """A Linear over a 3-D tensor (exported as MatMul, not Gemm) and a Linear called twice."""

    def __init__(self, tokens: int, width: int):
        super().__init__()
        self.token_fc = nn.Linear(tokens, tokens)
        self.shared = nn.Linear(width, width)

    def forward(self, x):
        x = self.token_fc(x.flatten(2)).mean(2)  # (N, C, L) -> Linear over L -> (N, C)
        return self.shared(torch.relu(self.shared(x)))


class TinyNet(nn.Module):
    """Conv-BN-ReLU blocks in nested Sequentials, a pool, a mixer and a Linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Sequential(ConvBlock(3, 8), ConvBlock(8, 16)), nn.MaxPool2d(2))
        self.mixer = Mixer(36, 16)
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(16, CLASSES))

    def forward(self, x):
        return self.head(self.mixer(self.features(x)))


# The module that owns the weights of each weighted op, in graph order.
WEIGHTED_MODULES = ("features.0.0.conv", "features.0.1.conv", "mixer.token_fc", "mixer.shared", "mixer.shared",
                    "head.1")


def tiny_net(seed: int = 0) -> TinyNet:
    """TinyNet in eval mode with random weights and randomised BN statistics (so folding BN changes the weights)."""
    torch.manual_seed(seed)
    model = TinyNet()
    rng = np.random.default_rng(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.data = torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32))
            module.bias.data = torch.from_numpy(rng.normal(0, 0.2, c).astype(np.float32))
            module.running_mean = torch.from_numpy(rng.normal(0, 0.3, c).astype(np.float32))
            module.running_var = torch.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32))
    return model.eval()


def batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *INPUT_SHAPE)).astype(np.float32)
