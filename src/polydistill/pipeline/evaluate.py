"""``polydistill eval``: metrics of a checkpoint on a split, against teachers and an explicit baseline."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import find_checkpoint, load_student_model
from ..config import ModelSpec, TeacherConfig
from ..data import FolderDataset
from ..errors import DataError, PolydistillError
from ..evaluation.delta_m import delta_m, retention
from ..evaluation.evaluate import Predictor, evaluate, student_predictor
from ..evaluation.speed import count_parameters, measure_latency
from ..tasks import Task, build_task
from ..teachers import Teacher, build_teacher, parse_source


def _core(metrics: dict[str, dict[str, float]], directions: dict[str, dict[str, bool]]) -> dict[str, dict[str, float]]:
    return {t: {m: v for m, v in ms.items() if m in directions.get(t, {})} for t, ms in metrics.items()}


def match_folder_classes(tasks: dict[str, Task], spec: ModelSpec, dataset: FolderDataset,
                         data: Path) -> tuple[dict[str, Task], dict[str, list[int]]]:
    """The tasks to score ``data`` with, and per task whose classes its ``classes.yaml`` lists in another order the
    student's channel of each folder class: classes are matched **by name**, never by position. A folder naming
    other classes is an error listing both (scoring them as the student's would be a wrong result)."""
    folder = [str(c) for c in dataset.class_names]
    scored, orders = dict(tasks), {}
    if not folder:
        return scored, orders
    folder_keys = [c.strip().lower() for c in folder]
    for name, task in tasks.items():
        own = [str(c) for c in getattr(task, "class_names", None) or ()]
        if not type(task).needs_class_names or not own:
            continue
        keys = [c.strip().lower() for c in own]
        if keys == folder_keys or (len(keys) < len(folder_keys) and set(keys) <= set(folder_keys)):
            continue  # the same classes, or a subset the task picks by name itself (box classes)
        if len(keys) != len(folder_keys) or set(keys) != set(folder_keys) or len(set(keys)) != len(keys):
            raise DataError(
                f"{data}: its classes.yaml lists {folder} but the student's '{name}' classes are {own}; the names "
                "differ, so its labels cannot be scored as the student's classes — evaluate on data labelled with "
                "the student's classes (in any order: they are matched by name)")
        orders[name] = [keys.index(k) for k in folder_keys]
        scored[name] = build_task(name, **{**spec.tasks[name], "class_names": folder})
    return scored, orders


def in_folder_order(predict: Predictor, orders: dict[str, list[int]]) -> Predictor:
    """``predict`` with the class channels (first, before any others such as box distances) of the tasks in
    ``orders`` re-ordered into the folder's class order."""
    if not orders:
        return predict

    def reordered(images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(predict(images))
        for name, order in orders.items():
            if name in out:
                value = out[name]
                out[name] = torch.cat([value[:, order], value[:, len(order):]], dim=1)
        return out

    return reordered


def check_eval_labels(dataset: FolderDataset, data: Path) -> None:
    """A folder without labels of the student's tasks measures nothing: an error, not NaN for every metric."""
    counts = dataset.label_counts()
    if counts and not any(counts.values()):
        raise DataError(f"{data}: none of its {len(dataset)} images carries a label of the student's tasks "
                        f"{', '.join(counts)}, so eval cannot measure anything; point --data at a labelled split")
    for task, count in counts.items():
        if count == 0:
            warnings.warn(f"{data} has no '{task}' labels: its '{task}' metrics are null", stacklevel=3)


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (``null``): bare ``NaN`` is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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
    check_eval_labels(dataset, data)
    scored, orders = match_folder_classes(tasks, spec, dataset, data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    directions = {t: type(task).metric_directions for t, task in tasks.items()}
    primary = {t: type(task).primary_metric for t, task in tasks.items()}
    metrics = evaluate(in_folder_order(student_predictor(model.to(device), tasks), orders), scored, dataset,
                       device=device, batch_size=32 if image_size else 1)
    result: dict[str, Any] = {"checkpoint": str(find_checkpoint(checkpoint)), "data": str(data),
                              "images": len(dataset), "metrics": metrics,
                              "params": count_parameters(model)}
    latency_models = {"student": model}
    if teachers:
        result["teachers"], base = {}, {}
        for teacher in resolve_eval_teachers(teachers, tasks):
            # a polydistill checkpoint evaluates with its own tasks, except for classes: it answers in the student's
            own = getattr(teacher, "task_objects", scored)
            t_tasks = {t: scored[t] if type(scored[t]).needs_class_names else own.get(t, scored[t])
                       for t in teacher.tasks if t in tasks}
            result["teachers"][teacher.name] = evaluate(in_folder_order(teacher.to(device).predict, orders), t_tasks,
                                                        dataset, device=device, batch_size=32 if image_size else 1)
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
    return json_safe(result)
