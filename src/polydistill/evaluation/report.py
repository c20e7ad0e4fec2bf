"""``polydistill eval``: metrics of a checkpoint on a split, against teachers and an explicit baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..data import FolderDataset
from ..engine.checkpoint import find_checkpoint, load_spec, load_weights
from ..errors import PolydistillError
from ..students import build_student
from ..teachers import CheckpointTeacher
from .delta_m import delta_m, retention
from .evaluate import evaluate, student_predictor
from .speed import count_parameters, measure_latency


def load_student(path: str | Path, *, inference: bool = True):
    """(model in eval mode, tasks, spec) from a checkpoint or run directory.

    ``inference=True`` drops the training-only parts (feature projectors) and their tasks: what a deployed
    student computes. ``False`` keeps the model exactly as trained.
    """
    ckpt = find_checkpoint(path)
    spec = load_spec(ckpt)
    model, tasks = build_student(spec)
    load_weights(model, ckpt)
    if inference:
        model = model.inference_model()
        tasks = {n: t for n, t in tasks.items() if n in model.task_names}
    return model.eval(), tasks, spec


def _core(metrics: dict[str, dict[str, float]], directions: dict[str, dict[str, bool]]) -> dict[str, dict[str, float]]:
    return {t: {m: v for m, v in ms.items() if m in directions.get(t, {})} for t, ms in metrics.items()}


def evaluate_checkpoint(checkpoint: Path, data: Path, *, size: tuple[int | None, int | None] = (None, None),
                        baseline: Path | None = None, teachers: list[Path] = ()) -> dict[str, Any]:
    model, tasks, spec = load_student(checkpoint)
    h, w = size
    if h is None or w is None:
        h, w = spec.get("input_size", (None, None))
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
