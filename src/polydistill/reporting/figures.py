"""Plots of a run (losses, validation metrics, teacher/task weights, a sample grid) and the demo's Markdown report.

Every plot is built by a ``*_figure`` function that returns a matplotlib figure (or None when its data is
missing), so the Markdown report (PNG files beside it) and the HTML report (PNG data URIs inside one file,
:mod:`polydistill.reporting.html`) draw the same pictures from one implementation.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..checkpoint import load_student_model  # noqa: E402
from ..data import FolderDataset  # noqa: E402
from ..engine.logging import read_steps  # noqa: E402
from ..evaluation.evaluate import student_predictor  # noqa: E402
from ..tasks import TASKS, Task  # noqa: E402
from ..teachers import CheckpointTeacher  # noqa: E402
from .panels import image_to_uint8, panel  # noqa: E402

DPI = 110


def drawn_tasks(tasks: Mapping[str, Task]) -> list[str]:
    """The tasks a sample grid draws, in their order: those with labels (a features task has no picture to
    compare with a label)."""
    return [name for name, task in tasks.items() if task.has_labels]


def primary_panels(task_names: Sequence[str]) -> list[tuple[str, str]]:
    """``(task, primary metric)`` of each named task that has one, in the given order (a features task, whose
    name need not be a task type, has none)."""
    return [(t, TASKS.get(t).primary_metric) for t in task_names if t in TASKS and TASKS.get(t).primary_metric]


def format_number(v: float) -> str:
    """Four decimals, one for large values (RMSE in millimetres, parameter counts)."""
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


def save_figure(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (and closed, so a long report does not keep every figure in memory)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _log_scale_if_positive(ax, values: list[float]) -> None:
    """Log y-axis for losses that span a decade or more, unless a value is <= 0 (uncertainty weighting's
    terms can be negative); a narrow range reads better on a linear axis."""
    finite = [v for v in values if np.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) >= 10:
        ax.set_yscale("log")


def _steps(run: Path) -> list[dict[str, float]]:
    path = Path(run) / "steps.csv"
    return read_steps(path) if path.is_file() else []


def loss_figure(runs: dict[str, Path], terms_of: str = "student") -> Figure | None:
    """Left: total loss per step of every run. Right: each loss term ``L[task, source]`` of run ``terms_of``.

    Runs without a ``steps.csv`` are left out; None when no run has any logged step.
    """
    rows_by_run = {name: _steps(run) for name, run in runs.items()}
    rows_by_run = {name: rows for name, rows in rows_by_run.items() if rows}
    if not rows_by_run:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    totals: list[float] = []
    for name, rows in rows_by_run.items():
        pts = [(r["step"], r["loss"]) for r in rows if "loss" in r and "step" in r]
        if pts:
            axes[0].plot(*zip(*pts), label=name, lw=0.8)
            totals += [v for _, v in pts]
    axes[0].set(title="total training loss", xlabel="step")
    _log_scale_if_positive(axes[0], totals)
    if len(rows_by_run) > 1:
        axes[0].legend(fontsize=8)
    rows = rows_by_run.get(terms_of, [])
    terms: list[float] = []
    for key in sorted({k for r in rows for k in r if k.startswith("loss/")}):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        axes[1].plot(*zip(*pts), label=key[5:], lw=0.8)
        terms += [v for _, v in pts]
    if terms:
        axes[1].legend(fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no loss terms logged", ha="center", va="center", transform=axes[1].transAxes)
    _log_scale_if_positive(axes[1], terms)
    who = "distilled student" if terms_of == "student" else terms_of
    axes[1].set(title=f"{who}: loss terms L[task, source]", xlabel="step")
    fig.tight_layout()
    return fig


def plot_loss_curves(runs: dict[str, Path], path: Path) -> None:
    """Total loss per step for every run, and each loss term of the distilled student (PNG at ``path``)."""
    fig = loss_figure(runs)
    if fig is not None:
        save_figure(fig, path)


def read_validation(run: Path) -> list[dict[str, Any]]:
    """The records of ``run/val.jsonl`` (none when the run never validated)."""
    path = Path(run) / "val.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def validation_figure(runs: dict[str, Path], panels: list[tuple[str, str]] | None = None,
                      columns: int = 3, directions: dict[str, bool] | None = None) -> Figure | None:
    """Validation metrics over training (validation split, never the training images), one panel per
    ``(task, metric)``; by default the primary metric of each task. ``directions`` (metric -> higher is
    better) adds ↑ or ↓ to the titles. None when no run has a record."""
    records_by_run = {name: read_validation(run) for name, run in runs.items()}
    if panels is None:
        seen = dict.fromkeys(t for records in records_by_run.values() for r in records for t in r.get("metrics", {}))
        panels = primary_panels(list(seen))
    if not panels or not any(records_by_run.values()):
        return None
    nrows = -(-len(panels) // columns)
    cols = -(-len(panels) // nrows)  # balanced rows: 5 panels in 3 + 2, not 4 + 1
    fig, axes = plt.subplots(nrows, cols, figsize=(min(6, 14 / cols) * cols, 3.6 * nrows), squeeze=False)
    flat = axes.ravel()
    for ax, (task, metric) in zip(flat, panels):
        for name, records in records_by_run.items():
            pts = [(r["step"], r["metrics"][task][metric]) for r in records
                   if metric in r.get("metrics", {}).get(task, {})]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        arrow = {True: " ↑", False: " ↓"}.get((directions or {}).get(metric), "")
        ax.set(title=f"validation {task} {metric}{arrow}", xlabel="step")
        if len(runs) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_validation(runs: dict[str, Path], path: Path) -> None:
    """Primary validation metrics over training, as a PNG at ``path``."""
    fig = validation_figure(runs)
    if fig is not None:
        save_figure(fig, path)


WEIGHT_SMOOTHING = 10  # logged values (steps) in the trailing running mean of plot_weights


def _running_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start, so the curve keeps its length)."""
    c = np.concatenate([[0.0], np.cumsum(y)])
    hi = np.arange(1, len(y) + 1)
    lo = np.maximum(hi - window, 0)
    return (c[hi] - c[lo]) / (hi - lo)


def weights_figure(run_dir: Path) -> Figure | None:
    """Teacher weights (left) and task weights (right) per optimizer step, read from ``run_dir/steps.csv``.

    Left: every ``teacher_weight/<task>/<teacher>`` column (the mean per-sample weight the teacher-level
    strategy gave that teacher; 1.0 under static weighting), labelled ``task/teacher``. Right: every
    ``task_weight/<task>`` column (the task-level strategy's λ_t), labelled ``task``. Empty cells (value
    not logged in that step) are dropped per column, not plotted as zeros; each curve is then smoothed
    with a trailing running mean over the last ``WEIGHT_SMOOTHING`` (10) logged values, so a step that
    raises a weight shows up right away and the first points average over fewer values.

    None when there is no ``steps.csv``, or no such column or no value in them (e.g. only the header).
    """
    rows = _steps(run_dir)
    columns = sorted({c for r in rows for c in r})
    panels = (("teacher_weight/", "teacher weights (mean per-sample weight)"),
              ("task_weight/", "task weights λ_t"))
    series: list[list[tuple[str, np.ndarray, np.ndarray]]] = []
    for prefix, _ in panels:
        lines = []
        for col in sorted(c for c in columns if c.startswith(prefix)):
            pts = [(r["step"], r[col]) for r in rows if col in r and "step" in r and np.isfinite(r[col])]
            if pts:
                x, y = np.array(pts).T
                lines.append((col[len(prefix):], x, _running_mean(y, WEIGHT_SMOOTHING)))
        series.append(lines)
    if not any(series):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, (_, title), lines in zip(axes, panels, series):
        for label, x, y in lines:
            ax.plot(x, y, label=label, lw=0.9)
        if lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=f"{title} (running mean of {WEIGHT_SMOOTHING})", xlabel="step", ylabel="weight")
    fig.tight_layout()
    return fig


def plot_weights(run_dir: Path, out_png: Path) -> Path | None:
    """:func:`weights_figure` as a PNG at ``out_png``; returns it, or None (writing nothing) without weights."""
    fig = weights_figure(run_dir)
    return None if fig is None else save_figure(fig, out_png)


def strategy_names(run_dir: Path) -> tuple[str, str]:
    """``distill.teacher_weighting.name`` and ``distill.task_weighting.name`` from ``run_dir/config.yaml``."""
    try:
        distill = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("distill") or {}
    except (OSError, yaml.YAMLError):
        distill = {}
    names = []
    for key in ("teacher_weighting", "task_weighting"):
        v = distill.get(key)
        names.append(str(v.get("name", "?") if isinstance(v, dict) else v if v is not None else "?"))
    return names[0], names[1]


def _no_label_panel(shape: tuple[int, int]) -> np.ndarray:
    """A mid-grey picture with a diagonal cross: this image carries no label for the task."""
    h, w = shape
    pic = np.full((h, w, 3), 128, np.uint8)
    for i in range(max(h, w)):
        y, x = i * h // max(h, w), i * w // max(h, w)
        pic[y, x] = pic[y, w - 1 - x] = 200
    return pic


@torch.no_grad()
def samples_figure(data: FolderDataset, predictors: dict[str, tuple[Any, dict]], *, count: int = 4,
                   tasks: tuple[str, ...] | None = None, reference: str = "student",
                   relative: Mapping[str, Sequence[str]] | None = None) -> Figure:
    """Grid: per row one image of ``data``; columns: the input, then for every task its ground truth and
    each predictor's output.

    ``predictors``: name -> (images ``(B, 3, H, W)`` -> ``{task: task-space output}``, ``{task: Task}``);
    ``reference`` names the predictor whose task objects draw the ground truth. A task with a colour range
    (:meth:`Task.colour_range`: depth) is coloured on the range of the row's ground truth (else of the
    reference's prediction), except for the predictors that ``relative`` (task -> predictor names) names for
    it: their output is up to scale and shift (relative depth) and uses its own range. An image without a
    label for a task shows a grey crossed panel in its ground-truth column.
    """
    ref_tasks = predictors[reference][1]
    relative = relative or {}
    shown = [t for t in (tasks or drawn_tasks(ref_tasks)) if t in ref_tasks and ref_tasks[t].has_labels
             and t in data.tasks]
    columns: list[tuple[str, str, str]] = [("input", "", "")]
    for task in shown:
        columns.append((f"GT {task}", "gt", task))
        columns += [(f"{who} {task}", who, task) for who, (_, tasks_of) in predictors.items() if task in tasks_of]
    count = max(1, min(count, len(data)))
    active = {who for _, who, _ in columns if who not in ("", "gt")}
    h, w = data[0]["image"].shape[-2:]
    width = min(2.6, max(1.7, 12 / len(columns)))  # inches per panel: few columns get bigger panels
    title_band = 0.25  # inches above the first row for the column titles
    height = count * width * h / w * 1.05 + title_band
    fig, axes = plt.subplots(count, len(columns), figsize=(width * len(columns) * 1.05, height), squeeze=False)
    # fixed margins instead of tight_layout: the panels have no tick labels, and it halves the drawing time
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=1 - title_band / height, wspace=0.05,
                        hspace=0.05)
    for row in range(count):
        sample = data[row * max(1, len(data) // count)]
        image = sample["image"]
        preds = {who: fn(image[None]) for who, (fn, _) in predictors.items() if who in active}
        ranges = {task: ref_tasks[task].colour_range(sample["targets"][task] if sample["valid"].get(task)
                                                     else preds[reference][task][0]) for task in shown}
        for col, (title, who, task) in enumerate(columns):
            ax = axes[row, col]
            if who == "":
                pic = image_to_uint8(image)
            elif who == "gt" and not sample["valid"].get(task, True):
                pic = _no_label_panel(tuple(image.shape[-2:]))
            else:
                tasks_of = predictors[reference if who == "gt" else who][1]
                value = sample["targets"][task] if who == "gt" else preds[who][task][0]
                shared = ranges[task] is not None and who not in relative.get(task, ())
                kw = {"vmin": ranges[task][0], "vmax": ranges[task][1]} if shared else {}
                pic = panel(tasks_of[task], value, image, **kw)
            ax.imshow(pic)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=7)
    return fig


def plot_samples(test_dir: Path, predictors: dict[str, tuple[Any, dict]], path: Path, image_size,
                 count: int = 4) -> None:
    """Grid: input, ground truth and every model's output of every drawn task for a few test images."""
    shown = drawn_tasks(predictors["student"][1])
    data = FolderDataset(test_dir, shown, image_size=image_size)
    save_figure(samples_figure(data, predictors, count=count), path)


def _metric_table(metrics: dict[str, Any], task: str, keys: list[str]) -> list[str]:
    rows = [f"| model | {' | '.join(keys)} |", "|---|" + "---:|" * len(keys)]
    entries = [(f"teacher `{n}`", m[task]) for n, m in metrics["teachers"].items() if task in m]
    entries += [("**distilled student**", metrics["student"][task]),
                ("label-only student", metrics["label_only"][task])]
    for name, values in entries:
        cells = (format_number(values[k]) if k in values else "n/a" for k in keys)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def _task_sections(metrics: dict[str, Any], tasks: Mapping[str, Task]) -> list[str]:
    """Per task in the student's test metrics: its core metrics and its per-class metrics, as the task says."""
    lines: list[str] = []
    for name, values in metrics["student"].items():
        task = tasks.get(name)
        if task is None or not task.report_metrics:
            continue
        lines += [f"## {task.title or name} (test split)", "", *_metric_table(metrics, name, list(task.report_metrics)),
                  ""]
        if task.per_class_prefix:
            classes = sorted(k for k in values if k.startswith(task.per_class_prefix))
            lines += [f"### Per-class {task.per_class_prefix.rstrip('/')}", "", *_metric_table(metrics, name, classes),
                      ""]
    return lines


def write_demo_report(out: Path, metrics: dict[str, Any], test_dir: Path, teacher_runs: dict[str, Path]) -> Path:
    """``out/report.md`` with its figures beside it: every model on the test split, Δm, speed, weights, curves."""
    runs = {"student": out / "student", "label_only": out / "label_only", **teacher_runs}
    plot_loss_curves(runs, out / "loss_curves.png")
    plot_validation({k: runs[k] for k in ("student", "label_only")}, out / "validation.png")
    weights_png = plot_weights(out / "student", out / "weights.png")
    teacher_strategy, task_strategy = strategy_names(out / "student")
    predictors: dict[str, tuple[Any, dict]] = {}
    for name, run in teacher_runs.items():
        teacher = CheckpointTeacher(name, run)
        predictors[name] = (teacher.predict, {t: teacher.task_objects[t] for t in teacher.tasks})
    for who in ("student", "label_only"):
        model, tasks, _ = load_student_model(out / who)
        predictors[who] = (student_predictor(model, tasks), tasks)
    student_tasks = predictors["student"][1]
    size = tuple(metrics["speed"]["image_size"])
    plot_samples(test_dir, predictors, out / "samples.png", size)

    s = metrics["speed"]
    lines = [
        "# polydistill demo report", "",
        f"Preset `{metrics['preset']['name']}` at {size[0]}×{size[1]}; test split: "
        f"{metrics['data']['test']['images']} held-out images (never used for training or model selection).", "",
        *_task_sections(metrics, student_tasks),
        "## Multi-task summary", "",
        f"- Δm of the distilled student vs the teachers: **{metrics['delta_m_vs_teachers']:+.2f} %** "
        f"(label-only student: {metrics['delta_m_label_only_vs_teachers']:+.2f} %). "
        f"Convention: {metrics['delta_m']['convention']}; baseline: {metrics['delta_m']['baseline']}.",
        "- Retention (student/teacher, ≥ 1 means at least as good): "
        + ", ".join(f"{t}.{m} {v:.3f}" for t, ms in metrics["retention"]["student"].items() for m, v in ms.items()),
        "", "## Speed and size", "",
        f"Batch-1 latency, {s['runtime']}, median of interleaved rounds:", "",
        "| model | params | latency (ms) |", "|---|---:|---:|",
        f"| student | {s['student_params'] / 1e6:.2f} M | {s['student_ms']:.2f} |",
        *[f"| {n} | {s['teacher_params'][n] / 1e6:.2f} M | {ms:.2f} |" for n, ms in s["per_teacher_ms"].items()],
        "", f"Teachers together / student: **{s['ratio']:.1f}×** faster.", "",
        "## Teacher and task weights over training", "",
        f"The distilled student used teacher weighting `{teacher_strategy}` and task weighting "
        f"`{task_strategy}`"
        + (f"; curves are trailing running means over {WEIGHT_SMOOTHING} logged values." if weights_png
           else "; no weights were logged in its steps.csv."), "",
        *(["![teacher and task weights](weights.png)", ""] if weights_png else []),
        "## Run", "",
        f"Wall time {metrics['wall_s']:.0f} s (" + ", ".join(f"{k} {v:.0f}" for k, v in metrics["timings"].items())
        + f"); peak memory {metrics['memory']['peak_rss_mb']:.0f} MiB.", "",
        "![loss curves](loss_curves.png)", "", "![validation](validation.png)", "", "![samples](samples.png)", "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
