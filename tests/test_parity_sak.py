"""SAK parity: the MoR router and the distillation loss against numbers from innovator-zero/SAK's own code.

``tests/fixtures/parity/sak.json`` holds the outputs of SAK's ``MoR``/``GlobalRouter`` (eval, and training with a
given per-pixel noise) and of ``losses.py::DistillLoss("cos+l1")``; ``sak_generate.py`` next to it regenerates
them from a checkout and holds the seeded input recipes this test rebuilds (its official code is loaded only
when run as a script).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from polydistill.errors import ConfigError
from polydistill.students.sak import MoRRouter
from polydistill.tasks import build_task

HERE = Path(__file__).parent / "fixtures" / "parity"
FIXTURE = json.loads((HERE / "sak.json").read_text())
_spec = importlib.util.spec_from_file_location("sak_generate", HERE / "sak_generate.py")
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)


def as_map(tokens: torch.Tensor) -> torch.Tensor:
    """SAK's (B, H·W, C) row-major tokens as a (B, C, H, W) map."""
    r = FIXTURE["router"]
    return tokens.reshape(tokens.shape[0], r["height"], r["width"], -1).permute(0, 3, 1, 2)


def router(noise: str = "image") -> tuple[MoRRouter, torch.Tensor, list[torch.Tensor], dict]:
    """polydistill's router with SAK's seeded weights (Linear → 1×1 conv), the stem and the experts."""
    x = recipe.router_inputs()
    assert float(sum(v.double().sum() for v in x.values())) == pytest.approx(FIXTURE["router"]["inputs_sum"])
    r = MoRRouter(FIXTURE["router"]["channels"], FIXTURE["router"]["experts"], noise=noise)
    conv1, norm, _, conv2 = r.gate
    with torch.no_grad():
        conv1.weight.copy_(x["w1"][:, :, None, None]), conv1.bias.copy_(x["b1"])
        norm.weight.copy_(x["ln_w"]), norm.bias.copy_(x["ln_b"])
        conv2.weight.copy_(x["w2"][:, :, None, None]), conv2.bias.copy_(x["b2"])
    stem = as_map(x["stem"])
    return r, stem, [stem, *(as_map(p) for p in x["paths"])], x


def expected(key: str) -> torch.Tensor:
    r = FIXTURE["router"]
    return torch.tensor(FIXTURE[key]).reshape(r["batch"], r["channels"], r["height"], r["width"])


@pytest.mark.parametrize("noise", ["image", "pixel"])
def test_router_in_eval_is_sak_mor(noise):
    r, stem, experts, _ = router(noise)
    with torch.no_grad():
        fused = r.eval()(stem, experts)
    assert (fused - expected("fused_eval")).abs().max() < 1e-5


def test_pixel_noise_with_a_given_noise_is_sak_mor_in_training():
    """SAK's training forward (randn_like on the expanded logits) run on the same ε."""
    r, stem, experts, x = router("pixel")
    with torch.no_grad():
        fused = r.train()(stem, experts, eps=x["eps"])
    assert (fused - expected("fused_pixel_noise")).abs().max() < 1e-5


def test_noise_structure_image_vs_pixel():
    """Image noise: one mixture per image (the default, unchanged); pixel noise: the mixture varies in the map,
    around the same clean logits and noise scale."""
    torch.manual_seed(0)
    r, stem, experts, _ = router("image")
    with torch.no_grad():
        per_image = r.train().weights(stem)
        assert per_image.shape == (2, 3)
        r.noise = "pixel"
        per_pixel = r.weights(stem)
        assert per_pixel.shape == (2, 3, 2, 3)
        assert float(per_pixel.flatten(2).std(2).min()) > 1e-3  # varies within every image
        eps = torch.randn(2, 3)  # the same ε at every pixel reproduces the image-level mixture
        r.noise = "image"
        image = r.weights(stem, eps)
        r.noise = "pixel"
        pixel = r.weights(stem, eps[:, :, None, None].expand(-1, -1, 2, 3))
        assert torch.allclose(pixel, image[:, :, None, None].expand_as(pixel), atol=1e-6)
        r(stem, experts)
        assert r.last_weights.shape == (3,)


def test_router_noise_is_validated():
    with pytest.raises(ConfigError, match="did you mean 'pixel'"):
        MoRRouter(16, 3, noise="pixels")


def sak_loss_task(**options):
    loss = FIXTURE["loss"]
    options = {"cos_weight": loss["cos_weight"], "l1_weight": loss["l1_weight"], **options}
    task = build_task("sak_feat", type="features", channels=8, norm="none", **options)
    task.build_head(8, input_stride=4)
    return task


def test_map_cosine_loss_is_sak_distill_loss():
    """cosine: map, norm: none, 0.9/0.1: per image (and over the batch) as DistillLoss('cos+l1')."""
    y = recipe.loss_inputs()
    assert float(sum(v.double().sum() for v in y.values())) == pytest.approx(FIXTURE["loss"]["inputs_sum"])
    task = sak_loss_task(cosine="map")
    same = task.distill_loss(y["student"], y["teacher"], kind="features")
    assert (same - torch.tensor(FIXTURE["loss"]["same_grid"])).abs().max() < 1e-6
    assert float(same.mean()) == pytest.approx(FIXTURE["loss"]["same_grid_batch"], abs=1e-6)
    resized = task.distill_loss(y["small_student"], y["big_teacher"], kind="features")  # student upsampled
    assert (resized - torch.tensor(FIXTURE["loss"]["teacher_grid_larger"])).abs().max() < 1e-6


def test_token_cosine_is_not_sak_loss_on_uneven_token_norms():
    """The default per-token cosine is a different loss (documented); pinned so the difference stays known."""
    y = recipe.loss_inputs()
    token = sak_loss_task().distill_loss(y["student"], y["teacher"], kind="features")
    assert (token - torch.tensor(FIXTURE["loss"]["same_grid"])).abs().max() > 0.05


def test_map_cosine_with_token_weights_scales_by_their_mean():
    y = recipe.loss_inputs()
    task = sak_loss_task(cosine="map", l1_weight=0.0)
    plain = task.distill_loss(y["student"], y["teacher"], kind="features")
    weight = torch.full((3, 1, 4, 4), 2.0)
    assert torch.allclose(task.distill_loss(y["student"], y["teacher"], weight, kind="features"), 2 * plain)


def test_cosine_option_is_validated():
    with pytest.raises(ConfigError, match="did you mean 'map'"):
        build_task("f", type="features", channels=8, cosine="maps")
