"""Does training from the teacher-output cache give the same student as running the teachers online?

The demo student (``polydistill.demo.prepare(...).student_config``, same data, teachers, seed and budget) is trained
twice: from the cache (``distill.precompute_teachers: true``, the default) and with the three teachers run on every
augmented batch (``false``). Both are evaluated on the demo's test split. They cannot be bit-identical — the
cache stores fp16 maps computed on the un-augmented image and moves them with the flip, while the online
teachers see the flipped image (a CNN is not exactly flip-equivariant) — so the question is whether the
difference is within seed noise (the weighting benchmark's seed-to-seed spread is the yardstick).

    python -m benchmarks.cache_equivalence [--preset default] [--seed 0] [--out runs/bench_cache_equivalence]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

import polydistill
from polydistill import demo

from .common import command_line, markdown_table, write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(demo.PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_cache_equivalence")
    args = parser.parse_args(argv)
    out = Path(args.out)
    setup = demo.prepare(args.preset, 0)
    teacher_metrics = setup.teacher_metrics("cpu")
    results = {}
    for name, precompute in (("cached", True), ("online", False)):
        cfg = setup.student_config(seed=args.seed)
        cfg["distill"]["precompute_teachers"] = precompute
        shutil.rmtree(out / name, ignore_errors=True)
        start = time.perf_counter()
        polydistill.train(cfg, out / name)
        seconds = time.perf_counter() - start
        score = setup.score(out / name, teacher_metrics, "cpu")
        results[name] = {"test": score["test"], "delta_m": score["delta_m"], "train_s": seconds}
    diff = {
        "abs_rel": results["cached"]["test"]["depth"]["abs_rel"] - results["online"]["test"]["depth"]["abs_rel"],
        "miou": results["cached"]["test"]["semseg"]["miou"] - results["online"]["test"]["semseg"]["miou"],
        "delta_m": results["cached"]["delta_m"] - results["online"]["delta_m"],
    }
    lines = [f"# Cached vs online teachers ({args.preset} preset, seed {args.seed})", "",
             f"Command: `{command_line('benchmarks.cache_equivalence', argv)}`; torch {torch.__version__}", "",
             *markdown_table(["student", "depth AbsRel", "semseg mIoU", "Δm vs teachers (%)", "training wall time"],
                             [[name, f"{r['test']['depth']['abs_rel']:.4f}", f"{r['test']['semseg']['miou']:.4f}",
                               f"{r['delta_m']:+.2f}", f"{r['train_s']:.0f} s"] for name, r in results.items()],
                             align="lllll")]
    lines += ["", f"Difference (cached − online): AbsRel {diff['abs_rel']:+.4f}, mIoU {diff['miou']:+.4f}, "
              f"Δm {diff['delta_m']:+.2f} points."]
    write_results(out, {"results": results, "difference": diff}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
