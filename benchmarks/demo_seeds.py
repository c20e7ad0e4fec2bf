"""The demo student over several training seeds: how much of its margin over the targets is luck.

What is measured. The demo's data, cached teachers and student recipe (``polydistill.demo.prepare``, data seed
0), with only ``train.seed`` changed: it sets the student's initial weights, the order of the pool and the
augmentation draws. The students train side by side exactly as the demo trains its two students (one
process each, an equal share of the CPU threads), so seed 0 reproduces the demo's student on a machine
with the demo's thread count per student. For every seed: test metrics (checkpoint chosen on
validation), retention against the reference teacher of each task, and Δm; then mean ± std.

    python -m benchmarks.demo_seeds [--seeds 0,1,2] [--preset default] [--out runs/bench_demo_seeds]

Writes OUT/seed<k>/ (the runs), OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import polydistill
from polydistill import demo

from .common import command_line, table_header, table_row, write_results

DATA_SEED = 0  # the demo's data and teachers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="default", choices=sorted(demo.PRESETS))
    parser.add_argument("--out", default="runs/bench_demo_seeds")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    setup = demo.prepare(args.preset, DATA_SEED)
    jobs = []
    for seed in seeds:
        cfg = setup.student_config(progress=True)
        cfg["train"]["seed"] = seed
        jobs.append((cfg, out / f"seed{seed}"))
    print(f"training {len(seeds)} students side by side (seeds {seeds})", flush=True)
    seconds = demo.train_runs(jobs, side_by_side=len(jobs) > 1)

    teacher_metrics = setup.teacher_metrics("cpu")
    rows: dict[str, Any] = {}
    for seed, (_, run_dir) in zip(seeds, jobs):
        compared = setup.score(run_dir, teacher_metrics, "cpu")
        metrics = compared["test"]
        primary = {t: type(task).primary_metric for t, task in polydistill.load_student(run_dir).tasks.items()}
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
        "command": command_line("benchmarks.demo_seeds", argv),
        "preset": args.preset, "seeds": seeds, "train_seconds": seconds,
        "teachers": {t: teacher_metrics[n][t] for t, n in demo.REFERENCE_TEACHERS.items()},
        "per_seed": rows, "summary": summary,
    }
    write_results(out, result, _markdown(result))
    print(_markdown(result))


def _mean_std(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def _markdown(result: dict[str, Any]) -> str:
    tasks = list(result["summary"]["retention"])
    metric_names = {"depth": "AbsRel", "semseg": "mIoU", "detection": "mAP@0.5"}
    head = ["seed", *[f"{metric_names.get(t, t)}" for t in tasks], *[f"retention {t}" for t in tasks], "Δm %"]
    lines = [f"Command: `{result['command']}`", "", *table_header(head, "l" * len(head))]
    for seed, row in result["per_seed"].items():
        cells = [seed, *[f"{row['metrics'][t]:.4f}" for t in tasks], *[f"{row['retention'][t]:.3f}" for t in tasks],
                 f"{row['delta_m']:.2f}"]
        lines.append(table_row(cells))
    s = result["summary"]
    lines.append("| mean ± std | " + " | ".join(
        [*[f"{s['metrics'][t][0]:.4f} ± {s['metrics'][t][1]:.4f}" for t in tasks],
         *[f"{s['retention'][t][0]:.3f} ± {s['retention'][t][1]:.3f}" for t in tasks],
         f"{s['delta_m'][0]:.2f} ± {s['delta_m'][1]:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
