"""GPU check: the quick demo under bf16 autocast, and distillation images/s at 224×224 and 512×512 with
cached and online teachers.

What runs, in one invocation (each training in this process, one after another, nothing else on the GPU):

1. ``demo``: ``polydistill demo --preset quick --mixed-precision bf16`` in a fresh cache under OUT (data,
   four teachers, two students, evaluation); its wall time and the student's test metrics.
2. ``throughput``, for every ``--sizes`` entry S: ShapeScenes at S×S (``--images`` images with depth,
   classes and boxes), three single-task teachers of the demo's architecture (ResNet-18 + FPN: depth,
   semseg, detection) trained for ``--teacher-steps`` steps at that size (their weights do not change
   their cost), and the demo student (MobileNetV3-small + FPN, three tasks) distilled from them with
   ``train.mixed_precision`` = ``--precision``, batch ``--batch``, ``--steps`` steps:
   *online* — the teachers run on every batch (``distill.precompute_teachers: false``) —, and *cached* —
   outputs read from the teacher-output cache, whose build is timed separately. images/s is the median of
   ``steps.csv``'s ``samples_per_s`` after ``--warmup`` steps (the same measure as :mod:`benchmarks.speed`).

It runs on the CPU too (the test does, at 32×32 with two steps, to keep it working), but its numbers only
mean something on a CUDA machine: ``python -m benchmarks.gpu_check --out runs/gpu_check``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import polydistill
from polydistill.data.shapescenes import generate_split
from polydistill.demo import PRESETS, STUDENT_TASK_OPTIONS, TASK_OPTIONS

from .common import read_steps, table_header, table_row, write_results
from .speed import throughput


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (no CUDA)"


def run_demo_bf16(out: Path, precision: str) -> dict[str, Any]:
    env = {**os.environ, "POLYDISTILL_CACHE": str(out / "demo_cache")}
    cmd = [sys.executable, "-m", "polydistill.cli", "demo", "--preset", "quick", "--out", str(out / "demo"),
           "--no-progress", "--mixed-precision", precision]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the quick demo failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    metrics = json.loads((out / "demo" / "metrics.json").read_text())
    return {"wall_s": time.perf_counter() - t0, "student": metrics["student"],
            "mixed_precision": metrics["mixed_precision"]}


def base_config(train: Path, size: int, tasks: dict, backbone: str, neck: int, steps: int, batch: int,
                precision: str) -> dict[str, Any]:
    return {
        "data": {"train": str(train), "height": size, "width": size, "batch_size": batch,
                 "augment": {"hflip": 0.5}},
        "tasks": tasks,
        "student": {"backbone": backbone, "neck_channels": neck},
        "train": {"max_steps": steps, "lr": 3e-3, "warmup_steps": 1, "log_every": 1, "progress": False,
                  "report": False, "mixed_precision": precision, "val_every": 10**9},
    }


def throughput_at(size: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    preset = PRESETS["default"]
    root = out / f"s{size}"
    if root.exists():  # run folders belong to one run: never mix with (or delete) an earlier check's
        raise SystemExit(f"{root} exists from an earlier check; choose a new --out (or remove it yourself)")
    data = generate_split(root / "data", args.images, seed=size, height=size, width=size,
                          labels=("depth", "semseg", "boxes"))
    teachers = {}
    for name, task in (("depth_teacher", "depth"), ("seg_teacher", "semseg"), ("det_teacher", "detection")):
        cfg = base_config(data, size, {task: TASK_OPTIONS[task]}, preset.teacher_backbone, preset.teacher_neck,
                          args.teacher_steps, args.batch, args.precision)
        polydistill.train(cfg, root / name)
        teachers[name] = root / name
    result: dict[str, Any] = {"size": size, "images": args.images, "batch": args.batch}
    for mode in ("online", "cached"):
        cfg = base_config(data, size, STUDENT_TASK_OPTIONS, preset.student_backbone, preset.student_neck, args.steps,
                          args.batch, args.precision)
        cfg["teachers"] = [{"name": n, "source": "checkpoint", "path": str(p)} for n, p in teachers.items()]
        cfg["distill"] = {"teacher_cache": str(root / "cache"), "precompute_teachers": mode == "cached"}
        config = polydistill.load_config(cfg)
        if mode == "cached":
            t0 = time.perf_counter()
            polydistill.cache_teachers(config)
            result["cache_build_s_per_image"] = (time.perf_counter() - t0) / args.images
        run = polydistill.train(config, root / f"student_{mode}")
        result[mode] = throughput(read_steps(run.run_dir / "steps.csv"), args.warmup, args.batch)
    result["cached_over_online"] = result["cached"]["images_per_s"] / result["online"]["images_per_s"]
    return result


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# GPU check — {results['device']}", ""]
    if "demo" in results:
        d = results["demo"]
        st = d["student"]
        lines += [f"Quick demo with `--mixed-precision {d['mixed_precision']}`: {d['wall_s']:.0f} s; student AbsRel "
                  f"{st['depth']['abs_rel']:.3f}, mIoU {st['semseg']['miou']:.3f}, "
                  f"mAP@0.5 {st['detection']['map50']:.3f} (quick preset: toy sizes).", ""]
    lines += [f"Distillation, demo student from three ResNet-18 teachers, `{results['precision']}` autocast:", "",
              *table_header(["size", "batch", "online img/s", "cached img/s", "cached / online",
                             "cache build ms/img"])]
    for r in results["throughput"]:
        lines.append(table_row([f"{r['size']}×{r['size']}", r["batch"], f"{r['online']['images_per_s']:.1f}",
                                f"{r['cached']['images_per_s']:.1f}", f"{r['cached_over_online']:.2f}×",
                                f"{1000 * r['cache_build_s_per_image']:.1f}"]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,512", help="comma-separated square input sizes")
    parser.add_argument("--images", type=int, default=256, help="ShapeScenes images per size")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40, help="timed distillation steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the images/s median")
    parser.add_argument("--teacher-steps", type=int, default=5, help="steps to give each teacher real weights")
    parser.add_argument("--precision", default="bf16", choices=("no", "bf16", "fp16"))
    parser.add_argument("--skip-demo", action="store_true", help="only the throughput section")
    parser.add_argument("--out", default="runs/gpu_check")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"device": device_name(), "precision": args.precision, "args": vars(args)}
    if not args.skip_demo:
        results["demo"] = run_demo_bf16(out, args.precision)
    results["throughput"] = [throughput_at(int(s), args, out) for s in args.sizes.split(",")]
    table = markdown(results)
    write_results(out, results, table, name="gpu_check")
    print(table)
    return results


if __name__ == "__main__":
    main()
