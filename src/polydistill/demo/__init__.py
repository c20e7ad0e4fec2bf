"""The demo: the user's story on built-in ShapeScenes data (``polydistill demo``).

Not a library: experiments and benchmarks train and evaluate through the public API (:mod:`polydistill`).
What they share with the demo is its *setting*, and that is the public face of this package:

- :func:`prepare` — the demo's data splits and single-task teachers (built once, then found in the cache)
  as a :class:`DemoSetup`, whose methods give the demo student's config, the teachers' test metrics and a
  student's score against them (Δm, retention) exactly as the demo computes them;
- the recipe as data: :data:`PRESETS` (sizes and budgets), :data:`TEACHERS` (teacher → task, training split),
  :data:`TEACHER_TASKS`, :data:`REFERENCE_TEACHERS` (the baseline of Δm per task), :data:`TASK_OPTIONS`
  (teachers' task options), :data:`STUDENT_TASK_OPTIONS`, :data:`OBJECT_CLASSES`, :data:`DEMO_WEIGHTING`;
- :func:`train_runs` — independent runs trained side by side, one process each, as the demo trains its two
  students; :func:`cache_root` — where data and teachers are cached (``POLYDISTILL_CACHE``);
- :func:`run_demo` — the whole story (what ``polydistill demo`` runs).

Example::

    import polydistill
    from polydistill import demo

    setup = demo.prepare("quick")
    run = polydistill.train(setup.student_config(), out="runs/my_student", report=False)
    print(setup.score(run.run_dir, setup.teacher_metrics())["delta_m"])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_student_model
from ..data import FolderDataset
from ..errors import ConfigError
from ..evaluation.evaluate import evaluate, student_predictor
from ..evaluation.speed import count_parameters, measure_latency
from ..registry import did_you_mean
from . import story
from .presets import (
    DEMO_WEIGHTING,
    OBJECT_CLASSES,
    PRESETS,
    REFERENCE_TEACHERS,
    STUDENT_TASK_OPTIONS,
    TASK_OPTIONS,
    TEACHER_TASKS,
    TEACHERS,
    Preset,
)
from .story import cache_root, run_demo, train_runs

__all__ = ["DEMO_WEIGHTING", "OBJECT_CLASSES", "PRESETS", "REFERENCE_TEACHERS", "STUDENT_TASK_OPTIONS",
           "TASK_OPTIONS", "TEACHERS", "TEACHER_TASKS", "DemoSetup", "Preset", "cache_root", "default_device",
           "prepare", "run_demo", "train_runs"]


def default_device() -> str:
    """Where the demo evaluates: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class DemoSetup:
    """The demo's data and teachers for one preset and data seed (see :func:`prepare`).

    ``splits`` are folder datasets by name (``pool``: the student's mostly unlabelled images, ``val``,
    ``test``, and each teacher's own labelled set); ``teacher_runs`` are the teachers' run folders by name, in
    the demo's order (:data:`TEACHERS`)."""

    preset_name: str
    preset: Preset
    seed: int
    splits: dict[str, Path]
    teacher_runs: dict[str, Path]
    split_fingerprints: dict[str, str] | None = None

    def student_config(self, teacher_runs: Mapping[str, Path] | None = None, *, seed: int | None = None,
                       progress: bool = False, distill: Mapping[str, Any] | None = None,
                       mixed_precision: str = "no") -> dict[str, Any]:
        """The demo student's config (a dict for :func:`polydistill.load_config` / :func:`polydistill.train`):
        distilled from ``teacher_runs`` (default: all the demo's teachers; ``{}``: labels only), trained with
        ``seed`` (default: the data seed), with ``distill`` replacing the demo's weighting section."""
        runs = self.teacher_runs if teacher_runs is None else dict(teacher_runs)
        return story.student_config(self.preset, self.splits, runs, seed=self.seed if seed is None else seed,
                                    progress=progress, distill=None if distill is None else dict(distill),
                                    mixed_precision=mixed_precision)

    def test_set(self) -> FolderDataset:
        """The held-out test split at the preset's size, with every task's labels."""
        return story.test_set(self.preset, self.splits)

    def teacher_metrics(self, device: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """Every teacher's test metrics ``{teacher: {task: {metric: value}}}`` (stored beside a cached teacher,
        so a second call costs nothing)."""
        return story.evaluate_teachers(self.teacher_runs, self.test_set(), device or default_device())[1]

    def score(self, checkpoint: str | Path, teacher_metrics: Mapping[str, Any], device: str | None = None
              ) -> dict[str, Any]:
        """A student's (checkpoint or run folder) test metrics and its comparison with the reference teachers,
        as the demo reports them: ``{"test", "delta_m", "other_conventions", "retention", "params"}``."""
        device = device or default_device()
        model, tasks, _ = load_student_model(Path(checkpoint))
        metrics = evaluate(student_predictor(model.to(device), tasks), tasks, self.test_set(), device=device)
        return {"test": metrics, **story.compare_with_teachers(metrics, dict(teacher_metrics), tasks),
                "params": count_parameters(model)}

    def latency(self, students: Mapping[str, str | Path], device: str | None = None) -> dict[str, float]:
        """Batch-1 milliseconds of each student (checkpoint or run folder) at the preset's size, measured side by
        side in interleaved rounds, as the demo measures its student against the teachers."""
        device = device or default_device()
        models = {}
        for name, path in students.items():
            model, _, _ = load_student_model(Path(path))
            models[name] = model.to(device).eval()
        return measure_latency(models, (self.preset.height, self.preset.width), device=device)


def prepare(preset: str = "default", seed: int = 0, workers: int | None = None, progress: bool = False,
            log: Callable[[str], object] = print) -> DemoSetup:
    """The demo's data (generated, or found in :func:`cache_root`) and its teachers (trained side by side, or
    found in the cache) for ``preset`` and data seed ``seed``. ``workers``: processes that render the data
    (default: one per CPU); ``log`` gets one line per step."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown demo preset '{preset}': the presets are {', '.join(sorted(PRESETS))}"
                          f"{did_you_mean(preset, list(PRESETS))}")
    chosen = PRESETS[preset]
    splits, fingerprints = story.generate_data(chosen, seed, workers)
    teacher_runs = story.train_teachers(chosen, splits, fingerprints, seed, progress, log)
    return DemoSetup(preset_name=preset, preset=chosen, seed=seed, splits=splits, teacher_runs=teacher_runs,
                     split_fingerprints=fingerprints)
