"""Weighting strategies pinned on constructed inputs, the knowledge trajectory, and their engine integration."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from polydistill.config import DistillConfig, TrajectoryConfig, load_config
from polydistill.distill.objective import GT, TRAJECTORY, LossTerm, Objective
from polydistill.distill.trajectory import KnowledgeTrajectory
from polydistill.distill.weighting import TASK_WEIGHTINGS, TEACHER_WEIGHTINGS, StepContext, build_weighting
from polydistill.distill.weighting.confidence import ConfidenceWeighting
from polydistill.distill.weighting.dropout import TeacherDropout
from polydistill.distill.weighting.dwa import DWAWeighting
from polydistill.distill.weighting.feedback import FeedbackWeighting
from polydistill.distill.weighting.gradnorm import GradNormWeighting
from polydistill.distill.weighting.rl import RLTeacherWeighting
from polydistill.distill.weighting.uncertainty import UncertaintyWeighting
from polydistill.engine.logging import read_steps
from polydistill.errors import ConfigError
from polydistill.pipeline.train import train_run
from polydistill.students import build_student
from polydistill.tasks import build_task
from tests.conftest import tiny_config


def ctx(step: int = 0, steps_per_epoch: int = 100, seed: int = 0) -> StepContext:
    return StepContext(step=step, steps_per_epoch=steps_per_epoch, seed=seed)


def terms_from(losses: torch.Tensor) -> dict[str, LossTerm]:
    """(B, K) losses -> K teacher terms named t0..t{K-1}."""
    mask = torch.ones(losses.shape[0], dtype=torch.bool)
    return {f"t{i}": LossTerm(losses[:, i], mask) for i in range(losses.shape[1])}


# ------------------------------------------------------------------------------------------ task level


def test_dwa_weights_follow_the_formula():
    dwa = DWAWeighting({"period": 2})
    dwa.setup(["a", "b"])
    seen = []
    for step, (la, lb) in enumerate([(2.0, 1.0), (2.0, 1.0), (1.0, 1.0), (1.0, 1.0)]):
        lam, aux = dwa.weights({"a": torch.tensor(la), "b": torch.tensor(lb)}, ctx(step))
        seen.append((float(lam["a"]), float(lam["b"])))
        dwa.after_step(ctx(step + 1))
        assert aux is None
    assert seen == [(1.0, 1.0)] * 4  # equal until two periods are complete
    lam, _ = dwa.weights({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}, ctx(4))
    ratios = torch.tensor([1.0 / 2.0, 1.0 / 1.0])  # a's loss halved, b's stayed: b lags
    expected = 2 * torch.softmax(ratios / 2.0, dim=0)
    assert float(lam["a"]) == pytest.approx(float(expected[0]), rel=1e-6)
    assert float(lam["b"]) == pytest.approx(float(expected[1]), rel=1e-6)
    assert float(lam["b"]) > float(lam["a"])


def test_uncertainty_weights_and_gradient_follow_kendall():
    unc = UncertaintyWeighting()
    unc.setup(["a", "b"])
    with torch.no_grad():
        unc.log_vars.copy_(torch.tensor([0.5, -1.0]))
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    lam, aux = unc.weights(losses, ctx())
    assert float(lam["a"].detach()) == pytest.approx(math.exp(-0.5))
    assert float(lam["b"].detach()) == pytest.approx(math.exp(1.0))
    total = lam["a"] * losses["a"] + lam["b"] * losses["b"] + aux
    total.backward()
    grad = unc.log_vars.grad
    assert float(grad[0]) == pytest.approx(-math.exp(-0.5) * 2.0 + 1.0, rel=1e-6)  # d/ds (e^-s L + s)
    assert float(grad[1]) == pytest.approx(-math.exp(1.0) * 3.0 + 1.0, rel=1e-6)


def test_gradnorm_moves_weights_towards_equal_gradient_norms():
    gn = GradNormWeighting({"alpha": 1.5})
    gn.setup(["a", "b"])
    opt = torch.optim.Adam(gn.parameters(), lr=0.05)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}  # same training rate: target is equal G
    norms = {"a": torch.tensor(1.0), "b": torch.tensor(10.0)}  # b's gradient is 10x larger
    for step in range(60):
        lam, aux = gn.weights(losses, ctx(step), norms)
        opt.zero_grad()
        aux.backward()
        opt.step()
        gn.after_step(ctx(step + 1))
    w = gn.task_w.detach()
    assert float(w.sum()) == pytest.approx(2.0, rel=1e-5)  # renormalised to the number of tasks
    assert w[0] > 1.5 and w[1] < 0.5
    assert abs(math.log(float(w[0] * 1.0) / float(w[1] * 10.0))) < 0.5 * math.log(10.0)
    # losses keep λ detached: only the auxiliary loss trains the weights
    assert not lam["a"].requires_grad


def test_gradnorm_favours_the_task_that_trains_slower():
    gn = GradNormWeighting({"alpha": 1.5})
    gn.setup(["a", "b"])
    ones = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
    gn.weights(ones, ctx(0), ones)
    opt = torch.optim.Adam(gn.parameters(), lr=0.05)
    for step in range(1, 30):  # a's loss fell to 0.2, b's only to 0.8; equal gradient norms
        _, aux = gn.weights({"a": torch.tensor(0.2), "b": torch.tensor(0.8)}, ctx(step),
                            {"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
        opt.zero_grad()
        aux.backward()
        opt.step()
        gn.after_step(ctx(step + 1))
    assert gn.task_w[1] > gn.task_w[0]


# --------------------------------------------------------------------------------------- teacher level


def feedback_strategy(units: dict[str, list[str]], **opts) -> FeedbackWeighting:
    tasks = {"depth": build_task("depth"), "semseg": build_task("semseg", num_classes=3)}
    fb = FeedbackWeighting(opts)
    fb.setup({t: tasks[t] for t in units}, units)
    return fb


def test_feedback_gives_more_weight_to_the_lagging_task():
    fb = feedback_strategy({"depth": ["td"], "semseg": ["ts"]})
    fb.set_teacher_metrics({"td": {"depth": {"delta1": 0.9}}, "ts": {"semseg": {"miou": 0.8}}})
    record = fb.feedback({"depth": {"delta1": 0.85}, "semseg": {"miou": 0.4}}, step=100)
    w = dict(zip(fb.units, fb.omega.tolist()))
    assert w[("semseg", "ts")] > 1.0 > w[("depth", "td")]  # semseg is at 50 % of its teacher, depth at 94 %
    assert sum(w.values()) == pytest.approx(2.0)
    assert record["ratios"]["semseg/ts"] == pytest.approx(0.5)
    assert record["weights"]["semseg/ts"] == pytest.approx(w[("semseg", "ts")], abs=1e-4)
    # the per-sample weights the student sees are these weights
    terms = {"ts": LossTerm(torch.ones(3), torch.ones(3, dtype=torch.bool))}
    weights, aux = fb.sample_weights("semseg", terms, ctx())
    assert aux is None and torch.allclose(weights["ts"], torch.full((3,), w[("semseg", "ts")]))


def test_feedback_down_weights_a_teacher_the_student_already_beats():
    fb = feedback_strategy({"depth": ["strong", "weak"]})
    fb.set_teacher_metrics({"strong": {"depth": {"delta1": 0.9}}, "weak": {"depth": {"delta1": 0.5}}})
    for step in (100, 200, 300):
        fb.feedback({"depth": {"delta1": 0.8}}, step=step)
    strong, weak = fb.omega.tolist()
    assert strong > 1.2 and weak < 0.8 and len(fb.history) == 3


def test_feedback_leading_is_the_literal_formula_direction():
    fb = feedback_strategy({"depth": ["td"], "semseg": ["ts"]}, favour="leading")
    fb.set_teacher_metrics({"td": {"depth": {"delta1": 0.9}}, "ts": {"semseg": {"miou": 0.8}}})
    fb.feedback({"depth": {"delta1": 0.85}, "semseg": {"miou": 0.4}}, step=1)
    assert fb.omega[0] > fb.omega[1]


def test_feedback_refuses_a_lower_is_better_score():
    fb = feedback_strategy({"depth": ["td"]}, scores={"depth": "abs_rel"})
    with pytest.raises(ConfigError, match="higher-is-better"):
        fb.set_teacher_metrics({"td": {"depth": {"abs_rel": 0.1}}})


def test_dropout_keeps_the_highest_loss_teacher():
    torch.manual_seed(0)
    losses = torch.rand(256, 3)
    drop = TeacherDropout({"p": 0.5})
    drop.setup({"depth": build_task("depth")}, {"depth": ["t0", "t1", "t2"]})
    weights, aux = drop.sample_weights("depth", terms_from(losses), ctx(7))
    w = torch.stack([weights[f"t{i}"] for i in range(3)], 1)
    rows = torch.arange(256)
    assert bool((w[rows, losses.argmax(1)] > 0).all())  # the furthest teacher always teaches
    assert torch.allclose(w.sum(1), torch.full((256,), 3.0))  # normalised by the kept count, times K
    kept = (w > 0).sum(1).float()
    assert 1.5 < float(kept.mean()) < 2.5  # each of the two others kept with probability 0.5
    again, _ = drop.sample_weights("depth", terms_from(losses), ctx(7))
    assert torch.equal(again["t0"], weights["t0"])  # same step, same draw (exact resume)
    other, _ = drop.sample_weights("depth", terms_from(losses), ctx(8))
    assert not torch.equal(other["t0"], weights["t0"])
    drop.opts.p = 1.0
    only, _ = drop.sample_weights("depth", terms_from(losses), ctx(7))
    assert torch.equal(torch.stack([only[f"t{i}"] for i in range(3)], 1).argmax(1), losses.argmax(1))


def test_confidence_prefers_the_sure_segmentation_teacher_per_pixel():
    task = build_task("semseg", num_classes=3)
    sure = torch.zeros(2, 3, 4, 4)
    sure[:, 1] = 10.0
    unsure = torch.zeros(2, 3, 4, 4)
    sure[:, :, 0, 0] = 0.0  # one pixel where the "sure" teacher is uniform too
    conf = ConfidenceWeighting()
    w = conf.pixel_weights("semseg", task, {"sure": sure, "unsure": unsure})
    assert w["sure"].shape == (2, 1, 4, 4)
    assert torch.allclose(w["sure"] + w["unsure"], torch.full((2, 1, 4, 4), 2.0))
    assert float(w["sure"][0, 0, 1, 1]) > 1.9 and float(w["unsure"][0, 0, 1, 1]) < 0.1
    assert float(w["sure"][0, 0, 0, 0]) == pytest.approx(1.0)  # both uniform there: equal weights
    assert conf.pixel_weights("semseg", task, {"sure": sure}) is None  # one teacher: no reweighting


def test_confidence_uses_agreement_for_depth():
    task = build_task("depth")
    two, outlier = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 4.0)
    w = ConfidenceWeighting().pixel_weights("depth", task, {"a": two, "b": two * 1.02, "c": outlier})
    assert float(w["c"].mean()) < 0.05 and float(w["a"].mean()) > 1.3 and float(w["b"].mean()) > 1.3
    pair = ConfidenceWeighting().pixel_weights("depth", task, {"a": two, "c": outlier})
    assert torch.allclose(pair["a"], pair["c"])  # two teachers that disagree: no way to tell, equal weights


def test_rl_learns_to_weight_the_useful_teacher():
    """Toy: a linear student, a teacher that knows the answer and one that outputs noise."""
    torch.manual_seed(0)
    rl = RLTeacherWeighting({"update": "reinforce", "warmup_epochs": 0, "lr": 1e-2})
    rl.setup({"y": build_task("depth")}, {"y": ["useful", "noise"]})
    student = torch.nn.Linear(8, 1)
    truth = torch.nn.Linear(8, 1)
    opt = torch.optim.Adam([{"params": student.parameters(), "lr": 1e-2}, *rl.param_groups(1e-2)])
    mask = torch.ones(32, dtype=torch.bool)
    history = []
    for step in range(300):
        x = torch.randn(32, 8)
        with torch.no_grad():
            useful = truth(x) + 0.05 * torch.randn(32, 1)
            noise = 3.0 * torch.randn(32, 1)
        pred = student(x)
        terms = {"useful": LossTerm(((pred - useful) ** 2).mean(1), mask),
                 "noise": LossTerm(((pred - noise) ** 2).mean(1), mask)}
        weights, aux = rl.sample_weights("y", terms, ctx(step))
        loss = sum((weights[k] * t.per_sample).mean() for k, t in terms.items()) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(weights["useful"].mean()) / 2)  # share of the total weight
    assert history[0] == pytest.approx(0.5, abs=1e-6)  # starts from equal weights
    assert sum(history[-20:]) / 20 > 0.8


def test_rl_uses_equal_weights_during_warmup_but_still_learns():
    rl = RLTeacherWeighting({"warmup_epochs": 1})
    rl.setup({"y": build_task("depth")}, {"y": ["t0", "t1"]})
    weights, aux = rl.sample_weights("y", terms_from(torch.tensor([[0.1, 2.0]] * 4)), ctx(step=5, steps_per_epoch=10))
    assert torch.equal(weights["t0"], torch.ones(4)) and aux is not None and aux.requires_grad


def test_rl_surrogate_pushes_towards_uniform_weights():
    """The official code's rule (reward-weighted log-likelihood, all-ones targets) prefers the simplex centre."""
    rl = RLTeacherWeighting({"update": "surrogate", "heuristics": False, "warmup_epochs": 0, "lr": 0.1})
    rl.setup({"y": build_task("depth")}, {"y": ["t0", "t1"]})
    with torch.no_grad():
        rl.policies["y"].net[2].bias.copy_(torch.tensor([2.0, 0.0]))
    opt = torch.optim.SGD(rl.parameters(), lr=0.1)
    losses = torch.rand(64, 2)
    first = None
    for step in range(100):
        weights, aux = rl.sample_weights("y", terms_from(losses), ctx(step))
        first = first if first is not None else float(weights["t0"].mean())
        opt.zero_grad()
        aux.backward()
        opt.step()
    assert first > 1.7 and float(weights["t0"].mean()) < first - 0.3


# ------------------------------------------------------------------------------------------ trajectory


def small_student():
    spec = {"tasks": {"depth": {}, "semseg": {"num_classes": 3}}, "backbone": "test_efficientnet",
            "neck_channels": 16}
    return build_student(spec)


def trajectory_loss(model, tasks, trajectory, images):
    memory = trajectory.outputs(images)
    raw = model(images)
    objective = Objective(tasks, {}, trajectory_tasks=list(tasks))
    batch = {"valid": {t: torch.zeros(images.shape[0], dtype=torch.bool) for t in tasks}, "targets": {}}
    table = objective(raw, batch, {}, memory_outputs=memory)
    return sum(float(table[(t, TRAJECTORY)].value.detach()) for t in tasks)


@pytest.mark.parametrize("memory", ["ema", "snapshots"])
def test_trajectory_loss_is_zero_for_an_unchanged_student_and_grows_with_drift(memory):
    torch.manual_seed(0)
    model, tasks = small_student()
    model.train()
    cfg = TrajectoryConfig(memory=memory, always=True, snapshot_every=1)
    trajectory = KnowledgeTrajectory(cfg, model, tasks)
    images = torch.rand(2, 3, 32, 48)
    assert trajectory_loss(model, tasks, trajectory, images) == pytest.approx(0.0, abs=1e-6)
    losses = []
    for scale in (0.01, 0.05, 0.2):
        drifted = KnowledgeTrajectory(cfg, model, tasks)
        with torch.no_grad():
            moved, _ = small_student()
            moved.load_state_dict(model.state_dict())
            for p in moved.heads.parameters():
                p.add_(scale * torch.randn_like(p))
        moved.train()
        losses.append(trajectory_loss(moved, tasks, drifted, images))
    assert 0 < losses[0] < losses[1] < losses[2]


def test_trajectory_applies_only_to_tasks_whose_score_dropped():
    model, tasks = small_student()
    trajectory = KnowledgeTrajectory(TrajectoryConfig(tolerance=0.05), model, tasks)
    assert trajectory.outputs(torch.rand(1, 3, 32, 48)) == {}  # nothing dropped yet: no memory forward
    assert trajectory.feedback({"depth": {"abs_rel": 0.20}, "semseg": {"miou": 0.50}}) == []
    assert trajectory.feedback({"depth": {"abs_rel": 0.30}, "semseg": {"miou": 0.49}}) == ["depth"]  # miou within 5 %
    assert set(trajectory.outputs(torch.rand(1, 3, 32, 48))) == {"depth"}
    assert trajectory.feedback({"depth": {"abs_rel": 0.19}, "semseg": {"miou": 0.40}}) == ["semseg"]


def test_ema_memory_follows_the_student():
    model, tasks = small_student()
    trajectory = KnowledgeTrajectory(TrajectoryConfig(ema_decay=0.5), model, tasks)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = next(trajectory.memory[0][1].parameters()).clone()
    trajectory.update(model, step=1)
    after = next(trajectory.memory[0][1].parameters())
    torch.testing.assert_close(after, before + 0.5)


# -------------------------------------------------------------------------------- composition, engine


def table_for(model, tasks, images, teachers: dict[str, dict[str, torch.Tensor]], labelled: bool = True):
    raw = model(images)
    b = images.shape[0]
    batch = {"valid": {t: torch.full((b,), labelled) for t in tasks},
             "targets": {"depth": torch.full((b, 1, 32, 48), 3.0), "semseg": torch.zeros(b, 32, 48, dtype=torch.long)}}
    per_task = {t: [k for k, out in teachers.items() if t in out] for t in tasks}
    return Objective(tasks, per_task), raw, batch, per_task


@pytest.mark.parametrize("teacher_level", TEACHER_WEIGHTINGS.names())
@pytest.mark.parametrize("task_level", TASK_WEIGHTINGS.names())
def test_strategies_never_call_backward(teacher_level, task_level):
    torch.manual_seed(0)
    model, tasks = small_student()
    images = torch.rand(2, 3, 32, 48)
    teachers = {"d1": {"depth": torch.full((2, 1, 32, 48), 2.5)}, "d2": {"depth": torch.full((2, 1, 32, 48), 4.0)},
                "s": {"semseg": torch.randn(2, 3, 32, 48)}}
    objective, raw, batch, per_task = table_for(model, tasks, images, teachers)
    cfg = DistillConfig(teacher_weighting=teacher_level, task_weighting=task_level)
    weighting = build_weighting(cfg, tasks, per_task)
    if weighting.needs_teacher_metrics:
        weighting.teacher.set_teacher_metrics({k: {t: {"delta1": 0.9, "miou": 0.8} for t in out}
                                               for k, out in teachers.items()})
    table = objective(raw, batch, teachers, pixel_weighting=weighting.pixel_weights,
                      teacher_stats=weighting.needs_teacher_stats)
    assert {("depth", "d1"), ("depth", "d2"), ("semseg", "s"), ("depth", GT)} <= set(table)  # two depth teachers
    phase = weighting.task_losses(table, ctx())
    norms = {t: torch.tensor(1.0 + i) for i, t in enumerate(phase.losses)} if weighting.needs_rep_grads else None
    loss, row = weighting.total(phase, ctx(), norms)
    assert torch.isfinite(loss) and loss.requires_grad
    assert all(p.grad is None for p in model.parameters())  # nothing ran backward
    assert all(p.grad is None for p in weighting.parameters())
    assert {"task_weight/depth", "teacher_weight/depth/d1", "weight/depth/d2"} <= set(row)


def test_unknown_strategy_option_is_a_config_error_with_a_suggestion(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data["train"], tiny_data["val"])
    cfg["distill"] = {"teacher_weighting": {"name": "rl", "updte": "reinforce"}}
    with pytest.raises(ConfigError, match=r"unknown option 'updte'.*did you mean 'update'"):
        train_run(load_config(base=cfg), tmp_path / "run")
    cfg["distill"] = {"task_weighting": {"name": "dwa", "temperature": -1}}
    with pytest.raises(ConfigError, match=r"task_weighting 'dwa'.*temperature"):
        train_run(load_config(base=cfg), tmp_path / "run")


def three_teacher_config(tiny_data, teacher_runs, **train_opts) -> dict:
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], **train_opts)
    cfg["teachers"] = [{"name": name, "path": str(teacher_runs[name])} for name in ("depth", "depth_weak", "semseg")]
    return cfg


@pytest.mark.parametrize("teacher_level,task_level", [
    ("static", "gradnorm"), ("feedback", "dwa"), ("rl", "uncertainty"), ("dropout", "equal"),
    ("confidence", "gradnorm"),
])
def test_strategies_train_with_accumulation_and_bf16(tiny_data, teacher_runs, tmp_path, teacher_level, task_level):
    cfg = three_teacher_config(tiny_data, teacher_runs, max_steps=4, val_every=2, grad_accum_steps=2,
                               mixed_precision="bf16")
    teacher_opts = {"warmup_epochs": 0} if teacher_level == "rl" else {}
    task_opts = {"period": 1} if task_level == "dwa" else {}
    cfg["distill"] = {"teacher_weighting": {"name": teacher_level, **teacher_opts},
                      "task_weighting": {"name": task_level, **task_opts}}
    result = train_run(load_config(base=cfg), tmp_path / "run")
    assert result.fit.steps == 4
    rows = read_steps(tmp_path / "run" / "steps.csv")
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss/depth/depth_weak"] > 0 and rows[-1]["loss/depth/depth"] > 0
    assert {"task_weight/depth", "teacher_weight/depth/depth_weak"} <= set(rows[-1])
    if teacher_level == "feedback":
        vals = [json.loads(x) for x in (tmp_path / "run" / "val.jsonl").read_text().splitlines()]
        assert "weights" in vals[0]["teacher_weighting"]  # every update is logged
        weights = vals[0]["teacher_weighting"]["weights"]  # the update after step 2 is used by steps 3 and 4
        assert rows[-1]["teacher_weight/depth/depth_weak"] == pytest.approx(weights["depth/depth_weak"], rel=1e-4)
    if task_level != "equal":
        assert any(r["task_weight/depth"] != 1.0 for r in rows[1:])


def test_gradient_accumulation_steps_over_several_micro_batches(tiny_data, tmp_path):
    """Two micro-batches of 2 make one optimizer step over 4 images, like one batch of 4."""
    big = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=3)
    small = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=3, grad_accum_steps=2)
    small["data"]["batch_size"] = 2
    a = train_run(load_config(base=big), tmp_path / "big")
    b = train_run(load_config(base=small), tmp_path / "small")
    assert a.fit.steps == b.fit.steps == 3
    for fit in (a.fit, b.fit):
        assert round(fit.samples_per_second * fit.train_seconds) == 12  # 3 steps x 4 images
    assert len(read_steps(tmp_path / "small" / "steps.csv")) == 3


@pytest.mark.parametrize("distill", [
    {"teacher_weighting": {"name": "rl", "warmup_epochs": 0}, "task_weighting": "uncertainty",
     "trajectory": {"memory": "ema", "always": True}},
    {"teacher_weighting": "dropout", "task_weighting": "gradnorm",
     "trajectory": {"memory": "snapshots", "snapshot_every": 2, "always": True}},
    {"teacher_weighting": "feedback", "task_weighting": {"name": "dwa", "period": 1}},
])
def test_resume_with_adaptive_strategies_is_exact(tiny_data, teacher_runs, tmp_path, distill):
    cfg = three_teacher_config(tiny_data, teacher_runs, max_steps=6, val_every=2)
    cfg["distill"] = distill
    cfg = load_config(base=cfg)
    train_run(cfg, tmp_path / "straight")
    train_run(cfg, tmp_path / "resumed", stop_at_step=3)
    train_run(cfg, tmp_path / "resumed", resume=True)
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "last" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    sa = read_steps(tmp_path / "straight" / "steps.csv")
    sb = read_steps(tmp_path / "resumed" / "steps.csv")
    assert [r["loss"] for r in sa] == [r["loss"] for r in sb]
    key = "teacher_weight/depth/depth_weak"
    assert [r.get(key) for r in sa] == [r.get(key) for r in sb]


def test_semseg_distill_pixel_weights_scale_the_loss():
    task = build_task("semseg", num_classes=3)
    raw, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    plain = task.distill_loss(raw, teacher)
    assert torch.allclose(task.distill_loss(raw, teacher, torch.ones(2, 1, 4, 4)), plain)
    assert torch.allclose(task.distill_loss(raw, teacher, torch.full((2, 1, 4, 4), 2.0)), 2 * plain)
    zero_left = torch.ones(2, 1, 4, 4)
    zero_left[..., :2] = 0
    kl = F.kl_div(F.log_softmax(raw, 1), F.log_softmax(teacher, 1), log_target=True, reduction="none").sum(1)
    assert torch.allclose(task.distill_loss(raw, teacher, zero_left), kl[..., 2:].sum((1, 2)) / 16, atol=1e-6)
