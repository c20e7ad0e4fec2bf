"""Teacher-level and task-level weighting strategies compared on the demo setting.

What is measured. The demo's three teachers (``depth_teacher``, ``seg_teacher`` and the deliberately
narrow ``depth_teacher_dusk``) are distilled into the demo's student once per *variant* and seed. A
variant changes exactly one thing relative to the reference ``static`` teachers × ``equal`` tasks:

* teacher level: ``feedback``, ``rl_reinforce``, ``rl_surrogate``, ``dropout``, ``confidence``;
* task level: ``uncertainty``, ``dwa``, ``gradnorm``;
* ``trajectory``: static × equal plus the knowledge trajectory (``memory: ema``).

Everything else (data, teachers, student, budget, learning rate, schedule) is the demo's
student config (``polydistill.demo.prepare(...).student_config``). Data and teachers are built once with
data seed 0 (and cached by the demo machinery); the benchmark seed changes only the student's training
seed (``train.seed``: init, sample order, augmentation, strategies' random draws). DWA's averaging
period is ``student_steps // 12`` steps (50 for the default preset's 600 steps, 3 for ``quick``)
instead of its default of one epoch, because the demo's runs last only three epochs.

For every run: test metrics of the student on the held-out test split (``--checkpoint best``, the
default, is the checkpoint chosen on validation as the demo does; ``last`` is the final weights; both
are evaluated and saved, the option picks the one in the main table); Δm (%, primary metrics: depth
AbsRel and semseg mIoU, averaged over tasks; positive = better) against the reference teacher of each
task (``DemoSetup.score``); and the median step time over the steps after the first 20 (from
``steps.csv``'s ``samples_per_s``; step time = images per step / samples per second), reported as
overhead relative to ``static`` with the same seed.
Step times are wall-clock: compare them only between runs made on an otherwise idle machine.

Run from the repository root (runs already finished, i.e. with ``summary.json``, are reused unless
``--force``; results.json/results.md cover the variants of this invocation):

    python -m benchmarks.weighting [--preset default] [--seeds 0,1] [--only static,gradnorm]
                                   [--out runs/bench_weighting] [--threads 2] [--force]
                                   [--checkpoint best|last]

Writes OUT/<variant>/seed<k>/ (the training runs), OUT/results.json and OUT/results.md.

Caveat: ``rl`` uses equal weights during its first epoch (``warmup_epochs: 1``; 200 steps in the default
preset, 16 in quick), and the data order and initialisation are the same as static's for the same seed,
so when the best validation step falls inside that epoch the ``best`` checkpoint of ``rl`` *is* static's.
The per-run table shows the best step and Δm of the last checkpoint for that reason.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import polydistill
from polydistill import demo
from polydistill.demo import REFERENCE_TEACHERS, Preset

from .common import (
    command_line,
    device,
    mean_std,
    print_table,
    read_steps,
    table_header,
    table_row,
    write_results,
)

DATA_SEED = 0  # data and teachers: fixed; the benchmark seeds vary the student only
WARMUP_STEPS = 20  # steps left out of the step-time median (data loader start-up, allocator warm-up)
REFERENCE = "static"

console = Console(stderr=True)


def variants(preset: Preset) -> dict[str, dict[str, Any]]:
    """Variant name -> ``distill`` section; each changes one thing relative to static × equal."""
    base: dict[str, Any] = {"teacher_weighting": "static", "task_weighting": "equal"}
    dwa_period = max(1, preset.student_steps // 12)
    return {
        "static": dict(base),
        "feedback": base | {"teacher_weighting": "feedback"},
        "rl_reinforce": base | {"teacher_weighting": {"name": "rl", "update": "reinforce"}},
        "rl_surrogate": base | {"teacher_weighting": {"name": "rl", "update": "surrogate"}},
        "dropout": base | {"teacher_weighting": "dropout"},
        "confidence": base | {"teacher_weighting": "confidence"},
        "uncertainty": base | {"task_weighting": "uncertainty"},
        "dwa": base | {"task_weighting": {"name": "dwa", "period": dwa_period}},
        "gradnorm": base | {"task_weighting": "gradnorm"},
        "trajectory": base | {"trajectory": {"memory": "ema"}},
    }


def run_config(setup: demo.DemoSetup, distill: dict[str, Any], seed: int, threads: int | None,
               progress: bool) -> dict[str, Any]:
    """The demo student, distilled from all the demo's teachers with the ``distill`` section of a variant."""
    cfg = setup.student_config(seed=seed, progress=progress, distill=distill)
    cfg["train"]["seed"] = seed
    if threads:
        cfg["train"]["threads"] = threads
    return cfg


def step_times(run_dir: Path, images_per_step: int) -> list[float]:
    """Seconds per optimizer step after the first ``WARMUP_STEPS`` steps."""
    rows = read_steps(run_dir / "steps.csv")
    return [images_per_step / r["samples_per_s"] for r in rows
            if r["step"] > WARMUP_STEPS and r.get("samples_per_s", 0) > 0]


def median_step_time(run_dir: Path, images_per_step: int) -> float:
    times = step_times(run_dir, images_per_step)
    return statistics.median(times) if times else float("nan")


def fmt(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_pm(mean: float, std: float, digits: int = 2, sign: bool = True) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std:.{digits}f}"


def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per variant: mean and std over seeds of the test metrics, Δm and the step-time overhead."""
    out = {}
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        if not mine:
            continue
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in mine], "distill": mine[0]["distill"]}
        for key, get in {
            "depth_abs_rel": lambda r: r["test"]["depth"]["abs_rel"],
            "depth_rmse": lambda r: r["test"]["depth"]["rmse"],
            "depth_delta1": lambda r: r["test"]["depth"]["delta1"],
            "semseg_miou": lambda r: r["test"]["semseg"]["miou"],
            "semseg_pixel_acc": lambda r: r["test"]["semseg"]["pixel_acc"],
            "delta_m": lambda r: r["delta_m"],
            "step_time_s": lambda r: r["median_step_time_s"],
            "step_time_overhead_pct": lambda r: r["step_time_overhead_pct"],
        }.items():
            mean, std = mean_std([float(get(r)) for r in mine])
            entry[key] = {"mean": mean, "std": std}
        out[name] = entry
    return out


def verdict(summary: dict[str, dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    """One line: the best adaptive variant by mean Δm and whether it beats static."""
    adaptive = {n: s for n, s in summary.items() if n != REFERENCE and not math.isnan(s["delta_m"]["mean"])}
    if not adaptive:
        return "No adaptive variant was run."
    best = max(adaptive, key=lambda n: adaptive[n]["delta_m"]["mean"])
    b = adaptive[best]["delta_m"]
    if REFERENCE not in summary:
        return f"Best adaptive variant by mean Δm: **{best}** ({fmt_pm(b['mean'], b['std'])} %); static was not run."
    s = summary[REFERENCE]["delta_m"]
    diff = b["mean"] - s["mean"]
    by_seed = {r["seed"]: r["delta_m"] for r in runs if r["variant"] == REFERENCE}
    paired = [r["delta_m"] - by_seed[r["seed"]] for r in runs if r["variant"] == best and r["seed"] in by_seed]
    wins = sum(d > 0 for d in paired)
    beats = "beats" if diff > 0 else "does not beat"
    return (f"Best adaptive variant by mean Δm: **{best}** ({fmt_pm(b['mean'], b['std'])} %); it {beats} static "
            f"({fmt_pm(s['mean'], s['std'])} %) by {diff:+.2f} points on average, better on {wins} of "
            f"{len(paired)} seeds.")


def table_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, s in summary.items():
        rows.append([
            name,
            fmt(s["depth_abs_rel"]["mean"]),
            fmt(s["depth_delta1"]["mean"]),
            fmt(s["semseg_miou"]["mean"]),
            fmt_pm(s["delta_m"]["mean"], s["delta_m"]["std"]),
            "0 (reference)" if name == REFERENCE else fmt_pm(s["step_time_overhead_pct"]["mean"], float("nan"), 1),
        ])
    return rows


HEADERS = ["variant", "depth AbsRel ↓", "depth δ1 ↑", "semseg mIoU ↑", "Δm vs teachers (%) ↑",
           "step time vs static (%)"]


def markdown(summary: dict[str, dict[str, Any]], runs: list[dict[str, Any]], teacher_metrics: dict[str, Any],
             meta: dict[str, Any]) -> str:
    lines = [
        "# Weighting strategies on the demo setting",
        "",
        "Command:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Preset `{meta['preset']}` ({meta['student_steps']} student steps, batch {meta['batch']}, checkpoint "
        f"`{meta['checkpoint']}`), student seeds "
        f"{meta['seeds']}, data and teachers from seed {DATA_SEED}; test split of {meta['test_images']} images. "
        f"Metrics are means over seeds; Δm is mean ± std over seeds (primary metrics: depth AbsRel, semseg "
        f"mIoU, against {', '.join(f'{t}: {n}' for t, n in REFERENCE_TEACHERS.items())}; positive = better). "
        f"Step time: median over steps after the first {WARMUP_STEPS}, relative to static with the same seed "
        f"(wall clock; load average at start {meta['load_average']:.2f} on {meta['cpus']} CPUs, "
        f"{meta['runtime']}). DWA period: {meta['dwa_period']} steps.",
        "",
        *table_header(HEADERS),
    ]
    lines += [table_row(row) for row in table_rows(summary)]
    lines += ["", verdict(summary, runs), "", "Teachers on the same test split:", "",
              *table_header(["teacher", "depth AbsRel", "depth δ1", "semseg mIoU"])]
    for name, m in teacher_metrics.items():
        depth, seg = m.get("depth", {}), m.get("semseg", {})
        lines.append(f"| {name} | {fmt(depth.get('abs_rel', math.nan))} | {fmt(depth.get('delta1', math.nan))} | "
                     f"{fmt(seg.get('miou', math.nan))} |")
    lines += ["", "Per run:", "",
              *table_header(["variant", "seed", "Δm (%)", "AbsRel", "δ1", "mIoU", "best step", "Δm best (%)",
                             "Δm last (%)", "step ms", "step time vs static (%)"])]
    for r in runs:
        lines.append(f"| {r['variant']} | {r['seed']} | {r['delta_m']:+.2f} | {fmt(r['test']['depth']['abs_rel'])} | "
                     f"{fmt(r['test']['depth']['delta1'])} | {fmt(r['test']['semseg']['miou'])} | "
                     f"{r['best_step']} | {fmt(r['delta_m_by_checkpoint'].get('best', math.nan), 2)} | "
                     f"{fmt(r['delta_m_by_checkpoint'].get('last', math.nan), 2)} | "
                     f"{fmt(1000 * r['median_step_time_s'], 1)} | {fmt(r['step_time_overhead_pct'], 1)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=sorted(demo.PRESETS))
    parser.add_argument("--seeds", default="0,1", help="comma-separated student seeds")
    parser.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    parser.add_argument("--out", default="runs/bench_weighting")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (training and evaluation)")
    parser.add_argument("--force", action="store_true", help="retrain runs that already finished")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"],
                        help="checkpoint in the main table: best on validation (the demo's choice) or last")
    args = parser.parse_args(argv)

    preset = demo.PRESETS[args.preset]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    all_variants = variants(preset)
    names = list(all_variants) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in all_variants]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(all_variants)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    where = device()
    meta = {
        "command": command_line("benchmarks.weighting", argv),
        "preset": args.preset, "seeds": seeds, "variants": names, "data_seed": DATA_SEED,
        "student_steps": preset.student_steps, "batch": preset.student_batch, "test_images": preset.test_images,
        "dwa_period": all_variants["dwa"]["task_weighting"]["period"], "warmup_steps_excluded": WARMUP_STEPS,
        "load_average": os.getloadavg()[0], "cpus": os.cpu_count(), "cache": str(demo.cache_root()),
        "checkpoint": args.checkpoint,
        "runtime": f"PyTorch {torch.__version__}, {where}, {torch.get_num_threads()} threads",
        "polydistill": polydistill.__version__,
    }

    console.print(f"[bold]data and teachers[/] (preset {args.preset}, seed {DATA_SEED}, cache {demo.cache_root()})")
    setup = demo.prepare(args.preset, DATA_SEED, progress=args.progress, log=console.print)
    teacher_metrics = setup.teacher_metrics(where)

    images_per_step = preset.student_batch
    runs: list[dict[str, Any]] = []
    for name in names:
        for seed in seeds:
            run_dir = out / name / f"seed{seed}"
            cfg = run_config(setup, all_variants[name], seed, args.threads, args.progress)
            images_per_step = cfg["data"]["batch_size"] * cfg["train"].get("grad_accum_steps", 1)
            if (run_dir / "summary.json").exists() and not args.force:
                console.print(f"{name} seed {seed}: reusing {run_dir}")
            else:
                console.print(f"{name} seed {seed}: training into {run_dir}")
                shutil.rmtree(run_dir, ignore_errors=True)
                t0 = time.perf_counter()
                polydistill.train(cfg, run_dir)
                console.print(f"  done in {time.perf_counter() - t0:.1f} s")
            by_ckpt = {}
            for which in ("best", "last"):
                if not (run_dir / "checkpoints" / which).exists():
                    continue
                by_ckpt[which] = setup.score(run_dir / "checkpoints" / which, teacher_metrics, where)
            chosen = by_ckpt[args.checkpoint]
            summary = json.loads((run_dir / "summary.json").read_text())
            runs.append({
                "variant": name, "seed": seed, "run_dir": str(run_dir), "distill": all_variants[name],
                "checkpoint": args.checkpoint, "test": chosen["test"], "delta_m": chosen["delta_m"],
                "delta_m_other": chosen["other_conventions"], "retention": chosen["retention"],
                "best_step": summary.get("best_step"), "steps": summary.get("steps"),
                "delta_m_by_checkpoint": {k: v["delta_m"] for k, v in by_ckpt.items()},
                "test_by_checkpoint": {k: v["test"] for k, v in by_ckpt.items()},
                "median_step_time_s": median_step_time(run_dir, images_per_step),
            })

    # overhead against static with the same seed (this invocation's run, or one already on disk)
    for r in runs:
        ref_dir = out / REFERENCE / f"seed{r['seed']}"
        ref = median_step_time(ref_dir, images_per_step) if (ref_dir / "steps.csv").exists() else float("nan")
        r["static_step_time_s"] = ref
        r["step_time_overhead_pct"] = 100 * (r["median_step_time_s"] / ref - 1) if ref > 0 else float("nan")

    summary = summarise(runs, names)
    result = {"meta": meta, "teachers": teacher_metrics, "runs": runs, "summary": summary,
              "verdict": verdict(summary, runs)}
    json_file, md_file = write_results(out, result, markdown(summary, runs, teacher_metrics, meta))
    print_table(f"weighting strategies, preset {args.preset}, seeds {seeds}, checkpoint {args.checkpoint}", HEADERS,
                table_rows(summary))
    print(result["verdict"].replace("**", ""))
    print(f"wrote {json_file} and {md_file}")


if __name__ == "__main__":
    main()
