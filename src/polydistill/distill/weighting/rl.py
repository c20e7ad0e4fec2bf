"""``rl`` — MTKD-RL's agent setting teacher weights (Yang et al., AAAI 2025; digest §5).

For each task with two or more teachers, a small policy network reads a per-sample *state* (for each
teacher: log(1+distillation loss) = the teacher–student gap, log(1+the teacher's own loss on the
labels) and whether the sample is labelled, and the teacher's mean confidence) and outputs logits μ
over the task's K teachers. The student uses ``w = K·softmax(μ)`` (mean 1 over teachers, like
``static``); during the first ``warmup_epochs`` it uses equal weights while the agent already learns.

The *reward* of a weight vector on a sample is the negative of the student's weighted distillation
loss on it, ``r(w) = −Σ_k w_k·ℓ_k`` (the paper's reward without the weight-independent label term).
Two update rules, selected by ``update``:

* ``reinforce`` (default): textbook REINFORCE with a baseline. Actions are sampled as Gaussian
  logits ``z ~ N(μ, σ²)``; the advantage is the change in loss the sampled weights cause relative to
  the mean action, ``A = r(K·softmax(z)) − r(K·softmax(μ))`` (a self-critical baseline, Rennie et al.
  2017); the agent's loss is ``−A·log π(z | s)``. Because the reward is computed from losses already
  measured on this batch, exploring costs no extra forward pass.
* ``surrogate``: the official code's rule: weights ``(π + u + v)/3`` mixing the policy with two
  heuristics (``u``: teachers with lower label loss, ``v``: teachers with larger gap), rewards
  standardised within the batch and clipped to [0, 1], agent loss ``mean_b r̂_b·Σ_k −log w_k``
  (reward-weighted log-likelihood with all-ones targets). Note (digest §5(b).6): on a simplex this
  pushes high-reward samples towards *uniform* weights; it is kept for faithfulness, not because it
  learns a preference.

Deviation from the official schedule: the agent is updated every step through the engine's optimizer
(its own lr, default 1e-3 Adam) instead of buffered SGD (lr 0.1) every 1000 iterations.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..objective import LossTerm
from .base import Options, StepContext, TeacherWeighting, ones_like_terms, stacked_losses

FEATURES_PER_TEACHER = 4


class RLOptions(Options):
    update: Literal["reinforce", "surrogate"] = "reinforce"
    hidden: int = Field(32, gt=0, description="width of the policy's hidden layer")
    lr: float = Field(1e-3, gt=0, description="agent learning rate (AdamW in the engine's optimizer)")
    sigma: float = Field(0.5, gt=0, description="exploration: std of the sampled logits (reinforce)")
    warmup_epochs: float = Field(1.0, ge=0, description="equal weights for the student during this long")
    heuristics: bool = Field(True, description="surrogate: mix the policy with the u and v heuristics")


class Policy(nn.Module):
    def __init__(self, num_teachers: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES_PER_TEACHER * num_teachers, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_teachers))
        nn.init.zeros_(self.net[2].weight)  # start from equal weights
        nn.init.zeros_(self.net[2].bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


def agent_state(terms: dict[str, LossTerm]) -> torch.Tensor:
    """``(B, 4K)`` detached per-sample state, each feature O(1)."""
    feats = []
    for term in terms.values():
        gap = term.per_sample.detach().float()
        err = term.stats.get("teacher_error", torch.full_like(gap, float("nan"))).float()
        labelled = torch.isfinite(err)
        conf = term.stats.get("confidence", torch.ones_like(gap)).float()
        feats += [torch.log1p(gap.clamp_min(0)), torch.log1p(torch.where(labelled, err, 0.0).clamp_min(0)),
                  labelled.float(), conf]
    return torch.stack(feats, dim=1)


class RLTeacherWeighting(TeacherWeighting):
    name = "rl"
    Options = RLOptions
    needs_teacher_stats = True

    def setup(self, tasks, teachers_per_task) -> None:
        super().setup(tasks, teachers_per_task)
        self.policies = nn.ModuleDict({
            t: Policy(len(ks), self.opts.hidden) for t, ks in teachers_per_task.items() if len(ks) >= 2
        })

    def sample_weights(self, task: str, terms: dict[str, LossTerm], ctx: StepContext):
        if task not in self.policies or len(terms) != len(self.teachers_per_task[task]):
            return ones_like_terms(terms), None
        policy = self.policies[task]
        device = next(policy.parameters()).device
        state = agent_state(terms).to(device)
        losses = stacked_losses(terms).to(device)  # (B, K)
        with torch.autocast(device.type, enabled=False):
            mu = policy(state)
            if self.opts.update == "reinforce":
                weights, aux = self._reinforce(mu, losses, ctx, list(self.tasks).index(task))
            else:
                weights, aux = self._surrogate(mu, losses, terms)
        if ctx.epoch < self.opts.warmup_epochs:
            weights = torch.ones_like(weights)
        return {name: weights[:, i].detach().to(terms[name].per_sample.device) for i, name in enumerate(terms)}, aux

    def _reinforce(self, mu: torch.Tensor, losses: torch.Tensor, ctx: StepContext, salt: int):
        k = losses.shape[1]
        noise = torch.randn(mu.shape, generator=ctx.generator(1000 + salt)).to(mu.device)
        z = mu.detach() + self.opts.sigma * noise
        mean_w = k * F.softmax(mu.detach(), dim=1)
        advantage = -(k * F.softmax(z, dim=1) * losses).sum(1) + (mean_w * losses).sum(1)
        log_prob = -((z - mu) ** 2).sum(1) / (2 * self.opts.sigma**2)
        return mean_w, -(advantage * log_prob).mean()

    def _surrogate(self, mu: torch.Tensor, losses: torch.Tensor, terms: dict[str, LossTerm]):
        k = losses.shape[1]
        pi = F.softmax(mu, dim=1)
        if self.opts.heuristics:
            err = torch.stack([t.stats["teacher_error"].float() for t in terms.values()], 1).to(mu.device)
            u = (1 - F.softmax(torch.nan_to_num(err, nan=0.0), dim=1)) / (k - 1)
            u = torch.where(torch.isfinite(err).all(1, keepdim=True), u, torch.full_like(u, 1.0 / k))
            v = F.softmax(losses, dim=1)
            w = (pi + u + v) / 3
        else:
            w = pi
        reward = -(k * w.detach() * losses).sum(1)
        r_hat = ((reward - reward.mean()) / reward.std(unbiased=False).clamp_min(1e-8)).clamp(0.0, 1.0)
        aux = (r_hat * -torch.log(w.clamp_min(1e-8)).sum(1)).mean()
        return k * w, aux
