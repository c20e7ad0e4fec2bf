"""Feature teachers on the demo: the plain student vs. the DUNE projector path vs. the SAK layout.

What is measured. The demo's data, teachers and student recipe (``polydistill.demo.story``); three students
with the same budget (the demo's ``student_steps`` optimizer steps, same batch, learning rate and seed):

* ``plain`` — the demo student: three output teachers (depth, segmentation, the narrow dusk depth
  teacher), JointDistill feedback weighting;
* ``dune`` — the same, plus two *feature teachers*: the fused neck maps of the ShapeScenes-trained
  segmentation and depth teachers (ResNet-18 + FPN, 96 channels, read by module path with a recorder and
  pooled to a stride-8 grid), each regressed through its own projector (``--projector``, default
  ``mlp``) with DUNE's TeacherNorm (``--norm``) and cosine + smooth-L1 loss; projectors are dropped after
  training (the deployed model is the plain student's architecture);
* ``sak`` — the SAK layout: an adapter path per feature teacher beside the backbone and a router per task.
  Stage 1 distils only the two feature maps for ``--stage1`` of the budget (default 1/3) on the pool;
  stage 2 starts from stage 1's weights and trains everything (tasks, output teachers, continued feature
  distillation) for the rest of the budget;
* ``sak_one_stage`` — the SAK layout trained in one stage like ``dune`` (what the two stages add).

For every student: test metrics on the held-out test split (checkpoint chosen on validation), Δm (%,
primary metrics, vs. the reference teachers, positive = better), the deployed model's parameters and
batch-1 latency (projectors dropped), measured side by side in one process.

    PYTHONPATH=src python benchmarks/feature_distill.py [--preset default] [--seeds 0,1] [--out runs/bench_features]
                                                        [--projector mlp] [--norm standardize] [--force]

Writes OUT/<variant>/seed<k>/ (the runs), OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from polydistill import __version__
from polydistill.checkpoint import load_student_model
from polydistill.config import load_config
from polydistill.demo.story import (
    PRESETS,
    TEACHER_TASKS,
    Preset,
    compare_with_teachers,
    evaluate_teachers,
    generate_data,
    student_config,
    test_set,
    train_teachers,
)
from polydistill.evaluation.evaluate import evaluate, student_predictor
from polydistill.evaluation.speed import count_parameters, measure_latency
from polydistill.pipeline.train import train_run

DATA_SEED = 0
VARIANTS = ("plain", "dune", "sak", "sak_one_stage")
#: feature task -> (teacher, module path inside it)
FEATURE_TEACHERS = {"seg_feat": ("seg_teacher", "neck"), "depth_feat": ("depth_teacher", "neck")}
GRID_STRIDE = 8


def feature_tasks(projector: str, norm: str) -> dict[str, dict[str, Any]]:
    return {task: {"type": "features", "projector": projector, "norm": norm, "grid_stride": GRID_STRIDE}
            for task in FEATURE_TEACHERS}


def with_feature_teachers(cfg: dict[str, Any], feature_only: bool = False) -> dict[str, Any]:
    """Expose the neck maps of the output teachers as features; ``feature_only`` drops their task outputs
    (and the teachers without feature maps)."""
    teachers = []
    for t in cfg["teachers"]:
        feats = {task: module for task, (name, module) in FEATURE_TEACHERS.items() if name == t["name"]}
        if feats:
            t = dict(t, options={"features": feats, "grid_stride": GRID_STRIDE},
                     tasks=list(feats) if feature_only else [TEACHER_TASKS[t["name"]], *feats])
        elif feature_only:
            continue
        teachers.append(t)
    return {**cfg, "teachers": teachers}


def configs(variant: str, preset: Preset, splits: dict[str, Path], teacher_runs: dict[str, Path], *, seed: int,
            out: Path, projector: str, norm: str, stage1: float) -> list[tuple[str, dict[str, Any]]]:
    """``[(run name, config)]`` of one variant (SAK has two stages)."""
    base = student_config(preset, splits, teacher_runs, seed=seed, progress=False)
    if variant == "plain":
        return [("run", base)]
    cfg = with_feature_teachers(base)
    cfg["tasks"] = {**cfg["tasks"], **feature_tasks(projector, norm)}
    if variant == "dune":
        return [("run", cfg)]
    if variant == "sak_one_stage":
        return [("run", dict(cfg, student={**cfg["student"], "layout": "sak"}))]
    steps1 = max(1, round(preset.student_steps * stage1))
    first = with_feature_teachers(base, feature_only=True)
    first["tasks"] = feature_tasks(projector, norm)
    first["student"] = {**first["student"], "layout": "sak"}
    first["data"] = {**first["data"], "val": None}  # no task to validate in stage 1
    first["distill"] = {"teacher_cache": first["distill"]["teacher_cache"]}
    first["train"] = {**first["train"], "max_steps": steps1, "val_every": None,
                      "warmup_steps": max(1, steps1 // 20)}
    second = dict(cfg, student={**cfg["student"], "layout": "sak"})
    steps2 = preset.student_steps - steps1
    second["train"] = {**cfg["train"], "max_steps": steps2, "init_from": str(out / "stage1"),
                       "warmup_steps": max(1, steps2 // 20), "val_every": max(1, math.ceil(steps2 / 4))}
    return [("stage1", first), ("run", second)]


def evaluate_students(runs: dict[str, Path], preset: Preset, splits: dict[str, Path],
                      teacher_runs: dict[str, Path]) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    test = test_set(preset, splits)
    _, teacher_metrics = evaluate_teachers(teacher_runs, test, device)
    results: dict[str, Any] = {}
    models = {}
    for key, run in runs.items():
        model, tasks, _ = load_student_model(run)  # the deployed model: projectors dropped
        models[key] = model
        metrics = evaluate(student_predictor(model.to(device), tasks), tasks, test, device=device)
        results[key] = {"test": metrics, **compare_with_teachers(metrics, teacher_metrics, tasks),
                        "params": count_parameters(model)}
    ms = measure_latency(models, (preset.height, preset.width), device=device)
    for key in runs:
        results[key]["latency_ms"] = ms[key]
    return results


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for variant in per_seed[0]:
        rows = [r[variant] for r in per_seed]

        def stat(values: list[float]) -> dict[str, float]:
            return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

        summary[variant] = {
            "abs_rel": stat([r["test"]["depth"]["abs_rel"] for r in rows]),
            "delta1": stat([r["test"]["depth"]["delta1"] for r in rows]),
            "miou": stat([r["test"]["semseg"]["miou"] for r in rows]),
            "delta_m": stat([r["delta_m"] for r in rows]),
            "params": rows[0]["params"],
            "latency_ms": stat([r["latency_ms"] for r in rows]),
        }
    return summary


def markdown(summary: dict[str, Any], args: argparse.Namespace, seeds: list[int]) -> str:
    def pm(s: dict[str, float], digits: int = 4) -> str:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    lines = [
        f"# Feature teachers on the demo ({args.preset} preset, seeds {seeds}, polydistill {__version__})",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"Projector `{args.projector}`, norm `{args.norm}`, SAK stage 1 = {args.stage1:.2f} of the budget.",
        "",
        "| student | depth AbsRel ↓ | depth δ1 ↑ | semseg mIoU ↑ | Δm vs teachers (%) ↑ | params (deployed) "
        "| batch-1 latency (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, s in summary.items():
        lines.append(f"| {variant} | {pm(s['abs_rel'])} | {pm(s['delta1'])} | {pm(s['miou'])} | "
                     f"{pm(s['delta_m'], 2)} | {s['params'] / 1e6:.2f} M | {pm(s['latency_ms'], 1)} |")
    lines += ["", "Mean ± standard deviation over seeds (the student's training seed; data and teachers fixed).",
              "Latencies are measured side by side in one process (interleaved rounds), CPU eager."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="runs/bench_features")
    parser.add_argument("--projector", default="mlp", choices=["linear", "mlp", "transformer"])
    parser.add_argument("--norm", default="standardize", choices=["none", "standardize", "phi_s"])
    parser.add_argument("--stage1", type=float, default=1 / 3, help="SAK stage 1's share of the budget")
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.only.split(",") if v]
    out = Path(args.out)
    preset = PRESETS[args.preset]
    console = Console()
    splits, split_fps = generate_data(preset, DATA_SEED, None)
    teacher_runs = train_teachers(preset, splits, split_fps, DATA_SEED, False, console.log)
    per_seed = []
    for seed in seeds:
        runs = {}
        for variant in variants:
            folder = out / variant / f"seed{seed}"
            for name, cfg in configs(variant, preset, splits, teacher_runs, seed=seed, out=folder,
                                     projector=args.projector, norm=args.norm, stage1=args.stage1):
                if args.force or not (folder / name / "summary.json").exists():
                    console.log(f"{variant} seed {seed}: training {name}")
                    shutil.rmtree(folder / name, ignore_errors=True)
                    train_run(load_config(base=cfg), folder / name)
            runs[variant] = folder / "run"
        per_seed.append(evaluate_students(runs, preset, splits, teacher_runs))
    summary = summarise(per_seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "seeds": seeds, "per_seed": per_seed,
                                                  "summary": summary}, indent=2))
    text = markdown(summary, args, seeds)
    (out / "results.md").write_text(text)
    table = Table(title="feature teachers on the demo")
    for col in ("student", "AbsRel", "mIoU", "Δm %", "params", "ms"):
        table.add_column(col)
    for variant, s in summary.items():
        table.add_row(variant, f"{s['abs_rel']['mean']:.4f}", f"{s['miou']['mean']:.4f}",
                      f"{s['delta_m']['mean']:+.2f}", f"{s['params'] / 1e6:.2f} M", f"{s['latency_ms']['mean']:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
