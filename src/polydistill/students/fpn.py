"""A light feature pyramid neck: lateral 1×1 convs, top-down sum, every level fused at stride 4.

Dense tasks need fine resolution and global context at once; summing all pyramid levels at the
finest one gives both for a few convolutions (the measured cost is small next to the backbone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class FPN(nn.Module):
    """Multi-level features ``[finest, ..., coarsest]`` -> one map at the finest level's stride."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down: add the coarser level, upsampled
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest")
        size = laterals[0].shape[-2:]
        out = self.smooth[0](laterals[0])
        for smooth, lat in zip(self.smooth[1:], laterals[1:]):
            out = out + F.interpolate(smooth(lat), size=size, mode="bilinear", align_corners=False)
        return out
