"""``polydistill eval``: metrics of a checkpoint on a split, against teachers and an explicit baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import find_checkpoint, load_student_model
from ..data import FolderDataset
from ..errors import PolydistillError
from ..evaluation.delta_m import delta_m, retention
from ..evaluation.evaluate import evaluate, student_predictor
from ..evaluation.speed import count_parameters, measure_latency
from ..teachers import CheckpointTeacher


def _core(metrics: dict[str, dict[str, float]], directions: dict[str, dict[str, bool]]) -> dict[str, dict[str, float]]:
    return {t: {m: v for m, v in ms.items() if m in directions.get(t, {})} for t, ms in metrics.items()}


def evaluate_checkpoint(checkpoint: Path, data: Path, *, size: tuple[int | None, int | None] = (None, None),
                        baseline: Path | None = None, teachers: list[Path] = ()) -> dict[str, Any]:
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
        for path in teachers:
            teacher = CheckpointTeacher(Path(path).name, path)
            t_tasks = {t: teacher.task_objects[t] for t in teacher.tasks if t in tasks}
            result["teachers"][teacher.name] = evaluate(teacher.to(device).predict, t_tasks, dataset, device=device,
                                                        batch_size=32 if image_size else 1)
            for t in t_tasks:
                base.setdefault(t, result["teachers"][teacher.name][t])
            latency_models[teacher.name] = teacher.model
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
