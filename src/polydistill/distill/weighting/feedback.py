"""``feedback`` — JointDistill's validation-feedback teacher weights (Cheng et al., 2025; digest §1(b).1).

Every validation (or every ``period`` steps, at the next validation) and for every teacher term
(task t, teacher k): ``a = r_S(t) / r_T(k, t)``, the student's validation score over the teacher's, with
higher-is-better scores (``Task.score_metric``: δ1 for depth, mIoU for segmentation; override with
``scores``). With ``ā`` the mean ratio and ``ω̄`` the mean weight, each weight tracks a target

* ``favour: lagging`` (default): ``target = ω̄ · (ā / a)^α`` — a term whose student lags its teacher
  gets more weight, one the student already matches (or a weak teacher it beats) gets less;
* ``favour: leading``: ``target = ω̄ · a · ā^(α−1)``, the paper's formula as transcribed (see digest),

with the multiplicative squared-error step ``ω ← ω − β·ω·(ω − target)``, a floor ``min_weight`` and
renormalisation to mean 1. The paper's exact rule is not public: the squared-error reading, the
direction and the defaults (α = 1, β = 0.5) are our documented choices. Every update is returned to the
engine, which writes it to ``val.jsonl``.

``connector: true`` adds the paper's connector (:mod:`polydistill.distill.connector`): the teachers of each
served task (``connector_tasks``, default every task with labels, a dense map and a teacher) are replaced, as
what the student distils from, by one fused target, the ``(task, "connector")`` term. Its weight is the
task's ω, with one unit per served task whose ratio compares the student with the best of the task's
teachers (the paper's one teacher per task); unserved tasks keep one unit per teacher. The connector trains on
its own loss, returned as this strategy's auxiliary loss, and lives in this strategy's state (optimizer,
checkpoints, resume), never in the student. Off by default: nothing changes then.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from ...errors import ConfigError
from ..connector import CONNECTOR, Connector, served_tasks
from ..objective import LossTerm
from .base import Options, StepContext, TeacherWeighting


class FeedbackOptions(Options):
    alpha: float = Field(1.0, ge=0, description="how strongly the ratio moves the target")
    beta: float = Field(0.5, gt=0, le=1, description="step size of the multiplicative update")
    period: int = Field(0, ge=0, description="minimum steps between updates (0: every validation)")
    favour: Literal["lagging", "leading"] = "lagging"
    min_weight: float = Field(0.05, ge=0, description="weights never drop below this")
    scores: dict[str, str] = Field(default_factory=dict, description="task -> higher-is-better metric")
    connector: bool = Field(False, description="distil from a learned fusion of the teachers (JointDistill)")
    connector_width: int = Field(32, ge=4, le=512, description="channels of the connector's conv blocks")
    connector_stride: Literal[1, 2, 4, 8] = Field(4, description="input pixels per cell of the connector's grid")
    connector_tasks: list[str] | None = Field(None, description="tasks it serves (default: all it can)")

    @model_validator(mode="after")
    def _connector_options_need_it(self) -> FeedbackOptions:
        set_ = [k for k in ("connector_width", "connector_stride", "connector_tasks") if k in self.model_fields_set]
        if set_ and not self.connector:
            raise ValueError(f"{', '.join(set_)} only apply with connector: true (it is off)")
        return self


class FeedbackWeighting(TeacherWeighting):
    name = "feedback"
    Options = FeedbackOptions
    needs_teacher_metrics = True

    def setup(self, tasks, teachers_per_task) -> None:
        super().setup(tasks, teachers_per_task)
        self.connector: Connector | None = None
        #: what each task distils from: its teachers, or the connector in their place
        self.sources = {t: list(names) for t, names in teachers_per_task.items()}
        self._fit: dict[str, torch.Tensor] = {}  # the connector's loss per task, this micro-batch
        if self.opts.connector:
            where = f"distill.teacher_weighting '{self.name}'"
            served = served_tasks(tasks, teachers_per_task, self.opts.connector_tasks, where)
            self.connector = Connector(tasks, teachers_per_task, served, self.opts.connector_width,
                                       self.opts.connector_stride)
            self.sources.update({t: [CONNECTOR] for t in served})
        # tasks without labels (features) have no validation score: their teachers keep weight 1
        self.units = [(t, k) for t in tasks if type(tasks[t]).has_labels for k in self.sources.get(t, [])]
        self.register_buffer("omega", torch.ones(len(self.units)))
        self.teacher_scores: dict[tuple[str, str], float] = {}
        self.history: list[dict[str, Any]] = []
        self.last_update = -(10**9)

    def score_name(self, task: str) -> str:
        name = self.opts.scores.get(task, type(self.tasks[task]).score_metric)
        directions = type(self.tasks[task]).metric_directions
        if not directions.get(name, False):
            raise ConfigError(
                f"feedback weighting needs a higher-is-better score for '{task}'; '{name}' is not one "
                f"(choose from: {', '.join(m for m, up in directions.items() if up)})"
            )
        return name

    def set_teacher_metrics(self, metrics: dict[str, dict[str, dict[str, float]]]) -> None:
        for task, teacher in self.units:
            if teacher == CONNECTOR:  # its reference: the best teacher it fuses (the paper's one per task)
                scores = [metrics.get(k, {}).get(task, {}).get(self.score_name(task), float("nan"))
                          for k in self.teachers_per_task[task]]
                finite = [float(s) for s in scores if math.isfinite(s)]
                self.teacher_scores[(task, teacher)] = max(finite) if finite else float("nan")
                continue
            score = metrics.get(teacher, {}).get(task, {}).get(self.score_name(task), float("nan"))
            self.teacher_scores[(task, teacher)] = float(score)

    def fuse(self, teacher_outputs: dict[str, dict[str, torch.Tensor]],
             batch: dict) -> dict[str, dict[str, torch.Tensor]]:
        """The teacher outputs plus the connector's targets (as teacher ``"connector"``); runs the connector and
        keeps its loss for :meth:`sample_weights`. Without the connector, the outputs unchanged."""
        self._fit = {}
        if self.connector is None:
            return teacher_outputs
        raws = self.connector(teacher_outputs, tuple(batch["image"].shape[-2:]))
        if raws is None:
            return teacher_outputs
        self._fit = self.connector.fit_losses(raws, batch)
        return {**teacher_outputs, CONNECTOR: self.connector.targets(raws)}

    def sample_weights(self, task: str, terms: dict[str, LossTerm], ctx: StepContext):
        return {k: (self.omega[self.units.index((task, k))].to(t.per_sample.device) if (task, k) in self.units
                    else torch.ones((), device=t.per_sample.device)).expand_as(t.per_sample)
                for k, t in terms.items()}, self._fit.pop(task, None)

    def feedback(self, metrics: dict[str, dict[str, float]], step: int) -> dict[str, Any] | None:
        if not self.units or step - self.last_update < self.opts.period:
            return None
        ratios = []
        for task, teacher in self.units:
            r_s = metrics.get(task, {}).get(self.score_name(task), float("nan"))
            r_t = self.teacher_scores.get((task, teacher), float("nan"))
            ratios.append(r_s / r_t if r_t > 0 else float("nan"))
        a = torch.tensor(ratios, dtype=torch.float64, device=self.omega.device)  # omega follows the model
        if not torch.isfinite(a).all() or (a <= 0).any():
            return {"step": step, "skipped": "a score or a teacher score is missing or zero", "ratios": ratios}
        a_bar = a.mean()
        omega = self.omega.double()
        if self.opts.favour == "lagging":
            target = omega.mean() * (a_bar / a) ** self.opts.alpha
        else:
            target = omega.mean() * a * a_bar ** (self.opts.alpha - 1)
        omega = (omega - self.opts.beta * omega * (omega - target)).clamp_min(self.opts.min_weight)
        omega = omega * len(self.units) / omega.sum()
        self.omega.copy_(omega.float())
        self.last_update = step
        record = {
            "step": step,
            "ratios": {f"{t}/{k}": round(float(x), 5) for (t, k), x in zip(self.units, a)},
            "targets": {f"{t}/{k}": round(float(x), 5) for (t, k), x in zip(self.units, target)},
            "weights": {f"{t}/{k}": round(float(x), 5) for (t, k), x in zip(self.units, self.omega)},
        }
        if self.connector is not None:
            record["connector_mix"] = self.connector.mix_weights()
        self.history.append(record)
        return record

    # non-tensor state (scores, history) travels in the state dict through nn.Module's extra-state hook
    def get_extra_state(self) -> dict[str, Any]:
        scores = {f"{t}/{k}": (None if math.isnan(v) else v) for (t, k), v in self.teacher_scores.items()}
        return {"teacher_scores": scores, "history": self.history, "last_update": self.last_update}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.last_update = int(state.get("last_update", -(10**9)))
        for key, v in state.get("teacher_scores", {}).items():
            t, k = key.split("/", 1)
            self.teacher_scores[(t, k)] = float("nan") if v is None else float(v)
