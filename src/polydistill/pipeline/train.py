"""Assemble and run one training job from a :class:`RunConfig` (what ``polydistill train`` does).

The order matters for users: everything that can be checked cheaply (component names, data folders,
teacher checkpoints, task/teacher consistency) is checked before any expensive work starts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import Dataset, Subset

from ..cache import TeacherCache, cache_slot, open_or_build_cache
from ..checkpoint import find_checkpoint, load_matching_weights
from ..config import ModelSpec, RunConfig, save_config
from ..data import FolderDataset, build_train_transform, check_labels, open_dataset
from ..distill import Objective
from ..distill.trajectory import KnowledgeTrajectory
from ..distill.weighting import TASK_WEIGHTINGS, TEACHER_WEIGHTINGS, build_weighting
from ..distill.weighting.base import parse_options
from ..engine.logging import require_tensorboard
from ..engine.trainer import FitResult, Trainer, make_accelerator
from ..errors import ConfigError
from ..evaluation.evaluate import cached_predictor, evaluate
from ..registry import did_you_mean
from ..students import build_student
from ..tasks import TASKS, task_type
from ..teachers import TEACHER_SOURCES, Teacher, parse_source, resolve_teachers
from .run_dir import claim_run_dir


class LabelledSubset(Subset):
    """The images that carry at least one label; forwards ``set_epoch`` so augmentation stays per-epoch."""

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


@dataclass
class RunResult:
    run_dir: Path
    fit: FitResult
    spec: ModelSpec
    #: whether this process writes the run's files (rank 0 under torchrun)
    main_process: bool = True
    #: ``train.report``: the caller writes ``report.html`` (training never imports reporting)
    report: bool = False


def labelled_tasks(cfg: RunConfig) -> tuple[str, ...]:
    """The tasks whose labels come from the data (a features task learns from its teachers only)."""
    return tuple(n for n, opts in cfg.tasks.items() if TASKS.get(task_type(n, opts)).has_labels)


def task_classes(cfg: RunConfig, dataset: FolderDataset) -> dict[str, list[str]]:
    """``{task: class names}`` for the tasks with classes (their own ``class_names``, else the dataset's): what
    teachers need to map their classes onto the student's."""
    return {name: list(opts.get("class_names") or dataset.class_names) for name, opts in cfg.tasks.items()
            if TASKS.get(task_type(name, opts)).target_is_label}


def resolve_task_options(cfg: RunConfig, dataset: FolderDataset,
                         teachers: list[Teacher] = ()) -> dict[str, dict[str, Any]]:
    """Every task fills the options the data and the teachers already know (classes, ignore index, feature
    channels): :meth:`Task.resolve_options`."""
    return {name: TASKS.get(task_type(name, opts)).resolve_options(name, dict(opts), dataset, teachers)
            for name, opts in cfg.tasks.items()}


def model_spec(cfg: RunConfig, task_options: dict[str, dict[str, Any]]) -> ModelSpec:
    """What rebuilds the network (stored beside every checkpoint); ``input_size`` is the training size."""
    return ModelSpec(tasks=task_options, **cfg.student.model_dump(), input_size=(cfg.data.height, cfg.data.width))


def check_names(cfg: RunConfig, teachers: Sequence[Teacher] = ()) -> None:
    """Fail fast on unknown component names, before data or models are touched (``teachers``: Python teachers
    given besides the config's)."""
    for name, opts in cfg.tasks.items():
        kind = task_type(name, opts)
        if TASKS.get(kind).has_labels and kind != name:
            raise ConfigError(f"task '{name}' of type '{kind}' reads its labels from the '{kind}' folder: name it "
                              f"'{kind}' (own names are for label-free tasks, e.g. dino: {{type: features}})")
    if cfg.student.layout == "sak" and cfg.distill.task_weighting.name == "gradnorm":
        raise ConfigError("gradnorm needs one shared feature map, but the SAK layout gives every task its own "
                          "mixture; choose another distill.task_weighting (uncertainty, dwa, equal)")
    for key, registry in (("teacher_weighting", TEACHER_WEIGHTINGS), ("task_weighting", TASK_WEIGHTINGS)):
        strategy = getattr(cfg.distill, key)
        parse_options(registry.get(strategy.name).Options, strategy.options, f"distill.{key} '{strategy.name}'")
    for t in cfg.teachers:
        TEACHER_SOURCES.get(parse_source(t.path, t.source)[0])
        for task in t.tasks or []:
            if task not in cfg.tasks:
                raise ConfigError(
                    f"teacher '{t.name}' teaches '{task}', which is not a student task"
                    f"{did_you_mean(task, list(cfg.tasks))}"
                )
    for key in list(cfg.distill.task_weights):
        if key not in cfg.tasks:
            raise ConfigError(f"distill.task_weights has unknown task '{key}'{did_you_mean(key, list(cfg.tasks))}")
    if cfg.train.tensorboard:
        require_tensorboard()
    if cfg.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; on the CPU use bf16 or 'no'")
    names = [t.name for t in cfg.teachers] + [t.name for t in teachers]
    pairs = ([f"{task}/{t.name}" for t in cfg.teachers for task in (t.tasks or [])]
             + [f"{task}/{t.name}" for t in teachers for task in t.tasks])
    for key in list(cfg.distill.teacher_weights):
        if key not in names and key not in pairs:
            raise ConfigError(f"distill.teacher_weights has unknown teacher '{key}' (a teacher name, or task/teacher "
                              f"for one term){did_you_mean(key, names + pairs)}")
    for name, opts in cfg.tasks.items():
        by = (opts or {}).get("weight_by")
        if by is not None and (by not in cfg.tasks or not TASKS.get(task_type(by, cfg.tasks[by])).box_targets):
            raise ConfigError(f"tasks.{name}.weight_by is '{by}': it must name the config's detection task")


def build_datasets(cfg: RunConfig) -> tuple[Dataset, FolderDataset, FolderDataset | None]:
    """(training set as sampled, the un-augmented training folder, validation set)."""
    size = (cfg.data.height, cfg.data.width)
    tasks = labelled_tasks(cfg)
    train = open_dataset(cfg.data, "train", tasks, transform=build_train_transform(cfg.data.augment),
                         seed=cfg.train.seed, image_size=size)
    plain = open_dataset(cfg.data, "train", tasks, image_size=size)
    val = open_dataset(cfg.data, "val", tasks, image_size=size) if cfg.data.val else None
    if val is not None and val.root.resolve() == plain.root.resolve():
        raise ConfigError("data.val is the training folder: validation must use images the student never trains on")
    if val is not None and any(TASKS.get(t).target_is_label for t in tasks) and val.class_names != plain.class_names:
        raise ConfigError(f"data.val has the classes {list(val.class_names)[:6]}... but data.train has "
                          f"{list(plain.class_names)[:6]}...; both sets must use the same class list")
    return train, plain, val


def teacher_cache(cfg: RunConfig, teachers: list[Teacher], dataset: FolderDataset, run_dir: Path,
                  rebuild: bool | None = None) -> TeacherCache:
    """The teachers' outputs on the (un-augmented) training images, from the cache or computed into it."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    c = cfg.distill.cache
    return open_or_build_cache(
        teachers, dataset, cfg.distill.teacher_cache or run_dir / "teacher_cache", encoding=c.encoding,
        semseg_topk=c.semseg_topk, rebuild=c.rebuild if rebuild is None else rebuild, verify=c.verify,
        batch_size=cfg.data.batch_size * 2, num_workers=cfg.data.num_workers, device=device,
        progress=cfg.train.progress, log=lambda msg: print(msg, flush=True) if cfg.train.progress else None,
    )


def cache_teachers(cfg: RunConfig, root: str | Path | None = None, *, rebuild: bool | None = None,
                   force: bool = False, teachers: Sequence[Teacher] = ()) -> dict[str, TeacherCache]:
    """``polydistill cache``: build (or check) the teacher-output caches ``train`` would use for ``cfg``:
    ``{"train": ...}``, plus ``"val"`` when the teacher weighting scores the teachers on validation."""
    check_names(cfg, teachers)
    if not cfg.teachers and not teachers:
        raise ConfigError("the config has no teachers: there is nothing to cache")
    root = Path(root or cfg.distill.teacher_cache or "")
    if not str(root) or str(root) == ".":
        raise ConfigError("set distill.teacher_cache in the config or pass --out: where the cache should live")
    _, plain, _ = build_datasets(cfg)
    teachers = resolve_teachers(cfg.teachers, teachers, task_classes(cfg, plain))
    cfg = cfg.model_copy(deep=True)
    cfg.distill.teacher_cache = str(root)
    folders = {"train": plain}
    if cfg.data.val and TEACHER_WEIGHTINGS.get(cfg.distill.teacher_weighting.name).needs_teacher_metrics:
        folders["val"] = open_dataset(cfg.data, "val", labelled_tasks(cfg),
                                      image_size=(cfg.data.height, cfg.data.width))
    out = {}
    for split, dataset in folders.items():
        if force:
            shutil.rmtree(root / cache_slot(teachers, dataset), ignore_errors=True)
        out[split] = teacher_cache(cfg, teachers, dataset, root, rebuild=rebuild)
    return out


def task_label_groups(dataset: FolderDataset, batch_size: int) -> list[list[int]]:
    """Per labelled task, the indices of the images that carry its label (``data.sampler: per_task``); a task
    without any label in the folder (taught by teachers only) gets no group."""
    groups = []
    for task in dataset.tasks:
        group = [i for i in range(len(dataset)) if dataset.has_label(i, task)]
        if not group:
            continue
        if len(group) < batch_size:
            raise ConfigError(f"data.sampler per_task: only {len(group)} training images carry '{task}' labels, "
                              f"fewer than one batch of {batch_size}; lower data.batch_size or use sampler random")
        groups.append(group)
    if not groups:
        raise ConfigError(f"data.sampler per_task: no training image in {dataset.root} carries a label")
    return groups


def teacher_validation_metrics(teachers: list[Teacher], tasks: dict, cfg: RunConfig, run_dir: Path, *,
                               cached: bool) -> dict[str, dict[str, dict[str, float]]]:
    """Every teacher's metrics on the validation split (strategies that compare the student with them).

    With ``cached``, the teachers' validation outputs come from (and go into) the teacher-output cache like
    the training images', so a run on a warm cache never runs a teacher.
    """
    if not cfg.data.val:
        raise ConfigError(
            f"distill.teacher_weighting '{cfg.distill.teacher_weighting.name}' compares the student with its "
            "teachers on validation data: set data.val"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    val = open_dataset(cfg.data, "val", labelled_tasks(cfg), image_size=(cfg.data.height, cfg.data.width))
    if cached:
        val.attach_teacher_outputs(teacher_cache(cfg, teachers, val, run_dir),
                                   keep_grid=[n for n, t in tasks.items() if not t.dense_output])
    out = {}
    for teacher in teachers:
        own = {t: tasks[t] for t in teacher.tasks if tasks[t].has_labels}
        if not own:
            continue
        predict = cached_predictor(teacher.name) if cached else teacher.to(device).predict
        out[teacher.name] = evaluate(predict, own, val, batch_size=cfg.data.batch_size * 2, device=device,
                                     takes_batch=cached)
    return out


def train_run(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, stop_at_step: int | None = None,
              teachers: Sequence[Teacher] = ()) -> RunResult:
    """Train into ``run_dir`` (checkpoints, logs, ``summary.json``). ``teachers``: :class:`Teacher` instances
    used besides the config's (Python teachers); their names must differ from the config's."""
    check_names(cfg, teachers)
    run_dir = Path(run_dir)
    # one process per device under torchrun / accelerate launch: rank 0 writes files and builds the teacher
    # cache while the others wait for it (main_process_first), then every rank reads its own slice
    accelerator = make_accelerator(cfg.train.mixed_precision)
    # the folder belongs to this run (run_dir.py): refused if it holds another run or another writer holds it
    with claim_run_dir(run_dir, cfg, resume=resume, main=accelerator.is_main_process) as write_config:
        accelerator.wait_for_everyone()  # every process checked the folder before rank 0 writes into it
        return _train_in(cfg, run_dir, accelerator, write_config=write_config, resume=resume,
                         stop_at_step=stop_at_step, teachers=teachers)


def _train_in(cfg: RunConfig, run_dir: Path, accelerator: Accelerator, *, write_config: bool, resume: bool,
              stop_at_step: int | None, teachers: Sequence[Teacher]) -> RunResult:
    """The body of :func:`train_run`, once the run folder is claimed (``write_config``: the folder has no
    ``config.yaml`` yet; a resume keeps the one the run started with)."""
    main = accelerator.is_main_process
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    set_seed(cfg.train.seed)  # Python, NumPy and torch (and CUDA): a run is a function of its config

    train_set, plain_train, val_set = build_datasets(cfg)
    teachers: list[Teacher] = resolve_teachers(cfg.teachers, teachers, task_classes(cfg, plain_train))
    task_options = resolve_task_options(cfg, plain_train, teachers)
    spec = model_spec(cfg, task_options)
    model, tasks = build_student(spec)
    if cfg.train.init_from:
        source = find_checkpoint(cfg.train.init_from)
        report = load_matching_weights(model, source)
        if main:
            (run_dir / "init_from.json").write_text(json.dumps({"checkpoint": str(source), **report}, indent=2))
    if cfg.train.channels_last:  # before the knowledge trajectory copies the model
        model = model.to(memory_format=torch.channels_last)
    for teacher in teachers:
        for task in teacher.tasks:
            if task not in tasks:
                raise ConfigError(
                    f"teacher '{teacher.name}' predicts '{task}', which the student does not learn; set "
                    f"teachers[].tasks to a subset of {list(tasks)}"
                )
    teachers_per_task = {t: [teacher.name for teacher in teachers if t in teacher.tasks] for t in tasks}
    check_labels(plain_train, "train", taught={t for t, names in teachers_per_task.items() if names})

    sampled: Dataset = train_set
    task_groups = None
    if cfg.data.sampler == "per_task":
        task_groups = task_label_groups(plain_train, cfg.data.batch_size)
    elif cfg.data.labelled_only:
        sampled = LabelledSubset(train_set, [i for i in range(len(plain_train)) if plain_train.has_any_label(i)])

    online: list[Teacher] = []
    if teachers and cfg.distill.precompute_teachers:
        with accelerator.main_process_first():
            cache = teacher_cache(cfg, teachers, plain_train, run_dir)
        train_set.attach_teacher_outputs(cache, keep_grid=[n for n, t in tasks.items() if not t.dense_output])
    else:
        online = teachers

    weighting = build_weighting(cfg.distill, tasks, teachers_per_task)
    for t in [t for t in tasks if weighting.teachers_per_task[t] != teachers_per_task[t]]:  # a fusion learns t
        if not any(plain_train.has_label(i, t) for i in range(len(plain_train))):
            raise ConfigError(f"distill.teacher_weighting '{cfg.distill.teacher_weighting.name}' learns to fuse the "
                              f"teachers of '{t}' from its labels, but no training image has a '{t}' label; leave "
                              f"'{t}' out of connector_tasks or add labels")
    if weighting.needs_teacher_metrics:
        with accelerator.main_process_first():
            weighting.teacher.set_teacher_metrics(
                teacher_validation_metrics(teachers, tasks, cfg, run_dir, cached=not online))
    scored = {n: t for n, t in tasks.items() if t.has_labels}
    trajectory = KnowledgeTrajectory(cfg.distill.trajectory, model, scored) if cfg.distill.trajectory else None

    if main and write_config:
        save_config(cfg, run_dir / "config.yaml")
    kinds = {(t, teacher.name): teacher.output_kind(t) for teacher in teachers for t in teacher.tasks}
    if not online:
        teachers.clear()  # served by the cache from here on: free the networks' memory during training
    objective = Objective(tasks, weighting.teachers_per_task, trajectory_tasks=list(scored) if trajectory else None,
                          teacher_kinds=kinds, teacher_targets=cfg.distill.teacher_targets)
    trainer = Trainer(
        model=model, spec=spec, tasks=tasks, objective=objective, weighting=weighting, train_set=sampled,
        val_set=val_set, cfg=cfg.train, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
        run_dir=run_dir, online_teachers=online, trajectory=trajectory, task_groups=task_groups,
        accelerator=accelerator,
    )
    fit = trainer.fit(resume=resume, stop_at_step=stop_at_step)
    summary = {
        "steps": fit.steps, "best_step": fit.best_step, "best_metrics": fit.best_metrics,
        "last_metrics": fit.last_metrics, "train_seconds": fit.train_seconds,
        "samples_per_second": fit.samples_per_second, "skipped_steps": fit.skipped_steps,
        "nan_steps": fit.nan_steps,
    }
    if main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return RunResult(run_dir=run_dir, fit=fit, spec=spec, main_process=main, report=cfg.train.report)
