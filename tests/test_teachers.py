"""Teachers: checkpoint teachers are frozen and answer in task space; distillation uses them."""

from __future__ import annotations

import pytest
import torch

from polydistill.config import load_config
from polydistill.engine.logging import read_steps
from polydistill.errors import ConfigError
from polydistill.pipeline.train import train_run
from polydistill.teachers import CheckpointTeacher
from tests.conftest import tiny_config


def test_checkpoint_teacher_is_frozen_and_in_task_space(teacher_runs):
    teacher = CheckpointTeacher("seg", teacher_runs["semseg"])
    teacher.train()  # must not leave eval mode
    assert not teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.parameters())
    out = teacher.predict(torch.rand(2, 3, 32, 48))
    assert set(out) == {"semseg"} and out["semseg"].shape == (2, 3, 32, 48)
    assert not out["semseg"].requires_grad
    depth = CheckpointTeacher("d", teacher_runs["depth"]).predict(torch.rand(1, 3, 32, 48))["depth"]
    assert depth.shape == (1, 1, 32, 48) and bool((depth > 0).all())  # metres, not log-metres


def test_teacher_cannot_teach_a_task_it_does_not_predict(teacher_runs):
    with pytest.raises(ConfigError, match="cannot teach"):
        CheckpointTeacher("seg", teacher_runs["semseg"], tasks=["depth"])


@pytest.mark.parametrize("precompute", [True, False])
def test_distillation_uses_both_teachers(tiny_data, teacher_runs, tmp_path, precompute):
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=4)
    cfg["teachers"] = [{"name": f"{t}_teacher", "path": str(teacher_runs[t])} for t in ("depth", "semseg")]
    cfg["distill"] = {"precompute_teachers": precompute, "teacher_weights": {"semseg_teacher": 2.0}}
    train_run(load_config(base=cfg), tmp_path / "run")
    row = read_steps(tmp_path / "run" / "steps.csv")[0]
    assert row["weight/semseg/semseg_teacher"] == 2.0 and row["weight/depth/depth_teacher"] == 1.0
    assert row["loss/semseg/semseg_teacher"] > 0 and row["loss/depth/depth_teacher"] > 0


def test_precomputed_and_online_teacher_targets_agree(tiny_data, teacher_runs, tmp_path):
    """Without augmentation, stored (fp16) teacher maps give the same loss as running the teacher."""
    losses = {}
    for precompute in (True, False):
        cfg = tiny_config(tiny_data["train"], None, max_steps=2)
        cfg["data"]["augment"] = {"hflip": 0.0, "scale": [1.0, 1.0]}
        cfg["teachers"] = [{"name": "d", "path": str(teacher_runs["depth"])}]
        cfg["distill"] = {"precompute_teachers": precompute}
        train_run(load_config(base=cfg), tmp_path / str(precompute))
        losses[precompute] = read_steps(tmp_path / str(precompute) / "steps.csv")[0]["loss/depth/d"]
    assert losses[True] == pytest.approx(losses[False], rel=2e-3)


def test_teacher_for_unknown_student_task_is_rejected(tiny_data, teacher_runs, tmp_path):
    cfg = tiny_config(tiny_data["train"], None)
    cfg["tasks"] = {"depth": {}}
    cfg["teachers"] = [{"name": "s", "path": str(teacher_runs["semseg"])}]
    with pytest.raises(ConfigError, match="does not learn"):
        train_run(load_config(base=cfg), tmp_path / "run")
