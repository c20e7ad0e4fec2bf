"""MTKD-RL parity: the ``rl`` teacher weighting against numbers from winycg/MTKD-RL's own code.

``tests/fixtures/parity/mtkdrl.json`` holds the outputs of ``models/policy.py::PolicyTrans``,
``train_loops.py::train`` (the reward) and ``train_loops.py::train_agent`` (the agent loss and its gradient) on
fixed inputs; ``mtkdrl_generate.py`` next to it regenerates them from a checkout (header: commit, recipe).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polydistill.distill.objective import LossTerm
from polydistill.distill.weighting import StepContext
from polydistill.distill.weighting.rl import RLTeacherWeighting, official_reward, standardised
from polydistill.errors import ConfigError
from polydistill.tasks import build_task

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "parity" / "mtkdrl.json").read_text())


def tensor(key: str) -> torch.Tensor:
    return torch.tensor(FIXTURE[key], dtype=torch.float32)


def policy_weights() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixture's recipe (``_source.how``): steam, logit_head weight and bias of the official policy."""
    k, hidden = FIXTURE["teachers"], FIXTURE["hidden"]
    g = torch.Generator().manual_seed(1)
    return (0.3 * torch.randn(hidden, 4 * k, generator=g), 0.3 * torch.randn(k, hidden, generator=g),
            0.1 * torch.randn(k, generator=g))


def official_policy(**options) -> RLTeacherWeighting:
    """polydistill's surrogate with the official policy's weights (its first layer has no bias: 0 here)."""
    k = FIXTURE["teachers"]
    rl = RLTeacherWeighting({"update": "surrogate", "hidden": FIXTURE["hidden"], "warmup_epochs": 0, **options})
    rl.setup({"y": build_task("depth")}, {"y": [f"t{i}" for i in range(k)]})
    w1, w2, b2 = policy_weights()
    net = rl.policies["y"].net
    with torch.no_grad():
        net[0].weight.copy_(w1)
        net[0].bias.zero_()
        net[2].weight.copy_(w2)
        net[2].bias.copy_(b2)
    return rl


def terms() -> dict[str, LossTerm]:
    kd, ce, conf = tensor("kd"), tensor("teacher_ce"), tensor("confidence")
    mask = torch.ones(kd.shape[0], dtype=torch.bool)
    return {f"t{i}": LossTerm(kd[:, i], mask, {"teacher_error": ce[:, i], "confidence": conf[:, i]})
            for i in range(kd.shape[1])}


def gt_term() -> LossTerm:
    ce = tensor("student_ce")
    return LossTerm(ce, torch.ones_like(ce, dtype=torch.bool))


def ctx(step: int = 0) -> StepContext:
    return StepContext(step=step, steps_per_epoch=100)


def test_surrogate_weights_are_policytrans_weights():
    """(π + u + v)/3 as MTKD-RL's PolicyTrans (dynamic=False); polydistill applies K times it."""
    k = FIXTURE["teachers"]
    weights, _ = official_policy().sample_weights("y", terms(), ctx())
    ours = torch.stack([weights[f"t{i}"] for i in range(k)], 1) / k
    assert (ours - tensor("logit_weights")).abs().max() < 1e-6


def test_official_reward_matches_train_loops():
    """r̂ with and without MTKD-RL's feature term (feat_weight 5 / 0) as train_loops.py::train."""
    kd, w, ce = tensor("kd"), tensor("logit_weights"), tensor("student_ce")
    full = official_reward(kd, w, ce, tensor("feature"), w, FIXTURE["feature_weight"])
    assert (full - tensor("reward_full")).abs().max() < 1e-6
    assert (official_reward(kd, w, ce) - tensor("reward_no_feature")).abs().max() < 1e-6


def test_default_reward_is_not_the_official_one():
    """The default 'distill' reward (teacher terms only, biased std) is a documented deviation, pinned here."""
    k, kd, w = FIXTURE["teachers"], tensor("kd"), tensor("logit_weights")
    ours = standardised(-(k * w * kd).sum(1), unbiased=False)
    assert (ours - tensor("reward_no_feature")).abs().max() > 0.3


def test_agent_loss_and_gradient_are_k_times_train_agent():
    """polydistill's agent loss sums −log w over the K teachers, BCE averages over B×K: exactly a factor K."""
    k = FIXTURE["teachers"]
    rl = official_policy(reward="official")
    _, aux = rl.sample_weights("y", terms(), ctx(), gt=gt_term())
    assert float(aux.detach()) == pytest.approx(k * FIXTURE["agent_loss_logits"], rel=1e-5)
    aux.backward()
    head = rl.policies["y"].net[2]
    assert (head.weight.grad - k * tensor("logit_head_grad_weight")).abs().max() < 1e-6
    assert (head.bias.grad - k * tensor("logit_head_grad_bias")).abs().max() < 1e-6


def test_official_reward_in_warmup_uses_the_equal_weights_applied():
    """The official epoch 0 applies all-ones weights, and its reward uses them; so does reward: official."""
    rl = official_policy(reward="official", warmup_epochs=1)
    weights, aux = rl.sample_weights("y", terms(), ctx(step=3), gt=gt_term())
    assert all(torch.equal(w, torch.ones(6)) for w in weights.values())
    kd, ce = tensor("kd"), tensor("student_ce")
    r_hat = official_reward(kd, torch.ones_like(kd), ce)
    pi = tensor("logit_weights")
    expected = (r_hat * -torch.log(pi).sum(1)).mean()
    assert float(aux.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_official_reward_without_labels_and_without_the_engine_handing_them():
    rl = official_policy(reward="official")
    _, unlabelled = rl.sample_weights("y", terms(), ctx(), gt=None)  # a batch without labels: CE_s counts 0
    expected = official_reward(tensor("kd"), tensor("logit_weights"))
    pi = tensor("logit_weights")
    assert float(unlabelled.detach()) == pytest.approx(float((expected * -torch.log(pi).sum(1)).mean()), rel=1e-5)
    with pytest.raises(ConfigError, match="label term"):
        rl.sample_weights("y", terms(), ctx())
    default = official_policy()  # reward: distill needs no label term
    assert not default.needs_gt_term and default.sample_weights("y", terms(), ctx())[1] is not None


def test_official_reward_needs_the_surrogate_rule():
    with pytest.raises(ConfigError, match="update: surrogate"):
        RLTeacherWeighting({"update": "reinforce", "reward": "official"})
    with pytest.raises(ConfigError, match="'distill' or 'official'"):
        RLTeacherWeighting({"update": "surrogate", "reward": "oficial"})
