"""``polydistill report``: one self-contained HTML page for a training run or a demo output.

Why one file: a report is mailed, attached to an issue or opened from a CI artifact, and must look the same
everywhere, offline. So every plot is a PNG data URI, the style sheet is inline, and the page has no script
and no reference to any other file or URL. Every string (config values, class and teacher names, error
messages) goes through Jinja2's autoescaping, so a name such as ``<b>`` is shown, never interpreted.

Two kinds of folder are recognised:

* a **demo output** (``metrics.json``, ``student/``, ``label_only/``): teachers, distilled and label-only
  student on the test split, Δm and retention, the speed table, training curves and a sample grid with
  every teacher (the teachers are found through ``student/config.yaml``);
* a **training run** (``config.yaml``, ``steps.csv``, ``val.jsonl``, ``summary.json``, ``checkpoints/``):
  configuration, best and last validation metrics, loss terms, teacher and task weights and validation
  metrics over time, and a sample grid on the config's validation split (or ``--data``).

A section whose data is missing (an interrupted run, a deleted split, a teacher that cannot be loaded
offline) says so in the page instead of failing. Building the page runs the student (and, when asked, the
teachers) on four images on the CPU; nothing else is computed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import yaml

from .. import __version__
from ..checkpoint import load_student_model
from ..config import TeacherConfig
from ..data import FolderDataset
from ..engine.logging import read_steps
from ..errors import DataError, PolydistillError
from ..evaluation.evaluate import student_predictor
from ..evaluation.speed import count_parameters
from ..tasks import TASKS, Task
from ..teachers import DEFAULT_SOURCE, CheckpointTeacher, build_teacher, parse_source
from .figures import (
    WEIGHT_SMOOTHING,
    drawn_tasks,
    figure_png,
    format_number,
    loss_figure,
    read_validation,
    samples_figure,
    strategy_names,
    validation_figure,
    weights_figure,
)

SAMPLE_COUNT = 4

# ------------------------------------------------------------------------------------------ page content


@dataclass
class Para:
    text: str
    kind: ClassVar[str] = "para"


@dataclass
class Heading:
    text: str
    kind: ClassVar[str] = "heading"


@dataclass
class Note:
    """Why a part of the page is missing (no data, a teacher that could not be loaded, ...)."""

    text: str
    kind: ClassVar[str] = "note"


#: a table cell that is a number, perhaps with a unit ("0.2117", "-5.80 %", "1.01 M", "44.7 images/s", "—")
NUMERIC = re.compile(r"^([-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?( ?(%|M|s|ms|MiB|×|images/s))?|—|NaN)$")


def is_numeric(text: Any) -> bool:
    return bool(NUMERIC.match(str(text)))


@dataclass
class Table:
    """Text cells are left-aligned and wrap; numeric cells are right-aligned (so digits line up)."""

    columns: list[str]
    rows: list[list[str]]
    strong: tuple[int, ...] = ()  # rows drawn in bold (the distilled student)
    caption: str = ""
    kind: ClassVar[str] = "table"

    def numeric_columns(self) -> set[int]:
        """Columns whose cells are all numbers (their header is right-aligned too)."""
        return {i for i in range(1, len(self.columns)) if self.rows and all(is_numeric(r[i]) for r in self.rows)}


@dataclass
class Image:
    uri: str
    alt: str
    caption: str = ""
    kind: ClassVar[str] = "image"


@dataclass
class Code:
    text: str
    kind: ClassVar[str] = "code"


@dataclass
class Swatches:
    """A colour legend: (label, ``#rrggbb``)."""

    items: list[tuple[str, str]]
    kind: ClassVar[str] = "swatches"


@dataclass
class Details:
    """A collapsed part (long config, per-class tables)."""

    summary: str
    blocks: list[Any]
    kind: ClassVar[str] = "details"


@dataclass
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


@dataclass
class Report:
    title: str
    facts: list[tuple[str, str]]
    sections: list[Section]


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ report.title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d2330; background: #f4f5f7; line-height: 1.45; font-size: 15px; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; min-height: 100vh; }
h1 { font-size: 1.7em; margin: 0 0 .3em; }
h2 { font-size: 1.3em; margin: 1.8em 0 .6em; padding-bottom: .25em; border-bottom: 2px solid #dde1e8; }
h3 { font-size: 1.05em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; margin: .4em 0 1em; font-size: .92em; }
th, td { border: 1px solid #d5d9e0; padding: 4px 10px; text-align: left; }
th { background: #eef1f5; white-space: nowrap; }
td { overflow-wrap: anywhere; max-width: 760px; }
td.n { text-align: right; white-space: nowrap; }
th.n { text-align: right; }
tr.strong td { font-weight: 600; background: #eef7ee; }
p.tcap { font-weight: 600; margin: 1em 0 .3em; }
table.facts th { font-weight: 600; }
.scroll { overflow-x: auto; }
figure { margin: .6em 0 1.4em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6eb; display: block; }
figcaption { color: #4d5566; font-size: .9em; margin-top: .3em; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: 6px 12px; margin: .6em 0; }
pre { background: #f6f8fa; border: 1px solid #e3e6eb; padding: 10px; overflow-x: auto; font-size: .85em; }
details { margin: .4em 0 1em; }
summary { cursor: pointer; color: #2456a6; }
nav { font-size: .92em; margin: .8em 0 0; }
nav a { margin-right: 1.1em; color: #2456a6; text-decoration: none; }
.swatches span { display: inline-block; margin: 0 14px 4px 0; font-size: .9em; }
.swatches i { display: inline-block; width: 14px; height: 14px; vertical-align: -2px; margin-right: 5px;
              border: 1px solid #888; }
footer { margin-top: 3em; color: #6b7385; font-size: .85em; }
</style>
</head>
<body>
<main>
<h1>{{ report.title }}</h1>
<table class="facts">
{% for key, value in report.facts %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>
<nav>{% for s in report.sections %}<a href="#{{ s.anchor }}">{{ s.title }}</a>{% endfor %}</nav>
{% macro render(blocks) %}{% for b in blocks %}
{% if b.kind == "para" %}<p>{{ b.text }}</p>
{% elif b.kind == "heading" %}<h3>{{ b.text }}</h3>
{% elif b.kind == "note" %}<p class="note">{{ b.text }}</p>
{% elif b.kind == "table" %}{% if b.caption %}<p class="tcap">{{ b.caption }}</p>{% endif %}
{%- set num = b.numeric_columns() %}<div class="scroll"><table>
<tr>{% for c in b.columns %}<th{% if loop.index0 in num %} class="n"{% endif %}>{{ c }}</th>{% endfor %}</tr>
{% for row in b.rows %}<tr{% if loop.index0 in b.strong %} class="strong"{% endif %}>
{%- for v in row %}<td{% if v is numeric %} class="n"{% endif %}>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table></div>
{% elif b.kind == "image" %}<figure><img src="{{ b.uri }}" alt="{{ b.alt }}">
{%- if b.caption %}<figcaption>{{ b.caption }}</figcaption>{% endif %}</figure>
{% elif b.kind == "code" %}<pre>{{ b.text }}</pre>
{% elif b.kind == "swatches" %}<p class="swatches">{% for label, colour in b.items %}
<span><i style="background: {{ colour }}"></i>{{ label }}</span>{% endfor %}</p>
{% elif b.kind == "details" %}<details><summary>{{ b.summary }}</summary>{{ render(b.blocks) }}</details>
{% endif %}{% endfor %}{% endmacro %}
{% for s in report.sections %}
<section id="{{ s.anchor }}">
<h2>{{ s.title }}</h2>
{{ render(s.blocks) }}
</section>
{% endfor %}
<footer>Written by polydistill {{ version }} on {{ created }}. Self-contained: every picture is embedded in
this file.</footer>
</main>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_ENV.tests["numeric"] = is_numeric


def render_html(report: Report) -> str:
    """The page as one HTML string (autoescaped; no script, no external resource)."""
    created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return _ENV.from_string(TEMPLATE).render(report=report, version=__version__, created=created)


# ------------------------------------------------------------------------------------------------ helpers


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else format_number(v)
    return str(v)


def _figure(fig, alt: str, caption: str, missing: str) -> Image | Note:
    if fig is None:
        return Note(missing)
    return Image("data:image/png;base64," + base64.b64encode(figure_png(fig)).decode("ascii"), alt, caption)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _read_yaml(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(parsed mapping or None, raw text or the reason it could not be read)."""
    try:
        text = path.read_text()
    except OSError as exc:
        return None, f"cannot read {path}: {exc}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, f"{path} is not valid YAML: {exc}"
    return (data if isinstance(data, dict) else None), text


def _directions() -> dict[str, bool]:
    out: dict[str, bool] = {"map75": True}  # reported, though not one of Δm's metrics
    for name in TASKS:
        out.update(TASKS.get(name).metric_directions)
    return out


def _core_and_per_class(metrics: list[dict[str, float]]) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    for m in metrics:
        keys += [k for k in m if k not in keys]
    return [k for k in keys if "/" not in k], sorted(k for k in keys if "/" in k)


def _header(metric: str, directions: dict[str, bool]) -> str:
    return f"{metric} {'↑' if directions[metric] else '↓'}" if metric in directions else metric


def _metric_tables(task: str, entries: list[tuple[str, dict[str, float]]], strong: tuple[int, ...] = (),
                   first: str = "model") -> list[Any]:
    """One table of the task's core metrics (one row per entry) and its per-class metrics, collapsed."""
    directions = _directions()
    core, per_class = _core_and_per_class([values for _, values in entries])
    blocks: list[Any] = [Table([first, *(_header(k, directions) for k in core)],
                               [[name, *(_num(values.get(k)) for k in core)] for name, values in entries],
                               strong=strong, caption=task)]
    if per_class:
        blocks.append(Details(f"{task}: per-class metrics ({len(per_class)})", [Table(
            [first, *per_class], [[name, *(_num(values.get(k)) for k in per_class)] for name, values in entries],
            strong=strong)]))
    return blocks


def _yaml_blocks(config: dict[str, Any] | None, text: str, label: str) -> list[Any]:
    if config is None:
        return [Note(f"no readable {label}: {text}")]
    return [Details(f"the full {label}", [Code(text)])]


def _config_facts(config: dict[str, Any]) -> Table:
    data, student, train = config.get("data") or {}, config.get("student") or {}, config.get("train") or {}
    teacher_weighting, task_weighting = (_strategy_name((config.get("distill") or {}).get(k))
                                         for k in ("teacher_weighting", "task_weighting"))
    teachers = config.get("teachers") or []
    rows = [
        ["tasks", ", ".join(config.get("tasks") or {}) or "—"],
        ["student", f"{student.get('backbone', '?')}, neck {student.get('neck_channels', '?')}, "
                    f"layout {student.get('layout', 'plain')}"],
        ["teachers", ", ".join(f"{t.get('name')} ({t['source'] + ': ' if t.get('source') else ''}{t.get('path')})"
                               for t in teachers) or "none (labels only)"],
        ["weighting", f"teachers: {teacher_weighting}; tasks: {task_weighting}"],
        ["training data", str(data.get("train", "—"))],
        ["validation data", str(data.get("val") or "none")],
        ["image size", f"{data.get('height', '?')}×{data.get('width', '?')}, batch {data.get('batch_size', '?')}"],
        ["schedule", (f"{train['max_steps']} steps" if train.get("max_steps") else f"{train.get('epochs', '?')} epochs")
         + f" at lr {train.get('lr', '?')}, validation every {train.get('val_every') or 'epoch'}"
         + (" steps" if train.get("val_every") else "")],
    ]
    return Table(["setting", "value"], rows, caption="main settings")


def _strategy_name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name", "?"))
    return "static/equal (default)" if value is None else str(value)


# ---------------------------------------------------------------------------------------------- samples

TeacherSource = tuple[str, Callable[[], Any]]  # (name, build the teacher)


def _sample_blocks(split: Path | None, split_label: str, *, student: tuple[Any, dict, dict],
                   extra_students: dict[str, Path] | None = None, teachers: list[TeacherSource] = (),
                   teachers_note: str | None = None) -> list[Any]:
    """The sample grid (one figure per drawn task) of ``student`` (model, tasks, spec), the students in
    ``extra_students`` (run folders) and the teachers."""
    if split is None:
        return [Note(f"no sample grid: no {split_label} is known; pass --data FOLDER")]
    if not Path(split).is_dir():
        return [Note(f"no sample grid: the {split_label} folder {split} does not exist any more; "
                     "pass --data FOLDER")]
    model, tasks, spec = student
    shown = drawn_tasks(tasks)
    if not shown:
        return [Note(f"no sample grid: the student's tasks ({', '.join(tasks)}) have no picture to draw")]
    size = spec.input_size
    try:
        data = FolderDataset(split, shown, image_size=tuple(size) if size else None)
    except PolydistillError as exc:
        return [Note(f"no sample grid: {exc}")]
    if len(data) == 0:
        return [Note(f"no sample grid: {split} holds no image")]
    predictors: dict[str, tuple[Any, dict]] = {"student": (student_predictor(model, tasks), tasks)}
    notes: list[Any] = [Note(teachers_note)] if teachers_note else []
    for name, path in (extra_students or {}).items():
        try:
            other, other_tasks, _ = load_student_model(path)
            predictors[name] = (student_predictor(other, other_tasks), other_tasks)
        except (PolydistillError, OSError) as exc:
            notes.append(Note(f"'{name}' is not drawn: {exc}"))
    relative: dict[str, list[str]] = {t: [] for t in shown}
    for name, build in teachers:
        try:  # any failure (missing files, no network for a hub model, a missing runtime) only drops the teacher
            teacher = build().to("cpu")
        except Exception as exc:  # noqa: BLE001
            notes.append(Note(f"teacher '{name}' is not drawn: it could not be loaded "
                              f"({type(exc).__name__}: {exc})"))
            continue
        task_objects = getattr(teacher, "task_objects", None) or tasks
        predictors[name] = (teacher.predict, {t: task_objects[t] for t in teacher.tasks if t in shown})
        for t in teacher.tasks:
            if t in shown and tasks[t].relative_output(teacher.output_kind(t)):
                relative[t].append(name)
    blocks: list[Any] = [Para(f"{min(SAMPLE_COUNT, len(data))} images of the {split_label} at {split}, evenly "
                              f"spaced; columns: the input, the ground truth, then each model. A grey crossed "
                              f"panel means the image has no label for that task."), *notes]
    for task in shown:
        blocks.append(Heading(tasks[task].title or task))
        legend = tasks[task].legend()
        if legend:
            blocks.append(Swatches([(n, "#" + bytes(c).hex()) for n, c in legend]))
        fig = samples_figure(data, predictors, count=SAMPLE_COUNT, tasks=(task,), relative=relative)
        blocks.append(_figure(fig, f"{task} samples", _caption(task, tasks[task], relative[task]),
                              f"no {task} samples"))
    return blocks


def _caption(name: str, task: Task, relative: list[str]) -> str:
    """The task's caption, saying which models' pictures take their own range (relative outputs)."""
    if not relative:
        return task.caption
    return (task.caption.removesuffix(".") + f"; {', '.join(relative)} predict(s) relative {name}, drawn on its "
            "own range.")


def _load_student(run_dir: Path) -> tuple[tuple[Any, dict, dict] | None, str]:
    """(model, tasks, spec) of a run's best (else last) checkpoint, or None and the reason."""
    try:
        return load_student_model(run_dir), ""
    except (PolydistillError, OSError) as exc:
        return None, str(exc)


def _guarded(title: str, build: Callable[[], list[Any]]) -> Section:
    """A section of data read from files written by other versions: missing keys become a note."""
    try:
        return Section(title, build())
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return Section(title, [Note(f"this section could not be built: missing or malformed data "
                                    f"({type(exc).__name__}: {exc})")])


# ------------------------------------------------------------------------------------------- train run


def _teacher_sources(config: dict[str, Any], tasks: dict) -> list[TeacherSource]:
    """Builders of the run's teachers, from its config (nothing is loaded until a builder is called)."""

    classes = {name: list(task.class_names) for name, task in tasks.items() if task.target_is_label}
    return [(str(t.get("name")), lambda t=t: build_teacher(TeacherConfig.model_validate(t), classes))
            for t in config.get("teachers") or [] if isinstance(t, dict)]


def train_report(run_dir: Path, *, data: Path | None = None, teachers: bool = True) -> Report:
    """The page of one ``polydistill train`` run directory."""
    run_dir = Path(run_dir)
    config, config_text = _read_yaml(run_dir / "config.yaml")
    summary = _read_json(run_dir / "summary.json")
    summary = summary if isinstance(summary, dict) else None
    log_problems: list[Any] = []
    try:
        steps = read_steps(run_dir / "steps.csv") if (run_dir / "steps.csv").is_file() else []
    except ValueError as exc:
        steps = []
        log_problems.append(Note(f"{run_dir / 'steps.csv'} is malformed ({exc}); its numbers are left out"))
    try:
        records = read_validation(run_dir)
    except ValueError as exc:
        records = []
        log_problems.append(Note(f"{run_dir / 'val.jsonl'} is malformed ({exc}); its records are left out"))
    student, student_error = _load_student(run_dir)

    last_step = int(steps[-1]["step"]) if steps and "step" in steps[-1] else None
    facts = [("run", str(run_dir.resolve())), ("kind", "training run (polydistill train)"),
             ("steps", _num(summary["steps"]) if summary else f"{_num(last_step)} (logged; no summary.json)")]
    if summary:
        facts += [("best step", _num(summary.get("best_step"))),
                  ("training time", f"{summary.get('train_seconds', float('nan')):.1f} s")]
    sections: list[Section] = []

    blocks: list[Any] = [*log_problems, _config_facts(config)] if config else log_problems
    sections.append(Section("Configuration", blocks + _yaml_blocks(config, config_text, "config.yaml")))

    def validation() -> list[Any]:
        if summary and (summary.get("best_metrics") or summary.get("last_metrics")):
            best, last = summary.get("best_metrics") or {}, summary.get("last_metrics") or {}
            out: list[Any] = [Para("Metrics on the validation split at the best step (model selection: Δm of the "
                                   "primary metrics against the first validation) and at the last validation.")]
            last_step_val = records[-1]["step"] if records else summary.get("steps")
            for task in dict.fromkeys([*best, *last]):
                out += _metric_tables(task, [(f"best (step {summary.get('best_step')})", best.get(task, {})),
                                             (f"last (step {last_step_val})", last.get(task, {}))], first="checkpoint")
            return out
        if records:
            rec = records[-1]
            out = [Note("no summary.json: the run did not finish (interrupted or still running); the last "
                        "validation record of val.jsonl is shown")]
            for task, values in rec.get("metrics", {}).items():
                out += _metric_tables(task, [(f"step {rec['step']}", values)], first="validation")
            return out
        return [Note("no validation metrics: the config has no data.val, or the run stopped before its first "
                     "validation")]

    sections.append(_guarded("Validation metrics", validation))

    def speed() -> list[Any]:
        rows = []
        if student is not None:
            rows.append(["student parameters", f"{count_parameters(student[0]) / 1e6:.3f} M"])
        if summary:
            rows += [["training throughput", f"{summary.get('samples_per_second', float('nan')):.1f} images/s"],
                     ["training time", f"{summary.get('train_seconds', float('nan')):.1f} s"],
                     ["skipped steps (no label, no teacher output)", _num(summary.get("skipped_steps", 0))]]
        elif steps:
            speeds = [r["samples_per_s"] for r in steps if "samples_per_s" in r]
            if speeds:
                rows.append(["training throughput (median of logged steps)",
                             f"{sorted(speeds)[len(speeds) // 2]:.1f} images/s"])
        out: list[Any] = [Table(["measure", "value"], rows)] if rows else [Note("no speed data: no summary.json or "
                                                                         "steps.csv")]
        out.append(Para("Batch-1 inference latency is not measured here: `polydistill eval RUN_DIR --data FOLDER "
                        "--height H --width W` and `polydistill bench latency` measure it; the demo's report has "
                        "the student-versus-teachers table."))
        return out

    sections.append(_guarded("Speed", speed))

    def curves() -> list[Any]:
        name = run_dir.name or "run"
        directions = _directions()
        panels = [(t, m) for r in records[-1:] for t, ms in r.get("metrics", {}).items() for m in ms
                  if "/" not in m and m in directions]
        return [
            _figure(loss_figure({name: run_dir}, terms_of=name), "loss curves",
                    "Left: total training loss per step. Right: every loss term L[task, source] (source: gt or a "
                    "teacher), as logged in steps.csv.", "no loss curves: steps.csv is missing or empty"),
            _figure(weights_figure(run_dir), "teacher and task weights",
                    f"Teacher weights (left) and task weights (right) per step; trailing running mean over "
                    f"{WEIGHT_SMOOTHING} logged values.",
                    "no teacher or task weights were logged in steps.csv"),
            _figure(validation_figure({name: run_dir}, panels=panels or None, columns=4, directions=directions),
                    "validation metrics", "Validation metrics over training (↑ higher is better, ↓ lower is better).",
                    "no validation curves: val.jsonl is missing or empty"),
        ]

    sections.append(_guarded("Training curves", curves))

    if student is None:
        sample_blocks: list[Any] = [Note(f"no sample grid: the student cannot be loaded: {student_error}")]
    else:
        val = (config or {}).get("data", {}).get("val") if isinstance((config or {}).get("data"), dict) else None
        split = Path(data) if data else (Path(val) if val else None)
        has_teachers = bool((config or {}).get("teachers"))
        note = None
        if has_teachers and not teachers:
            note = ("the teachers are not drawn: the report written at the end of training runs no teacher; "
                    "`polydistill report RUN_DIR` draws them too")
        sample_blocks = _sample_blocks(split, "--data folder" if data else "validation split (data.val)",
                                       student=student, teachers_note=note,
                                       teachers=_teacher_sources(config, student[1]) if teachers and
                                       has_teachers else [])
    sections.append(Section("Samples", sample_blocks))
    return Report(f"polydistill training report — {run_dir.resolve().name}", facts, sections)


# ------------------------------------------------------------------------------------------------ demo


def _delta(v: Any) -> str:
    return f"{v:+.2f} %" if isinstance(v, (int, float)) else "—"


def demo_report(out: Path, metrics: dict[str, Any], *, data: Path | None = None, teachers: bool = True) -> Report:
    """The page of a ``polydistill demo`` output folder (``metrics.json``, ``student/``, ``label_only/``)."""

    out = Path(out)
    config, config_text = _read_yaml(out / "student" / "config.yaml")
    teacher_runs = {str(t["name"]): Path(t["path"]) for t in (config or {}).get("teachers") or []
                    if isinstance(t, dict) and t.get("path")
                    and parse_source(str(t["path"]), t.get("source"))[0] == DEFAULT_SOURCE}
    preset = metrics.get("preset") or {}
    speed = metrics.get("speed") or {}
    test = (metrics.get("data") or {}).get("test") or {}
    facts = [("output", str(out.resolve())), ("kind", f"polydistill demo, preset '{preset.get('name', '?')}'"),
             ("image size", "×".join(str(v) for v in speed.get("image_size", [])) or "—"),
             ("test split", f"{test.get('images', '?')} held-out images (never used for training or selection)"),
             ("Δm vs teachers", _delta(metrics.get("delta_m_vs_teachers"))),
             ("speed", f"{speed['ratio']:.1f}× faster than the teachers together" if "ratio" in speed else "—")]
    sections: list[Section] = []

    def test_metrics() -> list[Any]:
        blocks: list[Any] = [Para("Every model on the test split. The distilled student learned from the teachers "
                                  "plus the pool's few labels; the label-only student from the labels alone, with "
                                  "the same budget.")]
        for task in metrics["student"]:
            entries = [(f"teacher {n}", m[task]) for n, m in metrics["teachers"].items() if task in m]
            strong = (len(entries),)
            entries += [("distilled student", metrics["student"][task]),
                        ("label-only student", (metrics.get("label_only") or {}).get(task, {}))]
            blocks += _metric_tables(task, entries, strong=strong)
        return blocks

    sections.append(_guarded("Test metrics", test_metrics))

    def multitask() -> list[Any]:
        dm = metrics.get("delta_m") or {}
        other = dm.get("other_conventions") or {}
        rows = [["distilled student", _delta(metrics["delta_m_vs_teachers"]),
                 *(_delta((other.get("student") or {}).get(c)) for c in ("task_avg", "flat"))],
                ["label-only student", _delta(metrics.get("delta_m_label_only_vs_teachers")),
                 *(_delta((other.get("label_only") or {}).get(c)) for c in ("task_avg", "flat"))]]
        blocks: list[Any] = [
            Table(["model", "Δm (primary)", "Δm (task average)", "Δm (all metrics)"], rows, strong=(0,),
                  caption="Δm: mean relative change against the reference teachers (higher is better)"),
            Para(f"Convention: {dm.get('convention', '?')}. Baseline: {dm.get('baseline', '?')}.")]
        ret = metrics.get("retention") or {}
        keys = [(t, m) for t, ms in (ret.get("student") or {}).items() for m in ms]
        if keys:
            blocks.append(Table(
                ["model", *(f"{t} {m}" for t, m in keys)],
                [[label, *(_num((ret.get(who) or {}).get(t, {}).get(m)) for t, m in keys)]
                 for who, label in (("student", "distilled student"), ("label_only", "label-only student"))],
                strong=(0,), caption="retention: student / teacher (≥ 1 means at least as good)"))
        return blocks

    sections.append(_guarded("Multi-task summary", multitask))

    def speed_table() -> list[Any]:
        params = speed.get("teacher_params") or {}
        rows = [["student", f"{speed['student_params'] / 1e6:.2f} M", f"{speed['student_ms']:.2f}"]]
        rows += [[f"teacher {n}", f"{params[n] / 1e6:.2f} M" if n in params else "—", f"{ms:.2f}"]
                 for n, ms in speed["per_teacher_ms"].items()]
        rows.append(["teachers together", f"{sum(params.values()) / 1e6:.2f} M" if params else "—",
                     f"{speed['teachers_ms']:.2f}"])
        return [Table(["model", "parameters", "latency (ms)"], rows, strong=(0,),
                      caption=f"batch-{speed.get('batch', 1)} latency, {speed.get('runtime', '?')}, median of "
                              f"interleaved rounds"),
                Para(f"The teachers together take {speed['ratio']:.1f}× the student's time.")]

    sections.append(_guarded("Speed and size", speed_table))

    def configuration() -> list[Any]:
        teacher_strategy, task_strategy = strategy_names(out / "student")
        rows = [[k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)] for k, v in preset.items()]
        return [Para(f"The distilled student used teacher weighting '{teacher_strategy}' and task weighting "
                     f"'{task_strategy}'."),
                Table(["preset", "value"], rows, caption="demo preset") if rows else Note("no preset recorded"),
                *_yaml_blocks(config, config_text, "student/config.yaml")]

    sections.append(_guarded("Configuration", configuration))

    def curves() -> list[Any]:
        runs = {"student": out / "student", "label_only": out / "label_only", **teacher_runs}
        return [
            _figure(loss_figure(runs), "loss curves",
                    "Left: total training loss of every model (the teachers on their own labelled sets). Right: "
                    "the distilled student's loss terms L[task, source].", "no loss curves: no steps.csv found"),
            _figure(weights_figure(out / "student"), "teacher and task weights",
                    f"The distilled student's teacher weights (left) and task weights (right); trailing running "
                    f"mean over {WEIGHT_SMOOTHING} logged values.", "no teacher or task weights were logged"),
            _figure(validation_figure({"student": out / "student", "label_only": out / "label_only"},
                                      directions=_directions()),
                    "validation metrics", "Primary validation metrics over training (validation split).",
                    "no validation curves: val.jsonl is missing"),
        ]

    sections.append(_guarded("Training curves", curves))

    student, student_error = _load_student(out / "student")
    if student is None:
        sample_blocks: list[Any] = [Note(f"no sample grid: the student cannot be loaded: {student_error}")]
    else:
        split = Path(data) if data else (Path(test["folder"]) if test.get("folder") else None)
        note = None if teachers or not teacher_runs else "the teachers are not drawn (--no-teachers)"
        sources = [(n, lambda n=n, p=p: CheckpointTeacher(n, p)) for n, p in teacher_runs.items()] if teachers \
            else []
        sample_blocks = _sample_blocks(split, "--data folder" if data else "test split",
                                       student=student, extra_students={"label_only": out / "label_only"},
                                       teachers=sources, teachers_note=note)
    sections.append(Section("Samples", sample_blocks))

    def run_info() -> list[Any]:
        timings = metrics.get("timings") or {}
        memory = metrics.get("memory") or {}
        rows = [["wall time", f"{metrics['wall_s']:.0f} s"] if "wall_s" in metrics else ["wall time", "—"],
                *[[k.removesuffix("_s"), f"{v:.0f} s"] for k, v in timings.items()],
                ["peak memory", f"{memory['peak_rss_mb']:.0f} MiB" if "peak_rss_mb" in memory else "—"],
                ["polydistill", str(metrics.get("version", "?"))]]
        splits = metrics.get("data") or {}
        blocks: list[Any] = [Table(["item", "value"], rows, caption="run")]
        if splits:  # per split: its folder, its images and one label count per task
            labelled = list(dict.fromkeys(k for s in splits.values() for k in s if k not in ("folder", "images")))
            blocks.append(Table(["split", "images", *(f"{t} labels" for t in labelled), "folder"],
                                [[n, _num(s.get("images")), *(_num(s.get(t)) for t in labelled),
                                  str(s.get("folder", ""))] for n, s in splits.items()],
                                caption="data"))
        return blocks

    sections.append(_guarded("Run", run_info))
    return Report("polydistill demo report", facts, sections)


# --------------------------------------------------------------------------------------------- entry


def build_report(run_dir: str | Path, *, data: str | Path | None = None, teachers: bool = True) -> Report:
    """The report of a demo output folder or a training run directory (recognised by their files)."""
    run_dir = Path(run_dir)
    data = Path(data) if data else None
    if not run_dir.is_dir():
        raise DataError(f"report: {run_dir} is not a folder; pass a training run directory (polydistill train "
                        "--out) or a demo output folder (polydistill demo --out)")
    if data is not None and not data.is_dir():
        raise DataError(f"report: --data {data} is not a folder; pass a dataset folder (images/, depth/, ...)")
    if (run_dir / "metrics.json").is_file() and (run_dir / "student").is_dir():
        metrics = _read_json(run_dir / "metrics.json")
        if not isinstance(metrics, dict) or not isinstance(metrics.get("student"), dict):
            raise DataError(f"report: {run_dir / 'metrics.json'} is not a demo's metrics file (a JSON object with "
                            "'student', 'label_only' and 'teachers'); rerun polydistill demo")
        return demo_report(run_dir, metrics, data=data, teachers=teachers)
    if (run_dir / "config.yaml").is_file() or (run_dir / "steps.csv").is_file():
        return train_report(run_dir, data=data, teachers=teachers)
    raise DataError(f"report: {run_dir} holds neither a training run (config.yaml, steps.csv) nor a demo output "
                    "(metrics.json, student/); pass the folder given to polydistill train --out or demo --out")


def write_html_report(run_dir: str | Path, out: str | Path | None = None, *, data: str | Path | None = None,
                      teachers: bool = True) -> Path:
    """Write the report as one self-contained HTML file (default ``run_dir/report.html``); returns its path.

    The file is written next to its final name and renamed, so a browser never shows half a page.
    """
    page = render_html(build_report(run_dir, data=data, teachers=teachers))
    out = Path(out) if out else Path(run_dir) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
