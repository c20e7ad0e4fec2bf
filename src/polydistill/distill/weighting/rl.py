"""``rl`` — MTKD-RL's agent setting teacher weights (Yang et al., AAAI 2025; digest §5).

For each task with two or more teachers, a small policy network reads a per-sample *state* (for each
teacher: log(1+distillation loss) = the teacher–student gap, log(1+the teacher's own loss on the
labels) and whether the sample is labelled, and the teacher's mean confidence) and outputs logits μ
over the task's K teachers. The student uses ``w = K·softmax(μ)`` (mean 1 over teachers, like
``static``); during the first ``warmup_epochs`` it uses equal weights while the agent already learns.
The state differs from MTKD-RL's by design (4 scalars per teacher instead of the cosine, KL, CE, teacher
embedding and logits), and so does the policy's first layer (a bias; ``hidden`` 32, official 128).

Two update rules, selected by ``update``:

* ``reinforce`` (default): textbook REINFORCE with a baseline. Actions are sampled as Gaussian
  logits ``z ~ N(μ, σ²)``; the reward of weights ``w`` is ``r(w) = −Σ_k w_k·ℓ_k``, the advantage is the
  change in loss the sampled weights cause relative to the mean action,
  ``A = r(K·softmax(z)) − r(K·softmax(μ))`` (a self-critical baseline, Rennie et al. 2017); the agent's
  loss is ``−A·log π(z | s)``. Because the reward is computed from losses already measured on this batch,
  exploring costs no extra forward pass.
* ``surrogate``: MTKD-RL's rule. Weights ``(π + u + v)/3`` mixing the policy with two heuristics (``u``:
  teachers with lower label loss, ``v``: teachers with larger gap) — as MTKD-RL's ``PolicyTrans``
  (``tests/test_parity_mtkdrl.py``); rewards standardised within the batch and clipped to [0, 1]; agent
  loss ``mean_b r̂_b·Σ_k −log w_k`` (reward-weighted log-likelihood with all-ones targets). That is K times
  the official ``binary_cross_entropy(w, 1, weight=r̂)``, which averages over B×K (pinned by the parity
  test). Note (digest §5(b).6): on a simplex this pushes high-reward samples towards *uniform* weights; it
  is kept for faithfulness, not because it learns a preference.

The surrogate's reward, selected by ``reward``:

* ``distill`` (default): ``r = −Σ_k K·w_k·ℓ_k`` (the teacher terms only) standardised with the biased std.
  This is *not* MTKD-RL's reward: its ``r̂`` differs by up to 0.7 after standardisation (parity.md).
* ``official``: MTKD-RL's ``train_loops.py::train`` reward ``r = −(CE_s + Σ_k a_k·ℓ_k + 5·Σ_k f_k·F_k)``,
  standardised with the unbiased std, clipped to [0, 1]: ``CE_s`` is the student's per-sample label loss of
  the task (0 where a sample has no label), ``a`` the weights at the official scale (sum 1; all ones during
  warmup, as the official code's epoch 0). The feature term ``F`` (MTKD-RL's second, feature-map distillation
  with its own weights ``f``) has no counterpart *inside a task* here — a features task taught by the same
  teachers has its own policy and its own reward — so it is 0; with it absent the reward equals the official
  one (:func:`official_reward`, pinned with and without the feature term). The static ``gt_weight`` /
  ``teacher_weight`` are not applied in the reward (the official terms have weight 1). The engine must hand
  the task's label term to :meth:`RLTeacherWeighting.sample_weights` (``gt=``).

Deviation from the official schedule: the agent is updated every step through the engine's optimizer
(its own lr, default 1e-3 AdamW) instead of buffered SGD (lr 0.1) every 1000 iterations.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ...errors import ConfigError
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
    reward: Literal["distill", "official"] = Field(
        "distill", description="surrogate: 'distill' = −Σ w·ℓ of the teacher terms, biased std; 'official' = "
                               "MTKD-RL's reward (student label loss + weighted teacher terms, unbiased std)")

    @model_validator(mode="after")
    def _reward_needs_surrogate(self) -> RLOptions:
        if self.reward == "official" and self.update != "surrogate":
            raise ValueError("reward 'official' is MTKD-RL's surrogate rule's reward: set update: surrogate, or "
                             "drop reward (reinforce has its own advantage)")
        return self


class Policy(nn.Module):
    def __init__(self, num_teachers: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES_PER_TEACHER * num_teachers, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_teachers))
        nn.init.zeros_(self.net[2].weight)  # start from equal weights
        nn.init.zeros_(self.net[2].bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


#: ``sample_weights(..., gt=_NOT_GIVEN)``: the engine did not hand over the task's label term at all
_NOT_GIVEN = LossTerm(torch.empty(0), torch.empty(0, dtype=torch.bool))


def standardised(reward: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """``clamp((r − mean)/std, 0, 1)`` over the batch; 0 where the std is 0 (or undefined, one sample)."""
    if reward.numel() < 2:
        return torch.zeros_like(reward)
    std = reward.std(unbiased=unbiased)
    return ((reward - reward.mean()) / std.clamp_min(1e-8)).clamp(0.0, 1.0)


def official_reward(kd: torch.Tensor, actions: torch.Tensor, student_loss: torch.Tensor | None = None,
                    feature: torch.Tensor | None = None, feature_actions: torch.Tensor | None = None,
                    feature_weight: float = 5.0) -> torch.Tensor:
    """MTKD-RL's ``r̂`` (``train_loops.py::train``) from per-sample ``(B,)`` / ``(B, K)`` losses and weights:
    ``r = −(CE_s + Σ_k a_k·KD_k + feature_weight·Σ_k f_k·F_k)``, standardised with the unbiased std and
    clipped to [0, 1] — as MTKD-RL (``tests/test_parity_mtkdrl.py``). Omitted terms count 0."""
    loss = (actions * kd).sum(1)
    if student_loss is not None:
        loss = loss + student_loss
    if feature is not None:
        loss = loss + feature_weight * ((feature_actions if feature_actions is not None else actions) * feature).sum(1)
    return standardised(-loss, unbiased=True)


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

    @property
    def needs_gt_term(self) -> bool:
        """The engine passes the task's label term (``gt=``) to :meth:`sample_weights` (``reward: official``)."""
        return self.opts.update == "surrogate" and self.opts.reward == "official"

    def sample_weights(self, task: str, terms: dict[str, LossTerm], ctx: StepContext,
                       gt: LossTerm | None = _NOT_GIVEN):
        """``gt``: the task's label term (None when the batch has no label for it); used by ``reward: official``."""
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
                weights, aux = self._surrogate(mu, losses, terms, self._student_loss(gt, losses),
                                               ctx.epoch < self.opts.warmup_epochs)
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

    def _student_loss(self, gt: LossTerm | None, losses: torch.Tensor) -> torch.Tensor | None:
        """The student's per-sample label loss for ``reward: official`` (0 where unlabelled), else None."""
        if not self.needs_gt_term:
            return None
        if gt is _NOT_GIVEN:
            raise ConfigError("distill.teacher_weighting 'rl': reward 'official' adds the student's own label loss "
                              "to the reward, but this engine does not hand the label term to the teacher "
                              "weighting; use reward: distill")
        if gt is None:
            return torch.zeros_like(losses[:, 0])
        values = gt.per_sample.detach().float().to(losses.device)
        return torch.where(gt.mask.to(losses.device), values, torch.zeros_like(values))

    def _surrogate(self, mu: torch.Tensor, losses: torch.Tensor, terms: dict[str, LossTerm],
                   student_loss: torch.Tensor | None = None, warmup: bool = False):
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
        if self.opts.reward == "official":  # the weights the student applies, at the official scale (sum 1)
            r_hat = official_reward(losses, torch.ones_like(w) if warmup else w.detach(), student_loss)
        else:
            reward = -(k * w.detach() * losses).sum(1)
            r_hat = ((reward - reward.mean()) / reward.std(unbiased=False).clamp_min(1e-8)).clamp(0.0, 1.0)
        aux = (r_hat * -torch.log(w.clamp_min(1e-8)).sum(1)).mean()
        return k * w, aux
