"""Teacher-feature normalisation: put every teacher's features on one scale before the student regresses them.

Why: foundation-model features differ wildly in scale and shape (a few CLIP channels carry most of the
energy, SAM's are tiny, DINOv2's heavy-tailed), so a shared student would listen mostly to whichever
teacher has the largest values. Two remedies from the literature, both with running statistics so the
normaliser lives in the student's state dict (saved, resumed exactly, dropped with the projector at export):

* ``standardize`` — DUNE's TeacherNorm: per-channel ``(t − μ) / max(σ, 1e-3)``.
* ``phi_s`` — RADIO's PHI-S (arXiv 2410.01680): rotate the centred features into the eigenbasis of their
  covariance, then by a normalised Hadamard matrix, which spreads the variance equally over all
  dimensions; one scalar ``α = sqrt(trace Σ / D)`` makes it unit variance. The Hadamard matrix exists here
  for powers of two only (Sylvester), so a ``C``-channel teacher is padded to ``D = 2^ceil(log2 C)``
  dimensions (384 → 512, 768 → 1024; 256 and 1024 unchanged); the padded dimensions carry no signal of
  their own but receive an equal share of the variance, which is exactly PHI-S's property.

Statistics: DUNE standardises with the current global batch (128 images × 1024 tokens); our batches are
small, so both modes use running statistics — a cumulative average over the first ``1 / min_momentum``
batches, then an exponential average with momentum ``min_momentum`` — updated on every training call.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("none", "standardize", "phi_s")


def padded_dim(channels: int) -> int:
    return 1 << math.ceil(math.log2(channels))


def hadamard(n: int) -> torch.Tensor:
    """The ``n × n`` Sylvester Hadamard matrix divided by ``sqrt(n)`` (orthogonal); ``n`` a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester Hadamard matrices exist for powers of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


class TeacherNorm(nn.Module):
    """Normalises ``(B, C, h, w)`` teacher features; updates its running statistics in training mode."""

    def __init__(self, channels: int, mode: str = "standardize", min_momentum: float = 0.01, eps: float = 1e-3):
        super().__init__()
        if mode not in NORMS:
            raise ValueError(f"feature norm must be one of {NORMS}, got '{mode}'")
        self.channels, self.mode, self.min_momentum, self.eps = channels, mode, min_momentum, eps
        self.out_channels = padded_dim(channels) if mode == "phi_s" else channels
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.zeros(channels))
        if mode == "standardize":
            self.register_buffer("var", torch.ones(channels))
        elif mode == "phi_s":
            self.register_buffer("cov", torch.eye(channels))
            self.register_buffer("transform", torch.eye(self.out_channels, channels))

    def extra_repr(self) -> str:
        return f"{self.channels} -> {self.out_channels}, mode={self.mode}"

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        """Fold a batch of features into the running statistics (and refresh the PHI-S rotation)."""
        if self.mode == "none":
            return
        x = features.detach().float().transpose(0, 1).reshape(self.channels, -1)  # (C, tokens)
        self.count += 1
        momentum = max(1.0 / float(self.count), self.min_momentum)
        mean = x.mean(1)
        centred = x - mean[:, None]
        if self.mode == "standardize":
            var = centred.pow(2).mean(1)
            # the running variance also absorbs the spread of batch means around the running mean
            shift = (mean - self.mean).pow(2) * (1 - momentum)
            self.var.mul_(1 - momentum).add_(momentum * (var + shift))
            self.mean.mul_(1 - momentum).add_(momentum * mean)
            return
        cov = centred @ centred.T / x.shape[1]
        delta = (mean - self.mean)[:, None]
        self.cov.mul_(1 - momentum).add_(momentum * (cov + (1 - momentum) * delta @ delta.T))
        self.mean.mul_(1 - momentum).add_(momentum * mean)
        self._refresh_transform()

    def _refresh_transform(self) -> None:
        cov = self.cov.double()
        eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
        d = self.out_channels
        alpha = math.sqrt(max(float(eigenvalues.clamp_min(0).sum()) / d, self.eps**2))
        rotation = hadamard(d)[:, : self.channels] @ eigenvectors.T  # (D, C): eigenbasis, then Hadamard
        self.transform.copy_((rotation / alpha).float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` → normalised ``(B, out_channels, h, w)``; statistics update in training mode."""
        if self.mode == "none":
            return features.float()
        if self.training:
            self.update(features)
        x = features.float() - self.mean.view(1, -1, 1, 1)
        if self.mode == "standardize":
            return x / self.var.sqrt().clamp_min(self.eps).view(1, -1, 1, 1)
        return torch.einsum("dc,bchw->bdhw", self.transform, x)
