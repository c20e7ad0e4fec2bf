"""Numerical parity with DUNE (naver/dune): TeacherNorm in ``standardize_batch`` mode, the per-token feature
loss, and teacher dropping with ``normalise: batch``.

The expected numbers in ``tests/fixtures/parity/dune.json`` were produced by running DUNE's own code on the
inputs built below; ``tests/fixtures/parity/dune_generate.py`` regenerates them from a DUNE checkout (its
header names the commit and the functions run). Nothing of DUNE's code is in this file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from polydistill.config import DistillConfig
from polydistill.distill.feature_norm import TeacherNorm, dune_momentum, set_training_progress
from polydistill.distill.objective import LossTerm
from polydistill.distill.weighting import StepContext, build_weighting
from polydistill.distill.weighting.dropout import TeacherDropout, dropout_weights
from polydistill.errors import ConfigError
from polydistill.tasks import build_task
from polydistill.tasks.features import feature_loss

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "dune.json"

# ------------------------------------------------------------------------------------------ inputs
# (shared with dune_generate.py, which feeds the same tensors to DUNE's code)

NORM_ITERS, NORM_RECORD = 40, (0, 1, 20, 39)
LOSS_WEIGHTS = ((0.5, 0.5), (0.2, 0.8))


def norm_batches() -> tuple[list[torch.Tensor], torch.Tensor]:
    """40 drifting ``(2, 4, 2, 4)`` training batches (16 tokens, channel 3 below DUNE's eps) and one held-out
    batch, in polydistill's ``(B, C, h, w)`` layout."""
    g = torch.Generator().manual_seed(11)
    scale = torch.tensor([0.5, 2.0, 5.0, 5e-4]).view(1, 4, 1, 1)
    base = torch.tensor([1.0, -3.0, 10.0, 0.2]).view(1, 4, 1, 1)
    drift = torch.tensor([0.05, -0.1, 0.2, 0.0]).view(1, 4, 1, 1)
    batches = [torch.randn(2, 4, 2, 4, generator=g) * scale + base + it * drift for it in range(NORM_ITERS)]
    held_out = torch.randn(2, 4, 2, 4, generator=g) * scale + base + NORM_ITERS * drift
    return batches, held_out


def loss_maps() -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher ``(3, 5, 2, 3)`` maps whose differences fall on both sides of SmoothL1's β = 1."""
    g = torch.Generator().manual_seed(12)
    teacher = torch.randn(3, 5, 2, 3, generator=g) * 1.5
    student = teacher + torch.randn(3, 5, 2, 3, generator=g) * 0.9
    return student, teacher


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` → DUNE's patch-token layout ``(B, h·w, C)``."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


# ------------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads(FIXTURE.read_text())


def test_fixture_names_its_source(ref):
    assert ref["_source"]["repository"] == "naver/dune" and len(ref["_source"]["commit"]) == 40


def test_dune_momentum_is_its_cosine_schedule(ref):
    got = [dune_momentum(it / NORM_ITERS) for it in range(NORM_ITERS)]
    assert got == pytest.approx(ref["teacher_norm"]["momentum"], abs=1e-12)


def test_standardize_batch_matches_dune_teacher_norm(ref):
    """Training: each batch standardised with its own mean and unbiased std; tracked mean/std with DUNE's
    cosine momentum; eval: the tracked statistics."""
    expected = ref["teacher_norm"]
    batches, held_out = norm_batches()
    norm = TeacherNorm(4, "standardize_batch").train()
    worst = 0.0
    for it, x in enumerate(batches):
        set_training_progress(norm, it, NORM_ITERS)
        y = norm(x)
        if it in NORM_RECORD:
            rec = expected["iterations"][str(it)]
            want = from_tokens(torch.tensor(rec["output"]), 2, 4)
            worst = max(worst, float((y - want).abs().max()))
            assert torch.allclose(y, want, atol=2e-5, rtol=1e-5), it
            assert torch.allclose(norm.mean, torch.tensor(rec["mean"]), atol=1e-5, rtol=1e-6)
            assert torch.allclose(norm.std, torch.tensor(rec["std"]), atol=1e-6, rtol=1e-5)
    y = norm.eval()(held_out)
    assert torch.allclose(y, from_tokens(torch.tensor(expected["eval_output"]), 2, 4), atol=2e-5, rtol=1e-5)
    assert worst < 2e-5


def test_standardize_batch_without_progress_falls_back_to_the_running_momentum():
    batches, _ = norm_batches()
    norm = TeacherNorm(4, "standardize_batch").train()
    norm(batches[0])
    norm(batches[1])  # momentum max(1/2, 0.01): the mean of the two batches' statistics
    tokens = [b.transpose(0, 1).reshape(4, -1) for b in batches[:2]]
    assert torch.allclose(norm.mean, (tokens[0].mean(1) + tokens[1].mean(1)) / 2, atol=1e-6)
    assert torch.allclose(norm.std, (tokens[0].std(1) + tokens[1].std(1)) / 2, atol=1e-6)
    state = norm.state_dict()
    assert set(state) == {"count", "mean", "std"} and int(state["count"]) == 2


def test_feature_loss_matches_dune_loss_per_teacher(ref):
    """DUNE's per-image patch-token loss ``λ_cos·(1 − cos) + λ_sl1·SmoothL1(β = 1)`` averaged over tokens."""
    student, teacher = loss_maps()
    for (cos_w, l1_w), want in zip(LOSS_WEIGHTS, ref["loss"]["per_image"]):
        got = feature_loss(student, teacher, cos_w, l1_w)
        assert torch.allclose(got, torch.tensor(want), atol=1e-6, rtol=1e-6)


def test_dropout_weights_image_mode_is_unchanged():
    keep = torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    w = dropout_weights(keep)
    assert torch.allclose(w, torch.tensor([[1.5, 0, 1.5], [1, 1, 1], [0, 3, 0]]))


def dropping_weighting(normalise: str):
    cfg = DistillConfig(teacher_weighting={"name": "dropout", "p": 0.5, "normalise": normalise})
    return build_weighting(cfg, {"f": build_task("depth")}, {"f": ["t0", "t1", "t2"]})


def test_batch_dropping_matches_dune_aggregation(ref, monkeypatch):
    """DUNE's keep pattern (its own ``random`` draws) fed through polydistill's strategy and the engine's
    combination: the task's teacher term is K × DUNE's loss, and so is its gradient on each per-image loss."""
    d = ref["dropping"]
    losses = torch.tensor(d["losses"], requires_grad=True)  # (B, K)
    keep = torch.tensor(d["keep"], dtype=torch.bool)
    k = losses.shape[1]
    # draws above p keep, below drop: the strategy then keeps exactly DUNE's pattern
    monkeypatch.setattr(torch, "rand", lambda *size, generator=None: torch.where(keep, 0.9, 0.1))
    mask = torch.ones(losses.shape[0], dtype=torch.bool)
    table = {("f", f"t{i}"): LossTerm(losses[:, i], mask) for i in range(k)}
    for normalise in ("batch", "image"):
        total = dropping_weighting(normalise).task_losses(table, StepContext(0, 10)).losses["f"]
        (grad,) = torch.autograd.grad(total, losses)
        total = total.detach()
        if normalise == "batch":
            assert float(total) == pytest.approx(k * d["loss"], rel=1e-6)
            assert torch.allclose(grad, k * torch.tensor(d["grad"]), atol=1e-7)
        else:  # per image: every image weighs 1/B, unlike DUNE
            per_image = (keep * losses.detach()).sum(1) / keep.sum(1)
            assert float(total) == pytest.approx(k * float(per_image.mean()), rel=1e-6)
            assert float(total) != pytest.approx(k * d["loss"], rel=1e-3)


def test_batch_dropping_ignores_samples_a_teacher_does_not_cover():
    """With masks the sum is still K·Σ c·ℓ / Σ c over the covered (sample, teacher) pairs."""
    losses = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.5, 9.0], [0.2, 0.1, 0.3], [4.0, 4.5, 1.0]])
    masks = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    drop = TeacherDropout({"p": 0.0, "normalise": "batch"})  # p = 0: every covered teacher kept
    drop.setup({"f": build_task("depth")}, {"f": ["t0", "t1", "t2"]})
    terms = {f"t{i}": LossTerm(losses[:, i], masks[:, i]) for i in range(3)}
    weights, _ = drop.sample_weights("f", terms, StepContext(0, 10))
    total = sum(((weights[f"t{i}"] * losses[:, i])[masks[:, i]].sum() / masks[:, i].sum()) for i in range(3))
    assert float(total) == pytest.approx(3 * float(losses[masks].sum()) / int(masks.sum()), rel=1e-6)
    assert all(float(weights[f"t{i}"][~masks[:, i]].abs().sum()) == 0 for i in range(3))


def test_dropout_normalise_option_is_validated():
    with pytest.raises(ConfigError, match="normalise"):
        TeacherDropout({"normalise": "images"})
    assert math.isclose(TeacherDropout().opts.p, 0.5) and TeacherDropout().opts.normalise == "image"
