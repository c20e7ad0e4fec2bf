"""Cold and warm wall time of ``polydistill demo`` for this tree and an earlier release, side by side.

Cold: an empty demo cache (``POLYDISTILL_CACHE`` pointed at a fresh folder under OUT), so data, teachers
and (in releases that have it) the teacher-output cache are built. Warm: the same command again on that
cache. The runs alternate between the two trees (before cold, after cold, before warm, after warm) so both
see the machine in the same state; each is a fresh ``python -m`` process. Each release is checked out
with ``git worktree`` under OUT (``--after`` defaults to HEAD) and runs with the same interpreter and packages,
so edits in the working tree during the benchmark cannot leak into it.

    python -m benchmarks.demo_wall_time --before 881352e [--after HEAD] [--preset default] [--out runs/bench_demo_time]

Prints and writes OUT/results.md and OUT/results.json: wall time and the demo's own phase timings
(``metrics.json``: data, teachers, distillation, label-only student, evaluation), peak RSS, and the
student's test metrics of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import command_line, table_header, write_results

REPO = Path(__file__).resolve().parents[1]
PHASES = ("data_s", "teachers_s", "distill_s", "label_only_s", "eval_s")


def run_demo(src: Path, cache: Path, out: Path, preset: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "POLYDISTILL_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", "from polydistill.cli import app; app()", "demo", "--out", str(out),
           "--preset", preset, "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"demo failed in {src}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    student = metrics["student"]
    return {"wall_s": wall, "phases": {k: metrics["timings"].get(k) for k in PHASES},
            "peak_rss_mb": metrics.get("memory", {}).get("peak_rss_mb"),
            "abs_rel": student["depth"]["abs_rel"], "miou": student["semseg"]["miou"],
            "speed_ratio": metrics.get("speed", {}).get("ratio")}


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = ["# `polydistill demo` wall time: before and after", "", "Command:", "", "```", meta["command"], "```", "",
             f"Before: `{meta['before']}`; after: `{meta['after']}`. Preset `{meta['preset']}`, {meta['cpus']} CPUs, "
             f"load average {meta['load_start']:.2f} at the start. Order of the runs: "
             + ", ".join(meta["order"]) + ".", "",
             *table_header(["run", "wall", "data", "teachers", "distillation", "label-only", "evaluation",
                            "peak RSS MB", "AbsRel", "mIoU"])]
    for name in meta["order"]:
        r = results["runs"][name]
        p = r["phases"]
        phases = " | ".join(f"{p[k]:.0f} s" if p.get(k) is not None else "n/a" for k in PHASES)
        rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "n/a"
        lines.append(f"| {name} | {minutes(r['wall_s'])} | {phases} | {rss} | {r['abs_rel']:.4f} | {r['miou']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the earlier release")
    parser.add_argument("--after", default="HEAD", help="git ref of the release to compare (default HEAD)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--out", default="runs/bench_demo_time")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    refs = {"before": args.before, "after": args.after}
    trees = {}
    for name, ref in refs.items():
        tree = out / f"{name}_tree"
        if tree.exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--force", "--detach", str(tree), ref],
                       check=True, capture_output=True)
        trees[name] = tree / "src"
    commits = {name: subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True,
                                    text=True).stdout.strip() for name, ref in refs.items()}
    for name in trees:
        shutil.rmtree(out / f"cache_{name}", ignore_errors=True)
    order = [("before", "cold"), ("after", "cold"), ("before", "warm"), ("after", "warm")]
    meta = {"command": command_line("benchmarks.demo_wall_time", argv),
            "before": commits["before"], "after": commits["after"], "preset": args.preset,
            "cpus": os.cpu_count(), "load_start": os.getloadavg()[0], "order": [f"{t} {k}" for t, k in order]}
    results: dict[str, Any] = {"meta": meta, "runs": {}}
    for tree, kind in order:
        print(f"{tree} {kind} ...", flush=True)
        r = run_demo(trees[tree], out / f"cache_{tree}", out / f"demo_{tree}_{kind}", args.preset)
        results["runs"][f"{tree} {kind}"] = r
        print(f"  {minutes(r['wall_s'])}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    write_results(out, results, markdown(results))
    print(markdown(results))
    for name in trees:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(out / f"{name}_tree")],
                       check=False)


if __name__ == "__main__":
    main()
