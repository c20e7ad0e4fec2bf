"""The public Python API, re-exported at the package root (``import polydistill``).

Every command of the CLI is one of these calls plus printing, so a script and the command line do the same
work. Typical use::

    import polydistill

    cfg = polydistill.load_config("configs/my_run.yaml", overrides=["train.max_steps=2000"])
    run = polydistill.train(cfg, out="runs/my_run", teachers=[my_teacher])   # a Teacher or a wrapped module
    student = polydistill.load_student(run.run_dir)
    result = student.predict("photo.jpg")          # {"depth": (H, W) metres, "semseg": (H, W) ids, ...}
    polydistill.export(run.run_dir, "student.onnx")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cache import TeacherCache
from .config import RunConfig
from .config import load_config as _load_config
from .deploy.export import ExportResult, export_checkpoint
from .deploy.student import DistilledStudent
from .distill.weighting import TASK_WEIGHTINGS, TEACHER_WEIGHTINGS
from .errors import ConfigError
from .pipeline.evaluate import evaluate_checkpoint
from .pipeline.train import RunResult, train_run
from .pipeline.train import cache_teachers as _cache_teachers
from .registry import did_you_mean
from .reporting.html import write_html_report
from .tasks import TASKS
from .teachers import TEACHER_SOURCES, Teacher

__all__ = ["RunResult", "cache_teachers", "evaluate", "export", "list_components", "load_config", "load_student",
           "train"]


def load_config(source: str | Path | Mapping[str, Any] | RunConfig, overrides: Sequence[str] = ()) -> RunConfig:
    """A validated run config from a YAML file or a dict (the YAML's structure), plus dotted overrides
    (``"train.lr=0.01"``). Unknown keys and wrong types raise :class:`~polydistill.errors.ConfigError` naming
    the key, with a suggestion."""
    if isinstance(source, RunConfig):
        return _load_config(None, list(overrides), base=source.model_dump(mode="json")) if overrides else source
    if isinstance(source, Mapping):
        return _load_config(None, list(overrides), base=dict(source))
    return _load_config(Path(source), list(overrides))


def _config(config: str | Path | Mapping[str, Any] | RunConfig) -> RunConfig:
    return config if isinstance(config, RunConfig) else load_config(config)


def train(config: str | Path | Mapping[str, Any] | RunConfig, out: str | Path, *,
          teachers: Sequence[Teacher] | None = None, resume: bool = False,
          report: bool | None = None) -> RunResult:
    """Train a student (or a teacher: one task, labels only) into the run folder ``out``.

    ``teachers`` are :class:`Teacher` instances used besides the config's ``teachers:`` entries — your own
    models via ``Teacher.from_module`` or a ``Teacher`` subclass. ``resume`` continues from
    ``out/checkpoints/last``. ``report`` (default: the config's ``train.report``) writes ``out/report.html``
    after training. Returns the run (folder, steps, best and last validation metrics, the model spec)."""
    cfg = _config(config)
    run = train_run(cfg, out, resume=resume, teachers=list(teachers or ()))
    if (run.report if report is None else report) and run.main_process:
        write_run_report(run.run_dir)
    return run


def write_run_report(run_dir: Path) -> Path | None:
    """``RUN_DIR/report.html`` after training. Kept cheap: the student and the ground truth on four validation
    images, no teacher forward (``polydistill report RUN_DIR`` draws the teachers too). The run is saved by
    then, so a failure here is reported and does not fail the run."""
    try:
        return write_html_report(run_dir, teachers=False)
    except Exception as exc:  # noqa: BLE001 - the checkpoints and logs are written; only the page is missing
        print(f"warning: {run_dir / 'report.html'} was not written ({type(exc).__name__}: {exc}); "
              f"retry with `polydistill report {run_dir}`", flush=True)
        return None


def cache_teachers(config: str | Path | Mapping[str, Any] | RunConfig, out: str | Path | None = None, *,
                   teachers: Sequence[Teacher] | None = None, rebuild: bool | None = None,
                   force: bool = False) -> dict[str, TeacherCache]:
    """Run the teachers once over the training images (and the validation images when the teacher weighting
    scores teachers) and store their outputs where ``train`` finds them: ``out``, else the config's
    ``distill.teacher_cache``. Returns ``{"train": cache, "val": cache}``."""
    return _cache_teachers(_config(config), out, rebuild=rebuild, force=force, teachers=list(teachers or ()))


def evaluate(checkpoint: str | Path, data: str | Path, *, size: tuple[int, int] | None = None,
             baseline: str | Path | None = None, teachers: Sequence[str | Path | Teacher] = ()) -> dict[str, Any]:
    """Metrics of a student checkpoint (or run folder) on the dataset at ``data``; with ``teachers`` (Teacher
    instances, checkpoint folders or ``prefix:path`` of any source) their metrics and the student's retention,
    with ``baseline`` (a metrics JSON) Δm; latency when the size is known."""
    h, w = size or (None, None)
    return evaluate_checkpoint(Path(checkpoint), Path(data), size=(h, w),
                               baseline=None if baseline is None else Path(baseline),
                               teachers=list(teachers))


def load_student(path: str | Path) -> DistilledStudent:
    """A trained student from a checkpoint or run folder, with ``.predict(images)``."""
    return DistilledStudent(path)


def export(checkpoint: str | Path, out: str | Path, *, images: Sequence[str | Path] | None = None,
           size: tuple[int, int] | None = None, tolerance: float = 1e-4, check: bool = True) -> ExportResult:
    """Export a student to ONNX (task-space outputs, dynamic batch and size, a JSON sidecar), checked against
    eager PyTorch on ``images`` (default: the run's validation images) within ``tolerance``."""
    h, w = size or (None, None)
    return export_checkpoint(Path(checkpoint), Path(out), images=None if images is None else [Path(i) for i in images],
                             size=(h, w), tolerance=tolerance, check=check)


def list_components(kind: str | None = None) -> dict[str, list[str]]:
    """What is registered, by kind: ``tasks``, ``teachers`` (sources), ``teacher_weightings`` and
    ``task_weightings`` (``weightings``: both) and ``students`` (timm backbones: a long list). ``kind`` selects
    one; without it, all."""
    def students() -> list[str]:
        import timm  # only this kind needs timm's model list

        return sorted(timm.list_models())

    kinds = {
        "tasks": lambda: TASKS.names(),
        "teachers": lambda: TEACHER_SOURCES.names(),
        "teacher_weightings": lambda: TEACHER_WEIGHTINGS.names(),
        "task_weightings": lambda: TASK_WEIGHTINGS.names(),
        "students": students,
    }
    if kind == "weightings":
        return {k: kinds[k]() for k in ("teacher_weightings", "task_weightings")}
    if kind is not None and kind not in kinds:
        raise ConfigError(f"unknown component kind '{kind}'{did_you_mean(kind, [*kinds, 'weightings'])}")
    return {k: fn() for k, fn in kinds.items() if kind in (None, k)}
