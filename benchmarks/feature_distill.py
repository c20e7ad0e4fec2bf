"""Feature teachers on the demo: the plain student vs. the DUNE projector path vs. the SAK layout.

What is measured. The demo's data, teachers and student recipe (``polydistill.demo.prepare``); three students
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

    python -m benchmarks.feature_distill [--preset default] [--seeds 0,1] [--out runs/bench_features]
                                         [--projector mlp] [--norm standardize] [--force]

Writes OUT/<variant>/seed<k>/ (the runs), OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console

import polydistill
from polydistill import demo

from .common import command_line, device, markdown_table, print_table, write_results

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
                     tasks=list(feats) if feature_only else [demo.TEACHER_TASKS[t["name"]], *feats])
        elif feature_only:
            continue
        teachers.append(t)
    return {**cfg, "teachers": teachers}


def configs(variant: str, setup: demo.DemoSetup, *, seed: int, out: Path, projector: str, norm: str,
            stage1: float) -> list[tuple[str, dict[str, Any]]]:
    """``[(run name, config)]`` of one variant (SAK has two stages)."""
    preset = setup.preset
    base = setup.student_config(seed=seed)
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


def evaluate_students(runs: dict[str, Path], setup: demo.DemoSetup) -> dict[str, Any]:
    """Test metrics, Δm and parameters of the deployed students (projectors dropped), and their batch-1 latency
    measured side by side."""
    where = device()
    teacher_metrics = setup.teacher_metrics(where)
    results = {key: setup.score(run, teacher_metrics, where) for key, run in runs.items()}
    ms = setup.latency(runs, where)
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
        f"# Feature teachers on the demo ({args.preset} preset, seeds {seeds}, polydistill {polydistill.__version__})",
        "",
        f"Command: `{command_line('benchmarks.feature_distill')}`",
        f"Projector `{args.projector}`, norm `{args.norm}`, SAK stage 1 = {args.stage1:.2f} of the budget.",
        "",
        *markdown_table(["student", "depth AbsRel ↓", "depth δ1 ↑", "semseg mIoU ↑", "Δm vs teachers (%) ↑",
                         "params (deployed)", "batch-1 latency (ms)"],
                        [[variant, pm(s["abs_rel"]), pm(s["delta1"]), pm(s["miou"]), pm(s["delta_m"], 2),
                          f"{s['params'] / 1e6:.2f} M", pm(s["latency_ms"], 1)] for variant, s in summary.items()],
                        align="lllllll"),
    ]
    lines += ["", "Mean ± standard deviation over seeds (the student's training seed; data and teachers fixed).",
              "Latencies are measured side by side in one process (interleaved rounds), CPU eager."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(demo.PRESETS))
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
    console = Console()
    setup = demo.prepare(args.preset, DATA_SEED, log=console.log)
    per_seed = []
    for seed in seeds:
        runs = {}
        for variant in variants:
            folder = out / variant / f"seed{seed}"
            for name, cfg in configs(variant, setup, seed=seed, out=folder, projector=args.projector, norm=args.norm,
                                     stage1=args.stage1):
                if args.force or not (folder / name / "summary.json").exists():
                    console.log(f"{variant} seed {seed}: training {name}")
                    shutil.rmtree(folder / name, ignore_errors=True)
                    polydistill.train(cfg, folder / name)
            runs[variant] = folder / "run"
        per_seed.append(evaluate_students(runs, setup))
    summary = summarise(per_seed)
    write_results(out, {"args": vars(args), "seeds": seeds, "per_seed": per_seed, "summary": summary},
                  markdown(summary, args, seeds))
    print_table("feature teachers on the demo", ("student", "AbsRel", "mIoU", "Δm %", "params", "ms"),
                [(variant, f"{s['abs_rel']['mean']:.4f}", f"{s['miou']['mean']:.4f}", f"{s['delta_m']['mean']:+.2f}",
                  f"{s['params'] / 1e6:.2f} M", f"{s['latency_ms']['mean']:.1f}") for variant, s in summary.items()],
                align="llllll")


if __name__ == "__main__":
    main()
