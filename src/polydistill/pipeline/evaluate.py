"""``polydistill eval``: metrics of a checkpoint on a split, against teachers and an explicit baseline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import find_checkpoint, load_student_model
from ..config import TeacherConfig
from ..data import FolderDataset
from ..errors import PolydistillError
from ..evaluation.delta_m import delta_m, retention
from ..evaluation.evaluate import evaluate, student_predictor
from ..evaluation.speed import count_parameters, measure_latency
from ..tasks import Task
from ..teachers import Teacher, build_teacher, parse_source


def _core(metrics: dict[str, dict[str, float]], directions: dict[str, dict[str, bool]]) -> dict[str, dict[str, float]]:
    return {t: {m: v for m, v in ms.items() if m in directions.get(t, {})} for t, ms in metrics.items()}


def resolve_eval_teachers(teachers: Sequence[str | Path | Teacher], tasks: dict[str, Task]) -> list[Teacher]:
    """Teachers to compare with: instances as given; a path or ``prefix:path`` (any source, as in a config's
    ``path``) built like a config's teacher, named after its last path part."""
    classes = {name: list(task.class_names) for name, task in tasks.items() if getattr(task, "class_names", None)}
    out = []
    for teacher in teachers:
        if not isinstance(teacher, Teacher):
            _, rest = parse_source(str(teacher))
            teacher = build_teacher(TeacherConfig(name=Path(rest).name or str(teacher), path=str(teacher)), classes)
        out.append(teacher)
    return out


def evaluate_checkpoint(checkpoint: Path, data: Path, *, size: tuple[int | None, int | None] = (None, None),
                        baseline: Path | None = None, teachers: Sequence[str | Path | Teacher] = ()) -> dict[str, Any]:
    """The ``eval`` command: the student's metrics on ``data``; with ``teachers`` (instances, checkpoint paths or
    ``prefix:path`` of any source) theirs and the student's retention; with ``baseline`` Δm; latency."""
    model, tasks, spec = load_student_model(checkpoint)
    h, w = size
    if h is None or w is None:
        h, w = spec.input_size or (None, None)
    image_size = (h, w) if h and w else None
    dataset = FolderDataset(data, tuple(tasks), image_size=image_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    directions = {t: type(task).metric_directions for t, task in tasks.items()}
    primary = {t: type(task).primary_metric for t, task in tasks.items()}
    metrics = evaluate(student_predictor(model.to(device), tasks), tasks, dataset, device=device,
                       batch_size=32 if image_size else 1)
    result: dict[str, Any] = {"checkpoint": str(find_checkpoint(checkpoint)), "data": str(data),
                              "images": len(dataset), "metrics": metrics,
                              "params": count_parameters(model)}
    latency_models = {"student": model}
    if teachers:
        result["teachers"], base = {}, {}
        for teacher in resolve_eval_teachers(teachers, tasks):
            own = getattr(teacher, "task_objects", tasks)  # a polydistill checkpoint evaluates with its own tasks
            t_tasks = {t: own[t] for t in teacher.tasks if t in tasks}
            result["teachers"][teacher.name] = evaluate(teacher.to(device).predict, t_tasks, dataset, device=device,
                                                        batch_size=32 if image_size else 1)
            for t in t_tasks:
                base.setdefault(t, result["teachers"][teacher.name][t])
            latency_models[teacher.name] = getattr(teacher, "model", teacher)
        result["retention"] = retention(_core(metrics, directions), _core(base, directions), directions)
    if baseline is not None:
        try:
            base_metrics = json.loads(Path(baseline).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PolydistillError(f"cannot read baseline metrics '{baseline}': {exc}") from None
        result["delta_m"] = {
            "value": delta_m(_core(metrics, directions), _core(base_metrics, directions), directions,
                             convention="primary", primary=primary),
            "convention": "primary", "baseline": str(baseline),
        }
    if image_size:
        result["latency_ms"] = measure_latency(latency_models, image_size, device=device)
    return result
