"""The demo student over several training seeds: how much of its margin over the targets is luck.

What is measured. The demo's data, cached teachers and student recipe (``polydistill.demo.story``, data seed
0), with only ``train.seed`` changed: it sets the student's initial weights, the order of the pool and the
augmentation draws. The students train side by side exactly as the demo trains its two students (one
process each, an equal share of the CPU threads), so seed 0 reproduces the demo's student on a machine
with the demo's thread count per student. For every seed: test metrics (checkpoint chosen on
validation), retention against the reference teacher of each task, and Δm; then mean ± std.

    PYTHONPATH=src python benchmarks/demo_seeds.py [--seeds 0,1,2] [--preset default] [--out runs/bench_demo_seeds]

Writes OUT/seed<k>/ (the runs), OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from polydistill.checkpoint import load_student_model
from polydistill.demo.story import (
    PRESETS,
    REFERENCE_TEACHERS,
    compare_with_teachers,
    evaluate_teachers,
    generate_data,
    student_config,
    test_set,
    train_runs,
    train_teachers,
)
from polydistill.evaluation.evaluate import evaluate, student_predictor

DATA_SEED = 0  # the demo's data and teachers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--out", default="runs/bench_demo_seeds")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    preset = PRESETS[args.preset]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    splits, split_fps = generate_data(preset, DATA_SEED, None)
    teacher_runs = train_teachers(preset, splits, split_fps, DATA_SEED, False, print)
    jobs = []
    for seed in seeds:
        cfg = student_config(preset, splits, teacher_runs, seed=DATA_SEED, progress=True)
        cfg["train"]["seed"] = seed
        jobs.append((cfg, out / f"seed{seed}"))
    print(f"training {len(seeds)} students side by side (seeds {seeds})", flush=True)
    seconds = train_runs(jobs, side_by_side=len(jobs) > 1)

    test = test_set(preset, splits)
    _, teacher_metrics = evaluate_teachers(teacher_runs, test, "cpu")
    rows: dict[str, Any] = {}
    for seed, (_, run_dir) in zip(seeds, jobs):
        model, tasks, _ = load_student_model(run_dir)
        metrics = evaluate(student_predictor(model, tasks), tasks, test, device="cpu")
        compared = compare_with_teachers(metrics, teacher_metrics, tasks)
        primary = {t: type(task).primary_metric for t, task in tasks.items()}
        rows[str(seed)] = {
            "metrics": {t: metrics[t][m] for t, m in primary.items()},
            "retention": {t: compared["retention"][t][m] for t, m in primary.items()},
            "delta_m": compared["delta_m"],
        }
    primary = {t: m for t, m in next(iter(rows.values()))["metrics"].items()}
    summary = {
        key: {t: _mean_std([r[key][t] for r in rows.values()]) for t in primary} for key in ("metrics", "retention")
    }
    summary["delta_m"] = _mean_std([r["delta_m"] for r in rows.values()])
    result = {
        "command": "PYTHONPATH=src python " + " ".join(shlex.quote(a) for a in sys.argv),
        "preset": args.preset, "seeds": seeds, "train_seconds": seconds,
        "teachers": {t: teacher_metrics[n][t] for t, n in REFERENCE_TEACHERS.items()},
        "per_seed": rows, "summary": summary,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(_markdown(result))
    print(_markdown(result))


def _mean_std(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def _markdown(result: dict[str, Any]) -> str:
    tasks = list(result["summary"]["retention"])
    metric_names = {"depth": "AbsRel", "semseg": "mIoU", "detection": "mAP@0.5"}
    head = ["seed", *[f"{metric_names.get(t, t)}" for t in tasks], *[f"retention {t}" for t in tasks], "Δm %"]
    lines = [f"Command: `{result['command']}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed, row in result["per_seed"].items():
        cells = [seed, *[f"{row['metrics'][t]:.4f}" for t in tasks], *[f"{row['retention'][t]:.3f}" for t in tasks],
                 f"{row['delta_m']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    s = result["summary"]
    lines.append("| mean ± std | " + " | ".join(
        [*[f"{s['metrics'][t][0]:.4f} ± {s['metrics'][t][1]:.4f}" for t in tasks],
         *[f"{s['retention'][t][0]:.3f} ± {s['retention'][t][1]:.3f}" for t in tasks],
         f"{s['delta_m'][0]:.2f} ± {s['delta_m'][1]:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
