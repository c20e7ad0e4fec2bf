"""Multi-task Δm and teacher retention.

Δm = mean of (−1)^{l} (M − M_b) / M_b × 100 (l = 1 when lower is better), so positive = better than
the baseline. Published numbers use three different averaging conventions, which can even disagree in
sign on the same results, so the convention is an explicit argument:

* ``"primary"``  — one primary metric per task, averaged over tasks (survey / InvPT / SAK lineage);
* ``"task_avg"`` — every metric of a task averaged within the task, then across tasks (LibMTL);
* ``"flat"``     — a flat average over all metrics of all tasks (CAGrad / Nash-MTL lineage; note
  those papers report the *negative* of this, as a drop).

All dicts are ``task -> metric -> value``; ``directions`` is ``task -> metric -> higher_is_better`` and
says which metrics take part (``primary`` picks one of them per task).
"""

from __future__ import annotations

import math

CONVENTIONS = ("primary", "task_avg", "flat")

Table = dict[str, dict[str, float]]


def _value(table: Table, task: str, metric: str, which: str) -> float:
    if task not in table:
        raise ValueError(f"{which} has no task '{task}' (tasks: {sorted(table)})")
    if metric not in table[task]:
        raise ValueError(f"{which} lacks metric '{task}/{metric}' (has: {sorted(table[task])})")
    return float(table[task][metric])


def relative_gain(value: float, base: float, higher_is_better: bool) -> float:
    """Signed relative change in percent; positive means ``value`` is better than ``base``."""
    if base == 0 or not math.isfinite(base):
        raise ValueError(f"baseline value must be finite and non-zero for a relative change, got {base}")
    sign = 1.0 if higher_is_better else -1.0
    return sign * (value - base) / base * 100.0


def _selected(
    directions: dict[str, dict[str, bool]], convention: str, primary: dict[str, str] | None
) -> dict[str, list[str]]:
    """Task -> the metrics that enter Δm under ``convention``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown Δm convention '{convention}' (choose from: {', '.join(CONVENTIONS)})")
    if not directions:
        raise ValueError("Δm needs at least one task in `directions`")
    if convention != "primary":
        return {task: list(metrics) for task, metrics in directions.items()}
    chosen = {}
    for task, metrics in directions.items():
        if primary is not None and task in primary:
            name = primary[task]
        elif len(metrics) == 1:  # unambiguous without being told
            name = next(iter(metrics))
        else:
            raise ValueError(f"convention 'primary' needs `primary['{task}']` (one of: {sorted(metrics)})")
        if name not in metrics:
            raise ValueError(f"primary metric '{task}/{name}' has no direction (known: {sorted(metrics)})")
        chosen[task] = [name]
    return chosen


def delta_m(
    results: Table,
    baseline: Table,
    directions: dict[str, dict[str, bool]],
    *,
    convention: str = "primary",
    primary: dict[str, str] | None = None,
) -> float:
    """Δm of ``results`` against ``baseline`` in percent (positive = better); see the module doc."""
    gains = {
        task: [
            relative_gain(
                _value(results, task, m, "results"),
                _value(baseline, task, m, "baseline"),
                directions[task][m],
            )
            for m in metrics
        ]
        for task, metrics in _selected(directions, convention, primary).items()
    }
    if not any(gains.values()):
        raise ValueError("Δm has no metric to compare: every task in `directions` is empty")
    if convention == "flat":
        flat = [g for task_gains in gains.values() for g in task_gains]
        return sum(flat) / len(flat)
    per_task = [sum(g) / len(g) for g in gains.values() if g]
    return sum(per_task) / len(per_task)


def retention(student: Table, teacher: Table, directions: dict[str, dict[str, bool]]) -> Table:
    """How much of each teacher metric the student keeps, as a ratio (0.9 = keeps 90 %).

    Higher-is-better: student / teacher; lower-is-better: teacher / student, so the ratio always grows
    as the student improves. Only tasks present in ``teacher`` are compared (a teacher usually covers a
    subset of tasks); within those, every metric in ``directions`` must be present on both sides.
    A zero denominator gives NaN rather than an error, so an evaluation report is never lost to it.
    """
    out: Table = {}
    for task, metrics in directions.items():
        if task not in teacher:
            continue
        out[task] = {}
        for m, higher in metrics.items():
            s = _value(student, task, m, "student")
            t = _value(teacher, task, m, "teacher")
            num, den = (s, t) if higher else (t, s)
            # a zero denominator (e.g. an untrained model with delta1 = 0) has no meaningful ratio
            out[task][m] = num / den if den != 0 else float("nan")
    return out
