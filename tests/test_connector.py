"""JointDistill's connector (``feedback`` with ``connector: true``): shapes, gradients, ω, config checks, training
and exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from polydistill.config import DistillConfig, load_config
from polydistill.distill.connector import CONNECTOR, Connector
from polydistill.distill.objective import Objective
from polydistill.distill.weighting import StepContext, build_weighting
from polydistill.distill.weighting.feedback import FeedbackWeighting
from polydistill.engine.logging import read_steps
from polydistill.errors import ConfigError
from polydistill.pipeline.train import train_run
from polydistill.tasks import build_task
from tests.conftest import tiny_config, write_tiny_dataset
from tests.resume_check import assert_same_last_checkpoint

B, H, W = 2, 16, 24
UNITS = {"depth": ["d1", "d2"], "semseg": ["s"]}


def tasks() -> dict:
    return {"depth": build_task("depth"), "semseg": build_task("semseg", num_classes=3)}


def teacher_outputs(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {"d1": {"depth": 1 + 4 * torch.rand(B, 1, H, W, generator=g)},
            "d2": {"depth": 1 + 4 * torch.rand(B, 1, H, W, generator=g)},
            "s": {"semseg": torch.randn(B, 3, H, W, generator=g)}}


def batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(B, 3, H, W, generator=g),
            "targets": {"depth": 1 + 4 * torch.rand(B, 1, H, W, generator=g),
                        "semseg": torch.randint(0, 3, (B, H, W), generator=g)},
            "valid": {"depth": torch.tensor([True, False]), "semseg": torch.tensor([True, True])}}


def feedback(**opts) -> FeedbackWeighting:
    fb = FeedbackWeighting({"connector": True, **opts})
    fb.setup(tasks(), UNITS)
    return fb


def test_connector_shapes_and_start_from_the_mean_of_each_tasks_teachers():
    t = tasks()
    connector = Connector(t, UNITS, ["depth", "semseg"], width=8, stride=4)
    outs = teacher_outputs()
    raws = connector(outs, (H, W))
    assert raws["depth"].shape == (B, 1, H, W) and raws["semseg"].shape == (B, 3, H, W)
    # zero heads and equal mixing weights: the mean of the task's own teachers' raw maps (log-depth, logits)
    mean_log = (outs["d1"]["depth"].log() + outs["d2"]["depth"].log()) / 2
    torch.testing.assert_close(raws["depth"], mean_log)
    torch.testing.assert_close(raws["semseg"], outs["s"]["semseg"])
    targets = connector.targets(raws)
    assert not targets["depth"].requires_grad
    torch.testing.assert_close(targets["depth"], mean_log.exp())
    assert connector({k: v for k, v in outs.items() if k != "d2"}, (H, W)) is None  # a missing teacher output
    assert connector.mix_weights() == {"depth": {"d1": 0.5, "d2": 0.5}, "semseg": {"s": 1.0}}


def test_connector_reads_every_teacher_map_at_its_grid():
    t = tasks()
    connector = Connector(t, UNITS, ["semseg"], width=8, stride=2)
    assert connector.inputs == [("depth", "d1"), ("depth", "d2"), ("semseg", "s")]
    assert sum(connector.channels) == connector.norm.num_features == 5
    seen = {}

    def keep(module, inputs, output) -> None:
        seen["grid"] = output.shape

    connector.fuse.register_forward_hook(keep)
    assert set(connector(teacher_outputs(), (H, W))) == {"semseg"}
    assert seen["grid"] == (B, 8, H // 2, W // 2)


def test_the_connector_learns_from_labels_only_and_its_loss_is_the_strategys_aux_loss():
    fb = feedback(connector_width=8)
    with torch.no_grad():  # heads away from zero, so the fusion blocks get gradients too
        for head in fb.connector.heads:
            head.weight.normal_(0, 0.1)
    outs = fb.fuse(teacher_outputs(), batch())
    assert set(outs[CONNECTOR]) == {"depth", "semseg"} and {"d1", "d2", "s"} <= set(outs)
    student = {"depth": torch.zeros(B, 1, H, W, requires_grad=True), "semseg": torch.zeros(B, 3, H, W,
                                                                                          requires_grad=True)}
    objective = Objective(tasks(), fb.sources)
    table = objective(student, batch(), outs)
    assert {s for _, s in table} == {"gt", CONNECTOR}  # the served tasks' teachers are replaced
    ctx = StepContext(step=0, steps_per_epoch=10)
    aux_losses = []
    for task in ("depth", "semseg"):
        weights, aux = fb.sample_weights(task, {CONNECTOR: table[(task, CONNECTOR)]}, ctx)
        aux_losses.append(aux)
    # the student's distillation terms do not reach the connector (its targets are detached) ...
    sum(t.value for t in table.values()).backward()
    assert all(p.grad is None for p in fb.connector.parameters())
    assert student["depth"].grad is not None
    # ... its own loss does: heads, mixing weights and the fusion blocks
    sum(aux_losses).backward()
    for name, p in fb.connector.named_parameters():
        if name != "mix.1":  # semseg's mix over its one teacher: a softmax of one value is constant
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # a batch without any depth label: no depth loss for the connector
    unlabelled = batch()
    unlabelled["valid"]["depth"] = torch.tensor([False, False])
    fb.fuse(teacher_outputs(), unlabelled)
    assert fb.sample_weights("depth", {CONNECTOR: table[("depth", CONNECTOR)]}, ctx)[1] is None


def test_omega_scales_the_students_connector_term():
    cfg = DistillConfig(teacher_weighting={"name": "feedback", "options": {"connector": True}})
    weighting = build_weighting(cfg, tasks(), UNITS)
    assert weighting.teachers_per_task == {"depth": [CONNECTOR], "semseg": [CONNECTOR]}
    fb = weighting.teacher
    assert fb.units == [("depth", CONNECTOR), ("semseg", CONNECTOR)]
    fb.omega.copy_(torch.tensor([1.5, 0.5]))
    student = {"depth": torch.zeros(B, 1, H, W), "semseg": torch.zeros(B, 3, H, W)}
    outs = weighting.teacher_targets(teacher_outputs(), batch())
    table = Objective(tasks(), weighting.teachers_per_task)(student, batch(), outs)
    phase = weighting.task_losses(table, StepContext(step=0, steps_per_epoch=10))
    assert phase.teacher_weights == {("depth", CONNECTOR): 1.5, ("semseg", CONNECTOR): 0.5}
    for task, omega in (("depth", 1.5), ("semseg", 0.5)):
        expected = table[(task, "gt")].value + omega * table[(task, CONNECTOR)].value
        torch.testing.assert_close(phase.losses[task], expected)
    assert len(phase.aux) == 2  # the connector's loss on depth and on semseg
    total, row = weighting.total(phase, StepContext(step=0, steps_per_epoch=10))
    assert row["aux_loss"] > 0 and math.isfinite(float(total.detach()))


def test_feedback_compares_the_student_with_the_best_teacher_of_a_served_task():
    fb = feedback(connector_tasks=["depth"])
    assert fb.units == [("depth", CONNECTOR), ("semseg", "s")]
    fb.set_teacher_metrics({"d1": {"depth": {"delta1": 0.9}}, "d2": {"depth": {"delta1": 0.6}},
                            "s": {"semseg": {"miou": 0.5}}})
    assert fb.teacher_scores == {("depth", CONNECTOR): 0.9, ("semseg", "s"): 0.5}
    record = fb.feedback({"depth": {"delta1": 0.45}, "semseg": {"miou": 0.5}}, step=10)
    assert record["ratios"] == {"depth/connector": 0.5, "semseg/s": 1.0}
    assert record["weights"]["depth/connector"] > record["weights"]["semseg/s"]  # the lagging task
    assert record["connector_mix"] == {"depth": {"d1": 0.5, "d2": 0.5}}


def test_without_the_connector_nothing_changes():
    fb = FeedbackWeighting({})
    fb.setup(tasks(), UNITS)
    outs = teacher_outputs()
    assert fb.connector is None and fb.sources == UNITS and fb.fuse(outs, batch()) is outs
    assert fb.units == [("depth", "d1"), ("depth", "d2"), ("semseg", "s")]
    assert not list(fb.parameters())


@pytest.mark.parametrize("opts,units,message", [
    ({"connector_tasks": ["dept"]}, UNITS, r"'dept', which is not a student task — did you mean 'depth'"),
    ({"connector_tasks": ["semseg"]}, {"depth": ["d1"]}, r"'semseg', which no teacher teaches"),
    ({}, {"depth": ["connector"]}, r"a teacher is named 'connector'"),
    ({}, {"depth": [], "semseg": []}, r"no task has both labels, a dense map and a teacher"),
])
def test_connector_config_errors(opts, units, message):
    fb = FeedbackWeighting({"connector": True, **opts})
    with pytest.raises(ConfigError, match=message):
        fb.setup(tasks(), units)


def test_connector_refuses_a_task_it_cannot_serve():
    t = {**tasks(), "dino": build_task("dino", type="features", channels=8)}
    fb = FeedbackWeighting({"connector": True, "connector_tasks": ["dino"]})
    with pytest.raises(ConfigError, match=r"cannot serve 'dino'.*no labels"):
        fb.setup(t, {**UNITS, "dino": ["f"]})
    fb = FeedbackWeighting({"connector": True})  # default: the tasks it can serve; dino's teacher map is an input
    fb.setup(t, {**UNITS, "dino": ["f"]})
    assert fb.sources["dino"] == ["f"] and fb.connector.served == ["depth", "semseg"]
    assert sum(fb.connector.channels) == 1 + 1 + 3 + 8


def test_connector_options_without_the_connector_and_stale_teacher_weights_are_config_errors(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data["train"], tiny_data["val"])
    cfg["distill"] = {"teacher_weighting": {"name": "feedback", "connector_width": 16}}
    with pytest.raises(ConfigError, match=r"connector_width only apply with connector: true"):
        train_run(load_config(base=cfg), tmp_path / "run")
    cfg["distill"] = {"teacher_weighting": {"name": "static", "connector": True}}
    with pytest.raises(ConfigError, match=r"teacher_weighting 'static': unknown option 'connector'"):
        train_run(load_config(base=cfg), tmp_path / "run2")
    dcfg = DistillConfig(teacher_weighting={"name": "feedback", "options": {"connector": True}},
                         teacher_weights={"d2": 0.5})
    with pytest.raises(ConfigError, match=r"teacher_weights sets \['d2'\].*no longer distils"):
        build_weighting(dcfg, tasks(), UNITS)


def connector_config(tiny_data, teacher_runs, **train_opts) -> dict:
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], **train_opts)
    cfg["teachers"] = [{"name": name, "path": str(teacher_runs[name])} for name in ("depth", "depth_weak", "semseg")]
    cfg["distill"] = {"teacher_weighting": {"name": "feedback", "connector": True, "connector_width": 8}}
    return cfg


def test_training_with_the_connector_keeps_it_out_of_the_student(tiny_data, teacher_runs, tmp_path):
    cfg = connector_config(tiny_data, teacher_runs, max_steps=4, val_every=2)
    result = train_run(load_config(base=cfg), tmp_path / "run")
    assert result.fit.steps == 4
    rows = read_steps(tmp_path / "run" / "steps.csv")
    assert all(math.isfinite(r["loss"]) and r["aux_loss"] > 0 for r in rows)
    assert rows[-1]["loss/depth/connector"] > 0 and "loss/depth/depth" not in rows[-1]
    vals = [json.loads(x) for x in (tmp_path / "run" / "val.jsonl").read_text().splitlines()]
    update = vals[-1]["teacher_weighting"]
    assert set(update["weights"]) == {"depth/connector", "semseg/connector"}
    assert set(update["connector_mix"]["depth"]) == {"depth", "depth_weak"}
    last = tmp_path / "run" / "checkpoints" / "last"
    assert not [k for k in load_file(str(last / "model.safetensors")) if "connector" in k]  # training-only
    assert [k for k in load_file(str(last / "training.safetensors")) if "connector.heads" in k]
    # the connector trained: its heads left zero
    state = load_file(str(last / "training.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in state.items() if "connector.heads" in k)


def test_a_served_task_without_any_training_label_is_a_config_error(tiny_data, teacher_runs, tmp_path):
    cfg = connector_config(tiny_data, teacher_runs)
    cfg["data"]["train"] = str(write_tiny_dataset(tmp_path / "semseg_only", 8, seed=3, labels=("semseg",)))
    with pytest.raises(ConfigError, match=r"no training image has a 'depth' label.*connector_tasks"):
        train_run(load_config(base=cfg), tmp_path / "run")


def test_resume_with_the_connector_is_exact(tiny_data, teacher_runs, tmp_path):
    cfg = load_config(base=connector_config(tiny_data, teacher_runs, max_steps=6, val_every=2))
    train_run(cfg, tmp_path / "straight")
    train_run(cfg, tmp_path / "resumed", stop_at_step=3)
    train_run(cfg, tmp_path / "resumed", resume=True)
    assert_same_last_checkpoint(tmp_path / "straight", tmp_path / "resumed", "connector")
    sa, sb = read_steps(tmp_path / "straight" / "steps.csv"), read_steps(tmp_path / "resumed" / "steps.csv")
    assert [r["loss"] for r in sa] == [r["loss"] for r in sb]
    assert [r["aux_loss"] for r in sa] == [r["aux_loss"] for r in sb]


def test_benchmark_pairs_seeds_and_flags_differences_beyond_two_standard_errors():
    from benchmarks.connector import REFERENCE, TREATED, compare

    def run(variant: str, seed: int, miou: float) -> dict:
        return {"variant": variant, "seed": seed, "test": {"semseg": {"miou": miou}}, "delta_m": 100 * miou,
                "delta_m_served": 0.0, "delta_m_last": 0.0, "delta_m_served_last": 0.0}

    runs = [run(REFERENCE, s, 0.5 + 0.1 * s) for s in range(3)] + [run(TREATED, s, 0.52 + 0.1 * s + 0.001 * s)
                                                                  for s in range(3)]
    rows = {r["key"]: r for r in compare(runs)}
    miou = rows["miou"]
    assert miou["diff"]["seeds"] == [0, 1, 2] and miou["diff"]["mean"] == pytest.approx(0.021)
    assert miou["exceeds_2se"] and miou["better"]  # paired: the seed-to-seed spread cancels
    assert rows["delta_m_served"]["better"] is None and not rows["delta_m_served"]["exceeds_2se"]
    assert math.isnan(rows["abs_rel"]["diff"]["mean"])
