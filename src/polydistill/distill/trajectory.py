"""Knowledge trajectory (JointDistill, Cheng et al. 2025): keep the student near its own past on tasks
it is forgetting.

The paper's exact definition is not public (digest §1(b).2). This is our documented interpretation:

* **memory** of past student states: an EMA copy of the weights (``memory: ema``, decay ``ema_decay``)
  or the last ``num_snapshots`` copies taken every ``snapshot_every`` steps (``memory: snapshots``);
* **which tasks**: after every validation, a task whose score (its primary metric) fell more than
  ``tolerance`` (relative) below its best so far is *dropped*; only dropped tasks get the term
  (``always: true`` applies it to every task at every step);
* **the term**: ``(task, "trajectory")`` in the loss table, the task's own distillation loss between the
  student and the memory's prediction (KL for segmentation, log-L1 for depth), weighted by ``weight``.
  With snapshots the memory's prediction is the age-weighted mean (weights ``age_decay**age``) of the
  snapshots' raw outputs (log-depth, logits).

The memory runs in the student's own mode (train-mode batch norm), so an unchanged student has exactly
zero trajectory loss and the term grows as its outputs drift. Memory forwards happen only while some
task is dropped, so the term costs nothing while every task improves.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..config import TrajectoryConfig
from ..tasks import Task


class KnowledgeTrajectory:
    def __init__(self, cfg: TrajectoryConfig, model: nn.Module, tasks: dict[str, Task]):
        self.cfg = cfg
        self.tasks = tasks
        self.template = model
        self.memory: list[tuple[int, nn.Module]] = [(0, self._copy(model))]
        self.best: dict[str, float] = {}
        self.active: list[str] = list(tasks) if cfg.always else []

    @staticmethod
    def _copy(model: nn.Module) -> nn.Module:
        clone = copy.deepcopy(model)
        for p in clone.parameters():
            p.requires_grad_(False)
        return clone

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After an optimizer step: move the EMA, or take a snapshot when one is due."""
        if self.cfg.memory == "ema":
            memory = self.memory[0][1]
            for m, s in zip(memory.parameters(), model.parameters()):
                m.lerp_(s.detach(), 1.0 - self.cfg.ema_decay)
            for m, s in zip(memory.buffers(), model.buffers()):
                m.copy_(s)
            self.memory[0] = (step, memory)
        elif step % self.cfg.snapshot_every == 0:
            self.memory.append((step, self._copy(model)))
            self.memory = self.memory[-self.cfg.num_snapshots:]

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, training: bool = True) -> dict[str, torch.Tensor]:
        """Task-space predictions of the memory for the active tasks ({} when none is active)."""
        if not self.active:
            return {}
        latest = self.memory[-1][0]
        raws: dict[str, torch.Tensor] = {}
        total = 0.0
        for step, memory in self.memory:
            age = (latest - step) // max(self.cfg.snapshot_every, 1) if self.cfg.memory == "snapshots" else 0
            w = self.cfg.age_decay**age
            memory.train(training)
            out = memory(images)
            for t in self.active:
                raws[t] = raws.get(t, 0.0) + w * out[t].float()
            total += w
        return {t: self.tasks[t].predict(r / total) for t, r in raws.items()}

    def feedback(self, metrics: dict[str, dict[str, float]]) -> list[str]:
        """Update the best scores; return the tasks now dropped (the ones the term applies to)."""
        if self.cfg.always:
            return self.active
        active = []
        for name, task in self.tasks.items():
            metric = type(task).primary_metric
            value = metrics.get(name, {}).get(metric)
            if value is None or value != value:
                continue
            score = value if type(task).metric_directions[metric] else -value
            best = self.best.get(name)
            if best is not None and score < best - self.cfg.tolerance * abs(best):
                active.append(name)
            self.best[name] = score if best is None else max(best, score)
        self.active = active
        return active

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": [s for s, _ in self.memory],
            "weights": [{k: v.detach().clone() for k, v in m.state_dict().items()} for _, m in self.memory],
            "best": dict(self.best), "active": list(self.active),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = []
        for step, weights in zip(state["steps"], state["weights"]):
            clone = self._copy(self.template)
            clone.load_state_dict(weights)
            self.memory.append((int(step), clone))
        self.best = {k: float(v) for k, v in state["best"].items()}
        self.active = list(state["active"])
