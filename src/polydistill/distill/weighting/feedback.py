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
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from ...errors import ConfigError
from ..objective import LossTerm
from .base import Options, StepContext, TeacherWeighting


class FeedbackOptions(Options):
    alpha: float = Field(1.0, ge=0, description="how strongly the ratio moves the target")
    beta: float = Field(0.5, gt=0, le=1, description="step size of the multiplicative update")
    period: int = Field(0, ge=0, description="minimum steps between updates (0: every validation)")
    favour: Literal["lagging", "leading"] = "lagging"
    min_weight: float = Field(0.05, ge=0, description="weights never drop below this")
    scores: dict[str, str] = Field(default_factory=dict, description="task -> higher-is-better metric")


class FeedbackWeighting(TeacherWeighting):
    name = "feedback"
    Options = FeedbackOptions
    needs_teacher_metrics = True

    def setup(self, tasks, teachers_per_task) -> None:
        super().setup(tasks, teachers_per_task)
        # tasks without labels (features) have no validation score: their teachers keep weight 1
        self.units = [(t, k) for t in tasks if type(tasks[t]).has_labels for k in teachers_per_task.get(t, [])]
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
            score = metrics.get(teacher, {}).get(task, {}).get(self.score_name(task), float("nan"))
            self.teacher_scores[(task, teacher)] = float(score)

    def sample_weights(self, task: str, terms: dict[str, LossTerm], ctx: StepContext):
        return {k: (self.omega[self.units.index((task, k))].to(t.per_sample.device) if (task, k) in self.units
                    else torch.ones((), device=t.per_sample.device)).expand_as(t.per_sample)
                for k, t in terms.items()}, None

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
