"""JointDistill's connector: ``feedback`` weighting with and without ``connector: true`` on the demo setting.

What is measured. The demo's student (preset ``quick`` by default: 48×64 ShapeScenes, four teachers through
the teacher cache — two depth teachers, one of them narrow, a segmentation and a detection teacher; 300
steps, twice the preset's, see ``QUICK_STEPS``) is trained twice per seed, changing one thing:
``distill.teacher_weighting`` is ``feedback`` (the demo's weighting) or ``feedback`` with ``connector: true``
(the connector then serves depth and segmentation; the detection teacher, which it cannot serve, teaches
directly in both). Data and teachers come from data seed 0 (built once into the demo cache,
``POLYDISTILL_CACHE`` or ~/.cache/polydistill); the benchmark seed changes only the student's training seed.
Every run is scored on the held-out test split with the checkpoint chosen on validation (``best``, as the
demo does; ``last`` too, for the Δm rows): test metrics and Δm (%, primary metrics, against the reference
teacher of each task; positive = better), over all tasks and over depth + semseg only.

The comparison is paired by seed (same initialisation and data order): for every metric, the mean ± std of
the difference connector − plain over seeds, its standard error (std/√n), and whether |mean| exceeds two
standard errors (a rough significance flag, not a test at any stated level with so few seeds).

Run from the repository root (one thread, so the machine's other jobs keep theirs):

    python -m benchmarks.connector [--preset quick] [--seeds 0,1,2,3,4] [--threads 1] [--steps 300]
                                   [--out runs/bench_connector] [--force]

(about 9 minutes on one thread of a shared 2-core machine; the quick preset's data and teachers take about
7 more the first time, then come from the cache).

Writes OUT/<variant>/seed<k>/ (the runs), and benchmarks/results/connector.{json,md} (``--results``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import polydistill
from polydistill import demo
from polydistill.demo import REFERENCE_TEACHERS
from polydistill.evaluation.delta_m import delta_m
from polydistill.tasks import TASKS

from .common import command_line, device, mean_std, print_table, table_header, table_row, write_results
from .weighting import fmt, median_step_time

DATA_SEED = 0
VARIANTS: dict[str, dict[str, Any]] = {
    "feedback": {"teacher_weighting": "feedback", "task_weighting": "equal"},
    "feedback+connector": {"teacher_weighting": {"name": "feedback", "connector": True},
                           "task_weighting": "equal"},
}
REFERENCE, TREATED = "feedback", "feedback+connector"
SERVED = ("depth", "semseg")
#: the quick preset's 150 steps leave the student where its depth head still diverges on some seeds (AbsRel 1.8
#: on one of five in a first run of this benchmark); 300 steps keep the whole benchmark under 10 minutes
QUICK_STEPS = 300
#: (label, task, metric, higher is better)
METRICS = [("depth AbsRel", "depth", "abs_rel", False), ("depth RMSE", "depth", "rmse", False),
           ("depth δ1", "depth", "delta1", True), ("semseg mIoU", "semseg", "miou", True),
           ("semseg pixel acc", "semseg", "pixel_acc", True), ("detection mAP@0.5", "detection", "map50", True)]
DELTAS = [("Δm vs teachers, all tasks (%)", None, "delta_m", True),
          ("Δm vs teachers, depth + semseg (%)", None, "delta_m_served", True),
          ("Δm all tasks, last checkpoint (%)", None, "delta_m_last", True),
          ("Δm depth + semseg, last checkpoint (%)", None, "delta_m_served_last", True)]

console = Console(stderr=True)


def value(run: dict[str, Any], task: str | None, metric: str) -> float:
    return float(run[metric] if task is None else run["test"].get(task, {}).get(metric, math.nan))


def served_delta_m(test: dict[str, dict[str, float]], teachers: dict[str, Any]) -> float:
    """Δm over the tasks the connector serves only (depth, semseg): detection's mAP@0.5, tiny in the quick preset,
    moves the all-task Δm by several points from seed to seed without the connector touching it."""
    primary = {t: TASKS.get(t).primary_metric for t in SERVED}
    directions = {t: {m: TASKS.get(t).metric_directions[m]} for t, m in primary.items()}
    return delta_m({t: {m: test[t][m]} for t, m in primary.items()},
                   {t: {m: teachers[REFERENCE_TEACHERS[t]][t][m]} for t, m in primary.items()},
                   directions, convention="primary", primary=primary)


def compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric: each variant's mean ± std, and the paired difference (treated − reference) with its SE."""
    rows = []
    for label, task, metric, up in [*METRICS, *DELTAS]:
        by_variant = {v: {r["seed"]: value(r, task, metric) for r in runs if r["variant"] == v} for v in VARIANTS}
        seeds = sorted(set(by_variant[REFERENCE]) & set(by_variant[TREATED]))
        diffs = [by_variant[TREATED][s] - by_variant[REFERENCE][s] for s in seeds]
        d_mean, d_std = mean_std(diffs)
        se = d_std / math.sqrt(len(diffs)) if diffs and not math.isnan(d_std) else math.nan
        rows.append({
            "metric": label, "task": task, "key": metric, "higher_is_better": up,
            **{v: dict(zip(("mean", "std"), mean_std(by_variant[v].values()))) for v in VARIANTS},
            "diff": {"mean": d_mean, "std": d_std, "se": se, "seeds": seeds, "values": diffs},
            "exceeds_2se": bool(not math.isnan(se) and abs(d_mean) > 2 * se),
            "better": None if math.isnan(d_mean) or d_mean == 0 else (d_mean > 0) == up,
        })
    return rows


def pm(stat: dict[str, float], digits: int = 4) -> str:
    if math.isnan(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.{digits}f}" + ("" if math.isnan(stat["std"]) else f" ± {stat['std']:.{digits}f}")


def verdict_cell(row: dict[str, Any]) -> str:
    if row["better"] is None:
        return "no change"
    word = "better" if row["better"] else "worse"
    return f"{word}, > 2 SE" if row["exceeds_2se"] else f"{word}, within 2 SE"


def table_rows(comparison: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in comparison:
        digits = 2 if row["task"] is None else 4
        d = row["diff"]
        diff = ("n/a" if math.isnan(d["mean"])
                else f"{d['mean']:+.{digits}f} ± {d['std']:.{digits}f} (SE {d['se']:.{digits}f})")
        out.append([row["metric"] + (" ↑" if row["higher_is_better"] else " ↓"), pm(row[REFERENCE], digits),
                    pm(row[TREATED], digits), diff, verdict_cell(row)])
    return out


HEADERS = ["metric", REFERENCE, TREATED, "Δ connector − plain (mean ± std, paired)", "verdict"]


def markdown(comparison: list[dict[str, Any]], runs: list[dict[str, Any]], teachers: dict[str, Any],
             meta: dict[str, Any]) -> str:
    lines = [
        "# JointDistill's connector (feedback weighting with and without `connector: true`)", "",
        "Command:", "", "```", meta["command"], "```", "",
        f"Preset `{meta['preset']}` ({meta['student_steps']} student steps, batch {meta['batch']}, "
        f"{meta['height']}×{meta['width']}, checkpoint `best` on validation), student seeds {meta['seeds']}, data and "
        f"teachers from seed {DATA_SEED}, test split of {meta['test_images']} images; {meta['runtime']}, wall "
        f"{meta['wall_s']:.0f} s. Connector: the option's defaults (width {meta['connector_width']}, stride "
        f"{meta['connector_stride']}); it serves depth and semseg, the detection teacher teaches directly in both "
        "variants. Δ is paired by seed; \"> 2 SE\" marks a mean difference larger than twice its standard error.",
        "", *table_header(HEADERS, "lrrrl"),
    ]
    lines += [table_row(r) for r in table_rows(comparison)]
    lines.append("")
    for d in (r for r in comparison if r["task"] is None):
        lines.append(f"- {d['metric']}: connector {d['diff']['mean']:+.2f} points on average "
                     f"({sum(v > 0 for v in d['diff']['values'])} of {len(d['diff']['values'])} seeds better); "
                     + ("the difference exceeds two standard errors." if d["exceeds_2se"]
                        else "within two standard errors (not distinguishable from seed noise)."))
    lines += ["", "Teachers on the same test split:", "",
              *table_header(["teacher", "depth AbsRel", "depth δ1", "semseg mIoU", "detection mAP@0.5"])]
    for name, m in teachers.items():
        lines.append(table_row([name, fmt(m.get("depth", {}).get("abs_rel", math.nan)),
                                fmt(m.get("depth", {}).get("delta1", math.nan)),
                                fmt(m.get("semseg", {}).get("miou", math.nan)),
                                fmt(m.get("detection", {}).get("map50", math.nan))]))
    lines += ["", "Per run (checkpoint best):", "",
              *table_header(["variant", "seed", "Δm (%)", "Δm depth+semseg (%)", "AbsRel", "δ1", "mIoU", "mAP@0.5",
                             "best step", "step ms", "connector mix (last validation)"], "lrrrrrrrrrl")]
    for r in runs:
        mix = "; ".join(f"{t}: " + ", ".join(f"{k} {w:.2f}" for k, w in ws.items())
                        for t, ws in (r.get("connector_mix") or {}).items()) or "–"
        lines.append(table_row([r["variant"], r["seed"], f"{r['delta_m']:+.2f}", f"{r['delta_m_served']:+.2f}",
                                *(fmt(value(r, t, m)) for t, m in (("depth", "abs_rel"), ("depth", "delta1"),
                                                                     ("semseg", "miou"), ("detection", "map50"))),
                                r["best_step"], fmt(1000 * r["median_step_time_s"], 1), mix]))
    return "\n".join(lines) + "\n"


def last_feedback(run_dir: Path) -> dict[str, Any]:
    """The last validation's feedback record (weights, and the connector's mix when it has one)."""
    records = [json.loads(line) for line in (run_dir / "val.jsonl").read_text().splitlines() if line.strip()]
    updates = [r["teacher_weighting"] for r in records if "teacher_weighting" in r]
    return updates[-1] if updates else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", choices=sorted(demo.PRESETS))
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated student seeds (at least 3 for the SE)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"student steps (default: {QUICK_STEPS} for quick, else the preset's)")
    parser.add_argument("--out", default="runs/bench_connector")
    parser.add_argument("--results", default="benchmarks/results", help="folder of connector.{json,md}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (training and evaluation)")
    parser.add_argument("--force", action="store_true", help="retrain runs that already finished")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    preset = demo.PRESETS[args.preset]
    steps = args.steps or (QUICK_STEPS if args.preset == "quick" else preset.student_steps)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    console.print(f"[bold]data and teachers[/] (preset {args.preset}, seed {DATA_SEED}, cache {demo.cache_root()})")
    setup = demo.prepare(args.preset, DATA_SEED, workers=args.threads, log=console.print)
    teachers = setup.teacher_metrics(device())

    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for name, distill in VARIANTS.items():
            run_dir = out / name / f"seed{seed}"
            cfg = setup.student_config(seed=seed, distill=distill)
            cfg["train"].update(seed=seed, threads=args.threads)
            cfg["train"]["max_steps"] = steps
            if (run_dir / "summary.json").exists() and not args.force:
                console.print(f"{name} seed {seed}: reusing {run_dir}")
            else:
                console.print(f"{name} seed {seed}: training into {run_dir}")
                shutil.rmtree(run_dir, ignore_errors=True)
                t0 = time.perf_counter()
                polydistill.train(cfg, run_dir)
                console.print(f"  done in {time.perf_counter() - t0:.1f} s")
            scored = setup.score(run_dir / "checkpoints" / "best", teachers, device())
            last = setup.score(run_dir / "checkpoints" / "last", teachers, device())
            summary = json.loads((run_dir / "summary.json").read_text())
            update = last_feedback(run_dir)
            runs.append({
                "variant": name, "seed": seed, "run_dir": str(run_dir), "distill": distill,
                "test": scored["test"], "delta_m": scored["delta_m"],
                "delta_m_served": served_delta_m(scored["test"], teachers), "test_last": last["test"],
                "delta_m_last": last["delta_m"], "delta_m_served_last": served_delta_m(last["test"], teachers),
                "best_step": summary.get("best_step"),
                "steps": summary.get("steps"), "train_seconds": summary.get("train_seconds"),
                "median_step_time_s": median_step_time(run_dir, cfg["data"]["batch_size"]),
                "teacher_weights": update.get("weights"), "connector_mix": update.get("connector_mix"),
            })

    from polydistill.distill.weighting.feedback import FeedbackOptions

    defaults = FeedbackOptions()
    meta = {
        "command": command_line("benchmarks.connector", argv), "preset": args.preset, "seeds": seeds,
        "data_seed": DATA_SEED, "student_steps": steps, "batch": preset.student_batch,
        "height": preset.height, "width": preset.width, "test_images": preset.test_images,
        "connector_width": defaults.connector_width, "connector_stride": defaults.connector_stride,
        "runtime": f"PyTorch {torch.__version__}, {device()}, {torch.get_num_threads()} thread(s), load average "
                   f"at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        "polydistill": polydistill.__version__, "cache": str(demo.cache_root()),
        "wall_s": time.perf_counter() - t_start,
    }
    comparison = compare(runs)
    result = {"meta": meta, "teachers": teachers, "runs": runs, "comparison": comparison}
    json_file, md_file = write_results(Path(args.results), result, markdown(comparison, runs, teachers, meta),
                                       name="connector")
    print_table(f"connector vs plain feedback, preset {args.preset}, seeds {seeds}", HEADERS, table_rows(comparison),
                "lrrrl")
    print(f"wrote {json_file} and {md_file}")


if __name__ == "__main__":
    main()
