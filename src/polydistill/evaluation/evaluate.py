"""Evaluate any predictor (student or teacher) on a split, accumulating metrics over the whole split."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.collate import collate, move_batch
from ..tasks import Task

Predictor = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def student_predictor(model: torch.nn.Module, tasks: dict[str, Task]) -> Predictor:
    """Raw student outputs -> task-space predictions."""

    def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = model(images)
        return {name: tasks[name].predict(out.float()) for name, out in raw.items()}

    return predict


def cached_predictor(teacher: str) -> Callable[[dict], dict[str, torch.Tensor]]:
    """A teacher's predictions read from the batch (a dataset with cached teacher outputs attached), for
    ``evaluate(..., takes_batch=True)``: scoring a cached teacher needs no network."""

    def predict(batch: dict) -> dict[str, torch.Tensor]:
        return batch["teacher"][teacher]

    return predict


@torch.no_grad()
def evaluate(predict: Predictor, tasks: dict[str, Task], dataset: Dataset, *, batch_size: int = 32,
             device: torch.device | str = "cpu", num_workers: int = 0,
             takes_batch: bool = False) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` over the images of ``dataset`` that carry that task's label (tasks without
    labels, such as features, have no metrics and are left out). ``predict`` gets the images, or the whole
    batch with ``takes_batch`` (see :func:`cached_predictor`)."""
    metrics = {name: task.new_metric() for name, task in tasks.items() if task.has_labels}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    for batch in loader:
        batch = move_batch(batch, device)
        preds = predict(batch) if takes_batch else predict(batch["image"])
        for name, metric in metrics.items():
            valid = batch["valid"][name]
            if name in preds and bool(valid.any()):
                metric.update(preds[name][valid].float(), batch["targets"][name][valid])
    return {name: m.compute() for name, m in metrics.items() if name in tasks}
