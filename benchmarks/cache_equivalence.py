"""Does training from the teacher-output cache give the same student as running the teachers online?

The demo student (``polydistill.demo.story.student_config``, same data, teachers, seed and budget) is trained twice:
from the cache (``distill.precompute_teachers: true``, the default) and with the three teachers run on every
augmented batch (``false``). Both are evaluated on the demo's test split. They cannot be bit-identical — the
cache stores fp16 maps computed on the un-augmented image and moves them with the flip, while the online
teachers see the flipped image (a CNN is not exactly flip-equivariant) — so the question is whether the
difference is within seed noise (the weighting benchmark's seed-to-seed spread is the yardstick).

    PYTHONPATH=src python benchmarks/cache_equivalence.py [--preset default] [--seed 0]
                                                          [--out runs/bench_cache_equivalence]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from polydistill.checkpoint import load_student_model
from polydistill.config import load_config
from polydistill.demo.story import (
    PRESETS,
    compare_with_teachers,
    evaluate_teachers,
    generate_data,
    student_config,
    test_set,
    train_teachers,
)
from polydistill.evaluation.evaluate import evaluate, student_predictor
from polydistill.pipeline.train import train_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_cache_equivalence")
    args = parser.parse_args(argv)
    preset, out = PRESETS[args.preset], Path(args.out)
    splits, fps = generate_data(preset, 0, None)
    teachers = train_teachers(preset, splits, fps, 0, False, print)
    test = test_set(preset, splits)
    _, teacher_metrics = evaluate_teachers(teachers, test, "cpu")
    results = {}
    for name, precompute in (("cached", True), ("online", False)):
        cfg = student_config(preset, splits, teachers, seed=args.seed, progress=False)
        cfg["distill"]["precompute_teachers"] = precompute
        shutil.rmtree(out / name, ignore_errors=True)
        start = time.perf_counter()
        train_run(load_config(base=cfg), out / name)
        seconds = time.perf_counter() - start
        model, tasks, _ = load_student_model(out / name)
        metrics = evaluate(student_predictor(model, tasks), tasks, test, device="cpu")
        delta = compare_with_teachers(metrics, teacher_metrics, tasks)["delta_m"]
        results[name] = {"test": metrics, "delta_m": delta, "train_s": seconds}
    diff = {
        "abs_rel": results["cached"]["test"]["depth"]["abs_rel"] - results["online"]["test"]["depth"]["abs_rel"],
        "miou": results["cached"]["test"]["semseg"]["miou"] - results["online"]["test"]["semseg"]["miou"],
        "delta_m": results["cached"]["delta_m"] - results["online"]["delta_m"],
    }
    lines = [f"# Cached vs online teachers ({args.preset} preset, seed {args.seed})", "",
             f"Command: `{' '.join(shlex.quote(a) for a in sys.argv)}`; torch {torch.__version__}", "",
             "| student | depth AbsRel | semseg mIoU | Δm vs teachers (%) | training wall time |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['test']['depth']['abs_rel']:.4f} | {r['test']['semseg']['miou']:.4f} | "
                     f"{r['delta_m']:+.2f} | {r['train_s']:.0f} s |")
    lines += ["", f"Difference (cached − online): AbsRel {diff['abs_rel']:+.4f}, mIoU {diff['miou']:+.4f}, "
              f"Δm {diff['delta_m']:+.2f} points."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"results": results, "difference": diff}, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
