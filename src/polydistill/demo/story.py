"""``polydistill demo``: the user's story, end to end, offline, on built-in ShapeScenes data.

Strong single-task teachers were trained elsewhere on their own labelled data (here: a depth teacher
and a segmentation teacher with larger backbones, trained once and cached by fingerprint). The user
has many camera images with few labels and wants one small model. So the demo distills both teachers
into one small student on the whole image pool (teacher targets plus the pool's few labels), trains a
label-only student on the same pool's labels with the same budget, evaluates everything on a held-out
test split and writes ``metrics.json``, ``report.md`` (with plots), ``report.html`` (the same in one
self-contained page) and the student checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .. import __version__
from ..api import train
from ..checkpoint import load_student_model
from ..data import FolderDataset
from ..data.shapescenes import GENERATOR_VERSION, generate_split
from ..errors import ConfigError, TrainingError
from ..evaluation.delta_m import delta_m, retention
from ..evaluation.evaluate import evaluate, student_predictor
from ..evaluation.speed import count_parameters, measure_latency
from ..reporting.figures import write_demo_report
from ..reporting.html import write_html_report
from ..tasks import task_class
from ..teachers import CheckpointTeacher
from .presets import (
    DEMO_CACHE_VERSION,
    DEMO_TASKS,
    DEMO_WEIGHTING,
    NARROW_DOMAINS,
    PRESETS,
    REFERENCE_TEACHERS,
    STUDENT_TASK_OPTIONS,
    TASK_OPTIONS,
    TEACHERS,
    Preset,
)


#: bump when the generator or the training recipe changes, so cached data and teachers are rebuilt
#: (3: teachers train channels-last and side by side, one thread each on two cores — other float rounding)
def cache_root() -> Path:
    return Path(os.environ.get("POLYDISTILL_CACHE", Path.home() / ".cache" / "polydistill"))


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pool_labels(preset: Preset, seed: int) -> list[tuple[str, ...]]:
    """Mostly unlabelled pool; the labelled share is split between depth-only, semseg-only and boxes-only
    images (each labelled image carries one kind of label)."""
    n = preset.pool_images
    labelled = int(round(n * preset.pool_label_fraction))
    order = np.random.default_rng(seed).permutation(n)
    labels: list[tuple[str, ...]] = [()] * n
    kinds = (("depth",), ("semseg",), ("boxes",))
    for rank, i in enumerate(order[:labelled]):
        labels[i] = kinds[rank % 3]
    return labels


def generate_data(preset: Preset, seed: int, workers: int | None) -> tuple[dict[str, Path], dict[str, str]]:
    """Generate (or reuse) the demo splits; returns their folders and their fingerprints.

    Each split is cached under its own fingerprint, so changing e.g. the pool's labelled fraction
    regenerates the pool only, and teachers (keyed by their own split) stay cached.
    """
    all_labels = ("depth", "semseg", "boxes")
    plan = {
        "teacher_depth": (preset.teacher_images, ("depth",), None),
        "teacher_semseg": (preset.teacher_images, ("semseg",), None),
        "pool": (preset.pool_images, _pool_labels(preset, seed), None),
        "val": (preset.val_images, all_labels, None),
        "test": (preset.test_images, all_labels, None),
        "teacher_depth_dusk": (preset.teacher_images, ("depth",), NARROW_DOMAINS),
        "teacher_boxes": (preset.teacher_images, ("boxes",), None),
    }
    splits, fps = {}, {}
    for i, (name, (count, labels, domains)) in enumerate(plan.items()):
        params = {"v": DEMO_CACHE_VERSION, "generator": GENERATOR_VERSION, "split": name, "count": count,
                  "seed": seed * 100 + i, "h": preset.height, "w": preset.width, "labels": labels}
        if domains is not None:
            params["domains"] = list(domains)
        fps[name] = fingerprint(params)
        splits[name] = generate_split(cache_root() / "data" / f"{name}-{fps[name]}", count, seed=params["seed"],
                                      height=preset.height, width=preset.width, labels=labels, workers=workers,
                                      id_prefix=f"{name}_", domains=domains)
    return splits, fps


def _base_config(preset: Preset, train: Path, val: Path, *, tasks: dict, backbone: str, neck: int,
                 steps: int, batch: int, lr: float, seed: int, progress: bool,
                 zoom: tuple[float, float], lr_floor: float = 0.01) -> dict[str, Any]:
    return {
        "data": {"train": str(train), "val": str(val), "height": preset.height, "width": preset.width,
                 "batch_size": batch, "augment": {"hflip": 0.5, "scale": list(zoom)}},
        "tasks": tasks,
        "student": {"backbone": backbone, "neck_channels": neck},
        "train": {"max_steps": steps, "lr": lr, "min_lr_ratio": lr_floor, "warmup_steps": max(1, steps // 20),
                  "seed": seed,
                  "val_every": max(1, math.ceil(steps / 4)), "progress": progress},
    }


def teacher_fingerprint(cfg: dict[str, Any], data_fp: dict[str, str]) -> str:
    """What determines a teacher's weights: its recipe and its data's fingerprints — not the folders'
    paths and not whether a progress bar is shown."""
    recipe = cfg | {"data": None, "train": {k: v for k, v in cfg["train"].items() if k != "progress"}}
    key: dict[str, Any] = {"v": DEMO_CACHE_VERSION, "data": data_fp, "cfg": recipe}
    revisions = {t: task_class(t).target_revision for t in cfg["tasks"] if task_class(t).target_revision}
    if revisions:  # a teacher trained on targets encoded the old way is retrained; the others are kept
        key["targets"] = revisions
    return fingerprint(key)


def train_teachers(preset: Preset, splits: dict[str, Path], split_fps: dict[str, str], seed: int, progress: bool,
                   log) -> dict[str, Path]:
    """Train (or reuse) one single-task teacher per task on its own labelled set, cached by fingerprint; the
    missing ones train side by side (see :func:`train_runs`)."""
    paths: dict[str, Path] = {}
    jobs: list[tuple[dict[str, Any], Path]] = []
    for name, (task, split) in TEACHERS.items():
        cfg = _base_config(
            preset, splits[split], splits["val"], tasks={task: TASK_OPTIONS[task]},
            backbone=preset.teacher_backbone, neck=preset.teacher_neck, steps=preset.teacher_steps,
            batch=preset.teacher_batch, lr=preset.teacher_lr, seed=seed, progress=progress, zoom=(1.0, 1.25),
        )
        data_fp = {"train": split_fps[split], "val": split_fps["val"]}
        fp = teacher_fingerprint(cfg, data_fp)
        run_dir = cache_root() / "teachers" / f"{name}-{fp}"
        if (run_dir / "DONE").exists():
            log(f"teacher '{name}': cached at {run_dir}")
        else:
            log(f"teacher '{name}': training a {preset.teacher_backbone} {task} model ({preset.teacher_steps} steps)")
            shutil.rmtree(run_dir, ignore_errors=True)
            jobs.append((cfg, run_dir))
        paths[name] = run_dir
    side_by_side = parallel_training()
    if side_by_side and len(jobs) > 1:
        log(f"training {len(jobs)} teachers, {RUNS_AT_ONCE} at a time side by side")
    train_runs(jobs, side_by_side)
    for _, run_dir in jobs:
        (run_dir / "DONE").write_text("ok\n")
    return paths


def student_config(preset: Preset, splits: dict[str, Path], teacher_runs: dict[str, Path], *, seed: int,
                   progress: bool, distill: dict[str, Any] | None = None,
                   mixed_precision: str = "no") -> dict[str, Any]:
    """The demo student's config: distilled from ``teacher_runs`` (none: labels only) on the pool."""
    # a few epochs over the pool, so no zoom augmentation (flips only), and a high learning rate that
    # stays high (cosine floor at 20 %): on validation this beat lr 6e-3 with a 1 % floor by 0.07 mIoU
    cfg = _base_config(preset, splits["pool"], splits["val"], tasks=STUDENT_TASK_OPTIONS,
                       backbone=preset.student_backbone, neck=preset.student_neck, steps=preset.student_steps,
                       batch=preset.student_batch, lr=preset.lr, seed=seed, progress=progress, zoom=(1.0, 1.0),
                       lr_floor=0.2)
    cfg["train"]["mixed_precision"] = mixed_precision
    if teacher_runs:
        cfg["teachers"] = [{"name": n, "source": "checkpoint", "path": str(p)} for n, p in teacher_runs.items()]
        cfg["distill"] = {"teacher_cache": str(cache_root() / "teacher_outputs"),
                          **(DEMO_WEIGHTING if distill is None else distill)}
    return cfg


def run_demo(out: str | Path, preset_name: str = "default", *, seed: int = 0, workers: int | None = None,
             progress: bool = True, log=print, mixed_precision: str = "no") -> dict[str, Any]:
    """The whole story (see the README); ``mixed_precision`` applies to the two students (the teachers, cached
    across runs, always train in float32)."""
    preset = PRESETS[preset_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clear_demo_runs(out, ("student", "label_only"))  # first: a folder the demo may not replace fails fast
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    log(f"[1/5] ShapeScenes data at {preset.height}x{preset.width}")
    splits, split_fps = generate_data(preset, seed, workers)
    timings["data_s"] = time.perf_counter() - t0

    log("[2/5] single-task teachers (trained once, then cached)")
    t = time.perf_counter()
    teacher_runs = train_teachers(preset, splits, split_fps, seed, progress, log)
    timings["teachers_s"] = time.perf_counter() - t

    student_cfg = student_config(preset, splits, teacher_runs, seed=seed, progress=progress,
                                 mixed_precision=mixed_precision)
    side_by_side = parallel_training()
    label_cfg = student_config(preset, splits, {}, seed=seed, progress=progress, mixed_precision=mixed_precision)
    label_cfg["data"]["labelled_only"] = True
    log(f"[3/5] distilling {len(teacher_runs)} teachers into a {preset.student_backbone} student on "
        f"{preset.pool_images} pool images")
    log("[4/5] label-only student: the pool's few labels, same budget ("
        + ("trained side by side in a second process)" if side_by_side else "trained next)"))
    t = time.perf_counter()
    times = train_runs([(student_cfg, out / "student"), (label_cfg, out / "label_only")], side_by_side)
    timings["distill_s"], timings["label_only_s"] = times
    timings["students_s"] = time.perf_counter() - t  # both, side by side or one after the other

    log(f"[5/5] evaluating on {preset.test_images} held-out test images")
    t = time.perf_counter()
    metrics = evaluate_demo(preset, splits, teacher_runs, out)
    timings["eval_s"] = time.perf_counter() - t
    metrics["timings"] = timings
    metrics["wall_s"] = time.perf_counter() - t0
    metrics["memory"] = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    metrics["preset"] = {"name": preset_name, **asdict(preset)}
    metrics["mixed_precision"] = mixed_precision
    metrics["data"] = {}
    for name, folder in splits.items():
        data = FolderDataset(folder, DEMO_TASKS)
        metrics["data"][name] = {"folder": str(folder), "images": len(data), **data.label_counts()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_demo_report(out, metrics, splits["test"], teacher_runs)
    write_html_report(out)  # report.html: the same story in one self-contained page
    return metrics


#: written into the run folders the demo trains (``student/``, ``label_only/``): a rerun replaces only these
DEMO_MARKER = ".polydistill-demo"


def is_demo_run(folder: Path) -> bool:
    """Whether the demo wrote ``folder``: it carries :data:`DEMO_MARKER`, or (demo outputs from before the marker)
    its ``config.yaml`` trained on the demo's own pool split in the data cache."""
    if (folder / DEMO_MARKER).is_file():
        return True
    try:
        train_data = Path(yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))["data"]["train"])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, TypeError, KeyError):
        return False
    return train_data.name.startswith("pool-") and train_data.parent.resolve() == (cache_root() / "data").resolve()


def clear_demo_runs(out: Path, keys: tuple[str, ...]) -> None:
    """Make ``out/<key>`` fresh, marked folders for the demo's students: a rerun deletes the runs an earlier demo
    wrote there (training refuses a folder that holds a run), and never a folder the demo did not write."""
    for key in keys:
        folder = out / key
        if folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
            if not (folder.is_dir() and is_demo_run(folder)):
                raise ConfigError(f"{folder} holds files the demo did not write, and the demo trains its "
                                  f"'{key}' student there; move them away or give the demo another output folder")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DEMO_MARKER).write_text("written by `polydistill demo`: a rerun of the demo replaces this folder\n")


def parallel_training() -> bool:
    """Whether independent runs (the teachers, the two students) train at the same time: with at least two CPU
    threads (each run then takes an equal share) or a GPU. Small models use two cores poorly: two one-thread
    runs side by side finish about 1.3–1.6× sooner than the same two runs one after the other on two threads."""
    return torch.get_num_threads() >= 2 or torch.cuda.is_available()


#: how many runs train at once when side by side (each in its own process: memory grows with it)
RUNS_AT_ONCE = 2


def train_runs(jobs: list[tuple[dict[str, Any], Path]], side_by_side: bool) -> list[float]:
    """Train independent runs ``(config, run_dir)``, returning the seconds each took. Side by side, they go in
    groups of :data:`RUNS_AT_ONCE`: the first of a group runs here (the only one with a progress bar), the
    others each in a spawned process, every run on an equal share of the CPU threads; an error in any of
    them is raised here once its group has stopped. Otherwise they run here one after the other."""
    at_once = RUNS_AT_ONCE if side_by_side else 1
    return [seconds for i in range(0, len(jobs), at_once) for seconds in _train_group(jobs[i:i + at_once])]


def _timed_train(cfg: dict[str, Any], run_dir: str | Path) -> float:
    t = time.perf_counter()
    train(cfg, run_dir)  # the public API: a run, and its report.html when train.report is on
    return time.perf_counter() - t


def _train_group(jobs: list[tuple[dict[str, Any], Path]]) -> list[float]:
    threads = torch.get_num_threads()
    share = max(1, threads // len(jobs))
    context = mp.get_context("spawn")
    children = []
    for cfg, run_dir in jobs[1:]:
        quiet = cfg | {"train": cfg["train"] | {"progress": False}}  # progress bars of two processes would mix
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_train_in_child, args=(quiet, str(run_dir), share, send), daemon=True)
        process.start()
        send.close()
        children.append((process, receive))
    torch.set_num_threads(share)
    try:
        times = [_timed_train(*jobs[0])]
    except BaseException:
        for process, _ in children:
            process.terminate()
        raise
    finally:
        torch.set_num_threads(threads)
    for (process, receive), (_, run_dir) in zip(children, jobs[1:]):
        try:
            seconds, error = receive.recv()
        except EOFError:  # the process died without a word (killed, out of memory)
            process.join()
            raise TrainingError(f"the training process for {run_dir} stopped unexpectedly (exit code "
                                f"{process.exitcode}); run the demo again, or see {run_dir}") from None
        process.join()
        if error is not None:
            raise error
        times.append(seconds)
    return times


def _train_in_child(cfg: dict[str, Any], run_dir: str, threads: int, send) -> None:
    """Body of a side-by-side training process: sends back ``(seconds, None)`` or ``(None, error)``."""
    torch.set_num_threads(threads)
    try:
        result: tuple[float | None, BaseException | None] = (_timed_train(cfg, run_dir), None)
    except BaseException as error:  # handed to the parent, which raises it
        result = (None, error)
    try:
        send.send(result)
    except Exception:  # an error that cannot be pickled travels as its message
        send.send((None, TrainingError(f"{type(result[1]).__name__}: {result[1]}")))
    send.close()


def test_set(preset: Preset, splits: dict[str, Path]) -> FolderDataset:
    return FolderDataset(splits["test"], DEMO_TASKS, image_size=(preset.height, preset.width))


def evaluate_teachers(teacher_runs: dict[str, Path], test: FolderDataset, device: str
                      ) -> tuple[dict[str, CheckpointTeacher], dict[str, dict[str, dict[str, float]]]]:
    """Every teacher's test metrics. A cached teacher is evaluated once per test split: its metrics are stored
    beside its checkpoint under a key of its weights, the split's fingerprint (files and resize) and the
    polydistill version, so a warm demo spends no time re-running four unchanged teachers."""
    teachers = {name: CheckpointTeacher(name, path) for name, path in teacher_runs.items()}
    results = {}
    for name, teacher in teachers.items():
        stored = _teacher_metrics_file(teacher_runs[name], test)
        if stored is not None and stored.exists():
            results[name] = json.loads(stored.read_text())
            continue
        teacher_tasks = {t: teacher.task_objects[t] for t in teacher.tasks}
        results[name] = evaluate(teacher.to(device).predict, teacher_tasks, test, device=device)
        if stored is not None:
            tmp = stored.with_suffix(".tmp")
            tmp.write_text(json.dumps(results[name], indent=2))
            os.replace(tmp, stored)
    return teachers, results


def _teacher_metrics_file(run: Path, test: FolderDataset) -> Path | None:
    """Where a cached teacher's metrics on ``test`` are kept; None for a teacher outside the demo's cache."""
    run = Path(run)
    if not (run / "DONE").exists():
        return None
    weights = hashlib.sha256()
    for file in sorted((run / "checkpoints").rglob("model.safetensors")):
        weights.update(file.read_bytes())
    key = fingerprint({"v": __version__, "cache": DEMO_CACHE_VERSION, "test": test.fingerprint(),
                       "weights": weights.hexdigest()})
    return run / f"test_metrics-{key}.json"


def compare_with_teachers(student: dict[str, dict[str, float]], teacher_metrics: dict[str, dict[str, Any]],
                          tasks: dict[str, Any]) -> dict[str, Any]:
    """Δm (primary metrics) and retention of a student's test metrics against the reference teachers."""
    directions = {t: type(task).metric_directions for t, task in tasks.items()}
    primary = {t: type(task).primary_metric for t, task in tasks.items()}
    core = {t: {m: v for m, v in student[t].items() if m in directions[t]} for t in tasks}
    base = {t: {m: v for m, v in teacher_metrics[REFERENCE_TEACHERS[t]][t].items() if m in directions[t]}
            for t in tasks}
    return {
        "delta_m": delta_m(core, base, directions, convention="primary", primary=primary),
        "other_conventions": {conv: delta_m(core, base, directions, convention=conv, primary=primary)
                              for conv in ("task_avg", "flat")},
        "retention": retention(core, base, directions),
    }


def evaluate_demo(preset: Preset, splits: dict[str, Path], teacher_runs: dict[str, Path], out: Path) -> dict[str, Any]:
    test = test_set(preset, splits)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teachers, teacher_metrics = evaluate_teachers(teacher_runs, test, device)
    results: dict[str, Any] = {"teachers": teacher_metrics}
    students = {}
    for key in ("student", "label_only"):
        model, tasks, _ = load_student_model(out / key)
        students[key] = (model, tasks)
        results[key] = evaluate(student_predictor(model.to(device), tasks), tasks, test, device=device)

    tasks = students["student"][1]
    compared = {who: compare_with_teachers(results[who], teacher_metrics, tasks) for who in ("student", "label_only")}
    results["delta_m_vs_teachers"] = compared["student"]["delta_m"]
    results["delta_m_label_only_vs_teachers"] = compared["label_only"]["delta_m"]
    results["delta_m"] = {
        "baseline": "the reference single-task teacher of each task on the test split: "
                    + ", ".join(f"{t}: {n}" for t, n in REFERENCE_TEACHERS.items()),
        "convention": ("primary (one primary metric per task: depth abs_rel, semseg miou, detection map50; "
                       "averaged over tasks)"),
        "other_conventions": {who: c["other_conventions"] for who, c in compared.items()},
    }
    results["retention"] = {who: c["retention"] for who, c in compared.items()}

    # batch-1 latency of the student against the teachers together, same runtime, interleaved rounds
    student_model = students["student"][0].to(device)
    models = {"student": student_model, **{n: t.model.to(device) for n, t in teachers.items()}}
    for m in models.values():
        m.eval()
    ms = measure_latency(models, (preset.height, preset.width), device=device)
    teachers_ms = sum(ms[n] for n in teachers)
    results["speed"] = {
        "student_ms": ms["student"], "teachers_ms": teachers_ms, "ratio": teachers_ms / ms["student"],
        "per_teacher_ms": {n: ms[n] for n in teachers}, "batch": 1, "image_size": [preset.height, preset.width],
        "runtime": f"PyTorch {torch.__version__} eager, {device}, {torch.get_num_threads()} threads",
        "student_params": count_parameters(student_model),
        "teacher_params": {n: count_parameters(t.model) for n, t in teachers.items()},
    }
    results["version"] = __version__
    return results
