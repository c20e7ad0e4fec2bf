"""The demo report: Markdown tables plus PNG plots (loss curves, validation curves, a sample grid)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from .data import FolderDataset  # noqa: E402
from .engine.logging import read_steps  # noqa: E402
from .visualise import image_to_uint8, panel  # noqa: E402


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


def plot_loss_curves(runs: dict[str, Path], path: Path) -> None:
    """Total loss per step for every run, and each loss term of the distilled student."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, run in runs.items():
        rows = read_steps(run / "steps.csv")
        axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name, lw=0.8)
    axes[0].set(title="total training loss", xlabel="step", yscale="log")
    axes[0].legend()
    rows = read_steps(runs["student"] / "steps.csv")
    for key in sorted({k for r in rows for k in r if k.startswith("loss/")}):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        axes[1].plot(*zip(*pts), label=key[5:], lw=0.8)
    axes[1].set(title="distilled student: loss terms L[task, source]", xlabel="step", yscale="log")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_validation(runs: dict[str, Path], path: Path) -> None:
    """Primary validation metrics over training (validation split, never the training images)."""
    records_by_run = {name: [json.loads(ln) for ln in (run / "val.jsonl").read_text().splitlines() if ln]
                      for name, run in runs.items()}
    seen = {t for records in records_by_run.values() for r in records for t in r["metrics"]}
    panels = [(t, m) for t, m in (("depth", "abs_rel"), ("semseg", "miou"), ("detection", "map50")) if t in seen]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4), squeeze=False)
    axes = axes[0]
    for name, records in records_by_run.items():
        for ax, (task, metric) in zip(axes, panels):
            pts = [(r["step"], r["metrics"][task][metric]) for r in records if task in r["metrics"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
                ax.set(title=f"validation {task} {metric}", xlabel="step")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


WEIGHT_SMOOTHING = 10  # logged values (steps) in the trailing running mean of plot_weights


def _running_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start, so the curve keeps its length)."""
    c = np.concatenate([[0.0], np.cumsum(y)])
    hi = np.arange(1, len(y) + 1)
    lo = np.maximum(hi - window, 0)
    return (c[hi] - c[lo]) / (hi - lo)


def plot_weights(run_dir: Path, out_png: Path) -> Path | None:
    """Teacher weights (left) and task weights (right) per optimizer step, read from ``run_dir/steps.csv``.

    Left: every ``teacher_weight/<task>/<teacher>`` column (the mean per-sample weight the teacher-level
    strategy gave that teacher; 1.0 under static weighting), labelled ``task/teacher``. Right: every
    ``task_weight/<task>`` column (the task-level strategy's λ_t), labelled ``task``. Empty cells (value
    not logged in that step) are dropped per column, not plotted as zeros; each curve is then smoothed
    with a trailing running mean over the last ``WEIGHT_SMOOTHING`` (10) logged values, so a step that
    raises a weight shows up right away and the first points average over fewer values.

    Returns ``out_png``, or None, writing nothing, when the CSV has no such column or no value in them
    (e.g. only the header).
    """
    path = Path(run_dir) / "steps.csv"
    if not path.exists():
        return None
    rows = read_steps(path)
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
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _strategy_names(run_dir: Path) -> tuple[str, str]:
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


@torch.no_grad()
def plot_samples(test_dir: Path, predictors: dict[str, tuple[Any, dict]], path: Path, image_size,
                 count: int = 4) -> None:
    """Grid: input, ground truth and every model's depth, segmentation and boxes for a few test images."""
    shown = [t for t in ("depth", "semseg", "detection") if t in predictors["student"][1]]
    data = FolderDataset(test_dir, shown, image_size=image_size)
    columns: list[tuple[str, str, str]] = [("input", "", "")]
    for task in shown:
        columns.append((f"GT {task}", "gt", task))
        columns += [(f"{who} {task}", who, task) for who, (_, tasks) in predictors.items() if task in tasks]
    fig, axes = plt.subplots(count, len(columns), figsize=(1.6 * len(columns), 1.35 * count), squeeze=False)
    for row in range(count):
        sample = data[row * max(1, len(data) // count)]
        image = sample["image"]
        preds = {who: fn(image[None]) for who, (fn, _) in predictors.items()}
        gt_depth = sample["targets"]["depth"]
        valid = gt_depth[gt_depth > 0]
        vmin, vmax = (float(valid.min()), float(valid.max())) if valid.numel() else (None, None)
        for col, (title, who, task) in enumerate(columns):
            ax = axes[row, col]
            if who == "":
                pic = image_to_uint8(image)
            else:
                tasks = predictors[who][1] if who != "gt" else predictors["student"][1]
                value = sample["targets"][task] if who == "gt" else preds[who][task][0]
                kw = {"vmin": vmin, "vmax": vmax} if task == "depth" else {}
                pic = panel(tasks[task], value, image if tasks[task].target_is_label else None, **kw)
            ax.imshow(pic)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _metric_table(metrics: dict[str, Any], task: str, keys: list[str]) -> list[str]:
    rows = [f"| model | {' | '.join(keys)} |", "|---|" + "---:|" * len(keys)]
    entries = [(f"teacher `{n}`", m[task]) for n, m in metrics["teachers"].items() if task in m]
    entries += [("**distilled student**", metrics["student"][task]),
                ("label-only student", metrics["label_only"][task])]
    for name, values in entries:
        rows.append(f"| {name} | " + " | ".join(_fmt(values[k]) if k in values else "n/a" for k in keys) + " |")
    return rows


def write_demo_report(out: Path, metrics: dict[str, Any], test_dir: Path, teacher_runs: dict[str, Path]) -> Path:
    from .evaluation.evaluate import student_predictor
    from .evaluation.report import load_student
    from .teachers import CheckpointTeacher

    runs = {"student": out / "student", "label_only": out / "label_only", **teacher_runs}
    plot_loss_curves(runs, out / "loss_curves.png")
    plot_validation({k: runs[k] for k in ("student", "label_only")}, out / "validation.png")
    weights_png = plot_weights(out / "student", out / "weights.png")
    teacher_strategy, task_strategy = _strategy_names(out / "student")
    predictors: dict[str, tuple[Any, dict]] = {}
    for name, run in teacher_runs.items():
        teacher = CheckpointTeacher(name, run)
        predictors[name] = (teacher.predict, {t: teacher.task_objects[t] for t in teacher.tasks})
    for who in ("student", "label_only"):
        model, tasks, _ = load_student(out / who)
        predictors[who] = (student_predictor(model, tasks), tasks)
    size = tuple(metrics["speed"]["image_size"])
    plot_samples(test_dir, predictors, out / "samples.png", size)

    s = metrics["speed"]
    classes = sorted(k for k in metrics["student"]["semseg"] if k.startswith("iou/"))
    ap_classes = sorted(k for k in metrics["student"].get("detection", {}) if k.startswith("ap50/"))
    lines = [
        "# polydistill demo report", "",
        f"Preset `{metrics['preset']['name']}` at {size[0]}×{size[1]}; test split: "
        f"{metrics['data']['test']['images']} held-out images (never used for training or model selection).", "",
        "## Depth (test split)", "", *_metric_table(metrics, "depth", ["abs_rel", "rmse", "delta1"]), "",
        "## Semantic segmentation (test split)", "", *_metric_table(metrics, "semseg", ["miou", "pixel_acc"]), "",
        "### Per-class IoU", "", *_metric_table(metrics, "semseg", classes), "",
        *(["## Detection (test split)", "", *_metric_table(metrics, "detection", ["map50", "map", "map75"]), "",
           "### Per-class AP@0.5", "", *_metric_table(metrics, "detection", ap_classes), ""]
          if "detection" in metrics["student"] else []),
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
