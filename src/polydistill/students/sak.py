"""The SAK layout (Lu et al., ICLR 2025, "Swiss Army Knife"): a shared stem, one adapter path per teacher,
and a mixture-of-representations router per task.

Why: one shared representation must compromise between teachers with different biases (DINOv2's
semantics, SAM's edges, a depth model's geometry). SAK keeps a teacher-agnostic stem and gives every
teacher a light *adapter path* that runs alongside it and learns that teacher's representation; each
task then mixes the stem and the paths with its own router, so tasks pick the knowledge they need.
All paths are student modules: teachers are not needed at inference.

Adapted to a convolutional pyramid (the paper uses a ViT with an adapter after every block):

* stem — the timm backbone (``features_only``), levels ``x_1 … x_L``;
* path of teacher representation ``p`` — ``r_1 = A_1(x_1)``, ``r_l = A_l(x_l + T_l(r_{l−1}))``, with the
  bottleneck adapter ``A(z) = z + γ · W_up GELU(W_down z)`` (width C/4, γ initialised to 1) and ``T_l`` an
  average pool to the next level's size plus a 1×1 convolution; the path's pyramid goes through its own
  neck into the features task's projector (one path per ``features`` task, i.e. per teacher);
* router of task τ at level l — ``x_l`` → 1×1 conv (C/2) → channel LayerNorm → GELU → 1×1 conv (2E) →
  mean over positions → clean logits and noise scales; in training the logits get noise
  ``ε · (softplus(n) + 0.01)`` with one ε per image (default) or per pixel as SAK's code (``noise``); the
  softmax weights mix ``{x_l} ∪ {r_l^p}`` (E = 1 + paths); each task's mixed pyramid goes through the task's
  own neck and head (the paper's per-task decoders).

Two-stage training as in the paper: stage 1 distils only the features tasks (paths and stem learn the
teachers' representations); stage 2 adds the task heads and routers and continues distillation
(``train.init_from`` starts stage 2 from stage 1's weights; see ``configs/sak_*.yaml``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import did_you_mean


class Adapter(nn.Module):
    """``z + γ · W_up GELU(W_down z)`` on a feature map (1×1 convolutions)."""

    def __init__(self, channels: int, ratio: int = 4):
        super().__init__()
        hidden = max(channels // ratio, 8)
        self.down = nn.Conv2d(channels, hidden, 1)
        self.up = nn.Conv2d(hidden, channels, 1)
        self.gamma = nn.Parameter(torch.ones(1))
        for conv in (self.down, self.up):
            nn.init.trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.gamma * self.up(F.gelu(self.down(z)))


class AdapterPath(nn.Module):
    """One teacher's path alongside the stem: a chain of adapters across the pyramid levels."""

    def __init__(self, channels: list[int], ratio: int = 4):
        super().__init__()
        self.adapters = nn.ModuleList(Adapter(c, ratio) for c in channels)
        self.transitions = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        r = self.adapters[0](feats[0])
        out = [r]
        for adapter, transition, x in zip(self.adapters[1:], self.transitions, feats[1:]):
            r = adapter(x + transition(F.adaptive_avg_pool2d(r, x.shape[-2:])))
            out.append(r)
        return out


ROUTER_NOISE = ("image", "pixel")


class MoRRouter(nn.Module):
    """Noisy gating over ``experts`` (the stem feature first, then the adapter paths); in eval, as SAK's
    ``MoR``/``GlobalRouter`` (``tests/test_parity_sak.py``).

    ``noise`` (training only): ``image`` (default) draws one ε per image and expert, so an image's mixture is
    the same everywhere (the paper's image-level gating); ``pixel`` draws ε per position after broadcasting
    the image-level logits, as SAK's code does (``randn_like`` on the expanded logits), so the training-time
    mixture varies across the map while its clean part and noise scale stay image-level.
    """

    def __init__(self, channels: int, experts: int, noise: str = "image"):
        super().__init__()
        if noise not in ROUTER_NOISE:
            raise ConfigError(f"SAK router noise must be one of {ROUTER_NOISE}, got {noise!r}"
                              f"{did_you_mean(str(noise), ROUTER_NOISE)}")
        hidden = max(channels // 2, 8)
        self.experts, self.noise = experts, noise
        self.gate = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), _TokenLayerNorm(hidden), nn.GELU(), nn.Conv2d(hidden, 2 * experts, 1)
        )
        #: the mean mixing weights of the last forward pass (detached), for logs and reports
        self.last_weights: torch.Tensor | None = None

    def weights(self, stem: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, E)`` mixing weights, or ``(B, E, H, W)`` with per-pixel noise in training. ``eps``: the
        standard normal noise to use (drawn when None; shaped like the result)."""
        logits = self.gate(stem).mean((2, 3))
        clean, noise = logits[:, : self.experts], logits[:, self.experts:]
        if not self.training:
            return clean.softmax(1)
        scale = F.softplus(noise) + 0.01
        if self.noise == "pixel":
            clean, scale = (x[:, :, None, None].expand(-1, -1, *stem.shape[-2:]) for x in (clean, scale))
        return (clean + (torch.randn_like(clean) if eps is None else eps) * scale).softmax(1)

    def forward(self, stem: torch.Tensor, experts: list[torch.Tensor], eps: torch.Tensor | None = None
                ) -> torch.Tensor:
        p = self.weights(stem, eps)
        if p.dim() == 2:
            p = p[:, :, None, None]
        self.last_weights = p.detach().mean((0, 2, 3))
        return sum(p[:, i, None] * e for i, e in enumerate(experts))


class _TokenLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels at every position of a ``(B, C, H, W)`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
