"""Feature distillation: teacher-feature normalisation, the features task, projectors, grid maps under
augmentation, the SAK layout, and end-to-end runs through the DUNE path and SAK's two stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polydistill.checkpoint import load_student_model
from polydistill.config import load_config
from polydistill.data.transforms import RandomHorizontalFlip, RandomScaleCrop
from polydistill.distill.feature_norm import TeacherNorm, hadamard, padded_dim
from polydistill.engine.logging import read_steps
from polydistill.errors import ConfigError
from polydistill.pipeline.train import check_names, train_run
from polydistill.students import build_student
from polydistill.tasks import build_task
from polydistill.teachers import CheckpointTeacher
from tests.conftest import tiny_config

# ------------------------------------------------------------------------------------ normalisation


def correlated_features(n: int = 4000, c: int = 12, seed: int = 0) -> torch.Tensor:
    """(n, c, 1, 1) features with a non-zero mean, very unequal channel scales and correlations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g) * torch.logspace(-1, 1, c)
    x = torch.randn(n, c, generator=g) @ mix.T + torch.linspace(-3, 5, c)
    return x[:, :, None, None]


def test_hadamard_is_orthogonal_with_equal_magnitudes():
    h = hadamard(16)
    assert torch.allclose(h @ h.T, torch.eye(16, dtype=h.dtype), atol=1e-12)
    assert torch.allclose(h.abs(), torch.full_like(h, 0.25))
    assert padded_dim(384) == 384 and padded_dim(256) == 256 and padded_dim(6) == 8  # exact Hadamard, else 2^k
    with pytest.raises(ValueError):
        hadamard(6)


def test_standardize_gives_zero_mean_unit_variance_channels():
    x = correlated_features()
    norm = TeacherNorm(12, "standardize").train()
    for chunk in x.split(200):  # running statistics over batches
        norm(chunk)
    y = norm.eval()(x)[:, :, 0, 0]
    assert torch.allclose(y.mean(0), torch.zeros(12), atol=0.05)
    assert torch.allclose(y.std(0), torch.ones(12), atol=0.05)


def test_phi_s_gives_isotropic_unit_variance_in_the_padded_space():
    x = correlated_features(c=6)
    norm = TeacherNorm(6, "phi_s").train()
    for chunk in x.split(200):
        norm(chunk)
    y = norm.eval()(x)[:, :, 0, 0]
    assert y.shape[1] == 8  # no Hadamard matrix of order 6: padded to the next power of two
    cov = torch.cov(y.T)
    # PHI-S: every dimension gets the same variance (1), unlike per-channel standardisation
    assert torch.allclose(torch.diagonal(cov), torch.ones(8), atol=0.08)
    # an orthogonal transform up to one scale: it preserves the eigenvalue *ratios*
    ev_in = torch.linalg.eigvalsh(torch.cov(x[:, :, 0, 0].T))
    ev_out = torch.linalg.eigvalsh(cov)[-6:]
    assert torch.allclose(ev_out / ev_out.sum(), ev_in / ev_in.sum(), atol=0.01)


def test_norm_statistics_are_frozen_in_eval_mode():
    norm = TeacherNorm(12, "standardize").train()
    norm(correlated_features(100))
    before = norm.mean.clone()
    norm.eval()(correlated_features(100, seed=3))
    assert torch.equal(norm.mean, before) and int(norm.count) == 1


# --------------------------------------------------------------------------------------- the task


@pytest.mark.parametrize("projector", ["linear", "mlp", "transformer"])
def test_features_head_output_grid_and_loss(projector):
    task = build_task("dino", type="features", channels=12, projector=projector, grid_stride=8)
    assert task.name == "dino" and not task.has_labels and not task.dense_output
    head = task.build_head(16, input_stride=4)
    raw = head(torch.randn(2, 16, 8, 12))
    assert raw.shape == (2, 12, 4, 6)
    teacher = torch.randn(2, 12, 3, 5) * 7 + 2  # another grid (patch 14 vs 16): the student is resized to it
    loss = task.distill_loss(raw, teacher, kind="features")
    assert loss.shape == (2,) and bool((loss > 0).all())
    loss.sum().backward()
    assert all(p.grad is not None for p in head.projector.parameters())


def test_feature_loss_is_zero_only_for_the_normalised_target():
    task = build_task("f", type="features", channels=6, norm="standardize")
    task.build_head(8)
    task._target_norm.eval()  # fixed statistics
    task._target_norm.mean.fill_(1.0)
    task._target_norm.var.fill_(4.0)
    teacher = torch.randn(3, 6, 4, 4)
    target = (teacher - 1.0) / 2.0
    assert torch.allclose(task.distill_loss(target, teacher, kind="features"), torch.zeros(3), atol=1e-6)
    assert bool((task.distill_loss(target + 0.3, teacher, kind="features") > 0).all())
    # cosine part: a scaled copy has cosine 1, only smooth-L1 remains
    scaled = task.distill_loss(2 * target, teacher, kind="features")
    expected = 0.5 * F.smooth_l1_loss(2 * target, target, reduction="none").mean((1, 2, 3))
    assert torch.allclose(scaled, expected, atol=1e-6)


def test_features_task_options_are_checked():
    with pytest.raises(ConfigError, match="did you mean 'transformer'"):
        build_task("f", type="features", channels=4, projector="transfomer")
    with pytest.raises(ConfigError, match="needs its teacher's channel count"):
        build_task("f", type="features").build_head(8)
    with pytest.raises(ConfigError, match="multiple of the student's neck stride"):
        build_task("f", type="features", channels=4, grid_stride=6).build_head(8, input_stride=4)


# -------------------------------------------------------------------------------- grid maps in data


def test_grid_maps_follow_flip_and_zoom_like_full_resolution_maps():
    """A coarse (token-grid) teacher map transformed in normalised coordinates matches pooling the
    transformed full-resolution map: cached features stay aligned with the augmented image."""
    h, w, stride = 48, 64, 8
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    full = torch.stack([torch.sin(3 * xx + yy), torch.cos(2 * yy) * xx])  # smooth map
    for seed in range(4):
        sample = {"image": torch.rand(3, h, w), "targets": {},
                  "teacher": {"t": {"full": full.clone(), "grid": F.avg_pool2d(full[None], stride)[0]}}}
        rng = np.random.default_rng(seed)
        out = RandomScaleCrop((1.0, 1.5))(RandomHorizontalFlip(0.5)(sample, rng), rng)
        grid, ref = out["teacher"]["t"]["grid"], F.avg_pool2d(out["teacher"]["t"]["full"][None], stride)[0]
        assert grid.shape == ref.shape == (2, h // stride, w // stride)
        assert (grid - ref).abs().mean() < 0.03


# ---------------------------------------------------------------------------------------- students


def spec(layout: str = "plain") -> dict:
    return {"tasks": {"depth": {}, "semseg": {"num_classes": 3}, "a": {"type": "features", "channels": 12},
                      "b": {"type": "features", "channels": 6, "norm": "phi_s", "grid_stride": 8}},
            "backbone": "test_efficientnet", "neck_channels": 16, "layout": layout}


@pytest.mark.parametrize("layout", ["plain", "sak"])
def test_student_outputs_and_inference_model(layout):
    model, _ = build_student(spec(layout))
    out = model(torch.rand(2, 3, 32, 48))
    assert out["depth"].shape == (2, 1, 32, 48) and out["semseg"].shape == (2, 3, 32, 48)
    assert out["a"].shape == (2, 12, 2, 3) and out["b"].shape == (2, 8, 4, 6)  # phi_s pads 6 -> 8
    deployed = model.inference_model().eval()
    assert set(deployed(torch.rand(1, 3, 32, 48))) == {"depth", "semseg"}
    assert not any(k.startswith(("heads.a", "heads.b")) for k in deployed.state_dict())
    assert ("paths.a.adapters.0.gamma" in deployed.state_dict()) == (layout == "sak")


def test_sak_routers_mix_stem_and_paths_and_are_deterministic_in_eval():
    model, _ = build_student(spec("sak"))
    model.eval()
    x = torch.rand(2, 3, 32, 48)
    a, b = model(x), model(x)
    assert torch.equal(a["depth"], b["depth"])  # no gating noise at inference
    weights = model.routers["semseg"][0].last_weights
    assert weights.shape == (3,) and torch.isclose(weights.sum(), torch.tensor(1.0))
    model.train()
    model(x)
    noisy = model.routers["semseg"][0].last_weights
    assert not torch.equal(noisy, weights)  # noisy top-level gating in training


def test_sak_needs_a_features_task():
    with pytest.raises(ConfigError, match="at least one features task"):
        build_student({"tasks": {"depth": {}}, "backbone": "test_efficientnet", "neck_channels": 8, "layout": "sak"})


# ------------------------------------------------------------------------------------- end to end


def feature_teachers(teacher_runs) -> list[dict]:
    return [
        {"name": "seg_teacher", "path": str(teacher_runs["semseg"]), "tasks": ["semseg", "seg_feat"],
         "options": {"features": {"seg_feat": "neck"}, "grid_stride": 8}},
        {"name": "depth_teacher", "path": str(teacher_runs["depth"]), "tasks": ["depth", "depth_feat"],
         "options": {"features": {"depth_feat": "neck"}, "grid_stride": 8}},
    ]


def test_checkpoint_teacher_exposes_a_module_as_features(teacher_runs):
    teacher = CheckpointTeacher("t", teacher_runs["semseg"], tasks=["semseg", "f"],
                                options={"features": {"f": "neck"}, "grid_stride": 8})
    out = teacher.predict(torch.rand(2, 3, 32, 48))
    assert out["semseg"].shape == (2, 3, 32, 48) and out["f"].shape == (2, 16, 4, 6)
    assert teacher.output_kind("f") == "features" and teacher.feature_channels == {"f": 16}
    plain = CheckpointTeacher("t", teacher_runs["semseg"])
    assert plain.fingerprint() != teacher.fingerprint()
    with pytest.raises(ConfigError, match="neck"):
        CheckpointTeacher("t", teacher_runs["semseg"], tasks=["f"], options={"features": {"f": "nekc"}})


@pytest.mark.parametrize("projector,norm,precompute", [("mlp", "standardize", True),
                                                        ("transformer", "phi_s", False)])
def test_dune_path_trains_and_reduces_the_feature_loss(tiny_data, teacher_runs, tmp_path, projector, norm,
                                                       precompute):
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=24, val_every=12, log_every=1, lr=5e-3)
    cfg["tasks"].update({"seg_feat": {"type": "features", "projector": projector, "norm": norm, "grid_stride": 8},
                         "depth_feat": {"type": "features", "grid_stride": 8}})
    cfg["teachers"] = feature_teachers(teacher_runs)
    cfg["distill"] = {"precompute_teachers": precompute}
    result = train_run(load_config(base=cfg), tmp_path / "run")
    rows = read_steps(tmp_path / "run" / "steps.csv")
    first = np.mean([r["loss/seg_feat/seg_teacher"] for r in rows[:3]])
    last = np.mean([r["loss/seg_feat/seg_teacher"] for r in rows[-3:]])
    assert last < first
    assert set(result.fit.best_metrics) == {"depth", "semseg"}  # features tasks have no metrics
    model, tasks, _ = load_student_model(tmp_path / "run")
    assert set(tasks) == {"depth", "semseg"} and set(model(torch.rand(1, 3, 32, 48))) == {"depth", "semseg"}


def test_sak_two_stages(tiny_data, teacher_runs, tmp_path):
    stage1 = tiny_config(tiny_data["train"], None, max_steps=6)
    stage1["tasks"] = {"seg_feat": {"type": "features", "grid_stride": 8},
                       "depth_feat": {"type": "features", "grid_stride": 8}}
    stage1["student"]["layout"] = "sak"
    stage1["teachers"] = [dict(t, tasks=[t["tasks"][1]]) for t in feature_teachers(teacher_runs)]
    train_run(load_config(base=stage1), tmp_path / "s1")

    stage2 = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=6, init_from=str(tmp_path / "s1"))
    stage2["tasks"].update(stage1["tasks"])
    stage2["student"]["layout"] = "sak"
    stage2["teachers"] = feature_teachers(teacher_runs)
    result = train_run(load_config(base=stage2), tmp_path / "s2")
    init = json.loads((tmp_path / "s2" / "init_from.json").read_text())
    assert any(k.startswith("paths.seg_feat") for k in init["loaded"])
    assert any(k.startswith("routers.semseg") for k in init["fresh"]) and not init["ignored"]
    assert set(result.fit.best_metrics) == {"depth", "semseg"}


def test_feature_config_errors(tiny_data, teacher_runs, tmp_path):
    cfg = tiny_config(tiny_data["train"], None)
    cfg["tasks"]["feat"] = {"type": "features"}
    with pytest.raises(ConfigError, match="features task 'feat' has no teacher"):
        train_run(load_config(base=cfg), tmp_path / "a")
    bad = tiny_config(tiny_data["train"], None)
    bad["tasks"] = {"my_depth": {"type": "depth"}}
    with pytest.raises(ConfigError, match="name it 'depth'"):
        check_names(load_config(base=bad))
    sak = tiny_config(tiny_data["train"], None)
    sak["student"]["layout"] = "sak"
    sak["distill"] = {"task_weighting": "gradnorm"}
    with pytest.raises(ConfigError, match="gradnorm"):
        check_names(load_config(base=sak))
    typo = tiny_config(tiny_data["train"], None)
    typo["tasks"]["feat"] = {"type": "featurse"}
    with pytest.raises(ConfigError, match="did you mean 'features'"):
        check_names(load_config(base=typo))


@pytest.mark.parametrize("teacher_weighting,task_weighting", [("rl", "dwa"), ("confidence", "uncertainty"),
                                                              ("dropout", "gradnorm"), ("feedback", "equal")])
def test_every_strategy_accepts_feature_teachers(tiny_data, teacher_runs, tmp_path, teacher_weighting,
                                                 task_weighting):
    """Feature terms join the loss table like any teacher term; label-based statistics skip them."""
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=4, val_every=2)
    cfg["tasks"]["seg_feat"] = {"type": "features", "grid_stride": 8}
    cfg["teachers"] = feature_teachers(teacher_runs)[:1]
    cfg["distill"] = {"teacher_weighting": teacher_weighting, "task_weighting": task_weighting,
                      "trajectory": {"always": True}}
    train_run(load_config(base=cfg), tmp_path / "run")
    row = read_steps(tmp_path / "run" / "steps.csv")[-1]
    assert np.isfinite(row["loss/seg_feat/seg_teacher"]) and np.isfinite(row["loss"])
    assert "loss/seg_feat/trajectory" not in row  # the trajectory guards scored tasks only


@pytest.mark.parametrize("noise", ["image", "pixel"])
def test_student_config_router_noise_reaches_every_router(noise):
    """`student.router_noise` (sak_stage2.yaml sets SAK's per-pixel noise) is what every router draws."""
    model, _ = build_student({**spec("sak"), "router_noise": noise})
    routers = [r for levels in model.routers.values() for r in levels]
    assert routers and {r.noise for r in routers} == {noise}
