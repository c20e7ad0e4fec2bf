"""A shared check for teacher tests: a few distillation steps against a teacher reduce the loss.

Builds a tiny student for the teacher's tasks, computes the teacher's outputs on a fixed batch once, and
takes Adam steps on the objective's teacher terms (the same loss code as training). Used by the tests of
every teacher source and architecture, so each one is shown to *teach*, not only to produce shapes.
"""

from __future__ import annotations

import torch

from polydistill.distill import Objective
from polydistill.students import build_student


def assert_distills(teacher, num_classes: int | None = None, steps: int = 12, size: tuple[int, int] = (32, 48)) -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, *size)
    outputs = teacher.predict(images)
    tasks = {}
    for task in teacher.tasks:
        if task in teacher.feature_channels:
            tasks[task] = {"type": "features", "channels": teacher.feature_channels[task], "grid_stride": 8}
        elif task == "semseg":
            tasks[task] = {"num_classes": num_classes or outputs[task].shape[1]}
        elif task == "detection":
            tasks[task] = {"num_classes": outputs[task].shape[1] - 4}
        else:
            tasks[task] = {}
    model, task_objects = build_student({"tasks": tasks, "backbone": "test_efficientnet", "neck_channels": 16})
    kinds = {(t, teacher.name): teacher.output_kind(t) for t in teacher.tasks}
    objective = Objective(task_objects, {t: [teacher.name] for t in teacher.tasks}, teacher_kinds=kinds)
    batch = {"valid": {}, "targets": {}}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        table = objective(model(images), batch, {teacher.name: outputs})
        loss = sum(term.value for term in table.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-3:]) < sum(losses[:3]), f"distilling from '{teacher.name}' did not reduce the loss: {losses}"
