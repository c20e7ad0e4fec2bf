"""What the teacher-output cache buys: step time, build cost, size and memory on the demo setting.

What is measured, in one invocation, on the demo's data and teachers (``polydistill.demo.prepare``: data seed 0,
the three cached teachers ``depth_teacher``, ``seg_teacher``, ``depth_teacher_dusk``) and the demo
student's config (``DemoSetup.student_config``: backbone, tasks, batch, augmentation, lr, weighting), with a fixed
number of steps (``--steps``), validation moved past the last step (``train.val_every`` larger than the run,
so the only validation runs after the last timed step) and progress bars off:

* **step time** of three trainings of the same student:
  (a) ``supervised``: no teachers, labels only. It trains on the pool's *labelled* images
  (``data.labelled_only: true``): with all images most batches of the default preset (5 % labelled) carry
  no label, and such a step makes no backward pass, which would understate the step cost;
  (b) ``online``: three teachers run on every augmented batch (``distill.precompute_teachers: false``);
  (c) ``cached``: three teachers read from the on-disk cache (``precompute_teachers: true``), built before,
  separately, and timed.
  images/s = median of ``steps.csv``'s ``samples_per_s`` over the steps after the first ``--warmup`` (every
  step is logged; a step's time covers fetching its batch and the optimizer step; steps without any loss
  term are left out); step time = batch / images/s. Ratios of step times: online / supervised,
  cached / supervised and online / cached (the speed-up of the cache).
* **cache build and size**: the cache of the pool is built for the three teachers with the ``fp16``
  encoding (the default) and with ``int8`` + ``semseg_topk: 3``, each in a fresh cache folder under OUT,
  so the build is timed in this invocation. Build seconds per image from the cache's ``build.json``
  (total, and the teachers' forward time per teacher) and bytes per image per teacher and task
  (``TeacherCache.size_bytes(teacher, task) / len(cache)``).
* **scaling with the number of teachers**: the first k = 1, 2, 3 of the demo's teachers, online and cached
  (a cache per teacher set, built first); images/s and the online / cached step-time ratio. k = 3 reuses
  the runs of (b) and (c).
* **reading memory**: peak RSS of a process that opens the cache and iterates once over every sample of the
  training ``FolderDataset`` (augmentation as in training, cache attached, no model), for the pool (1×) and
  for a ``--scale``× larger folder (the pool's files hard-linked ``--scale`` times under OUT/data with fresh
  ids, cached with the three teachers in this invocation; the scaled folder and its cache are deleted
  afterwards unless ``--keep-scaled``). Cache shards are memory-mapped, and mapped pages that were read
  count in RSS while their map is open although the kernel can drop them at will, so besides the peak RSS
  the table gives the peak *anonymous* RSS (``RssAnon``, sampled every 64 samples) and the file-backed RSS
  at the end (``RssFile``).
* **data loading alone**: images/s of a ``DataLoader`` over the training set (batch as in training, random
  order, ``--steps`` batches after ``--warmup``, no model) with images only and with the cache attached,
  with ``num_workers`` 0, 1 and 2, to see whether loading bounds (c) (training uses ``num_workers: 0``).

Peak memory: every training, build, read and loader measurement runs in a fresh Python subprocess (this
module with ``--child``), which reports its own ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the peak
resident set of that process, teachers and model included) as JSON on its last line, plus its RSS right
after importing torch and polydistill (``import_rss_mb``) — nothing of earlier measurements can count.
DataLoader workers are separate processes and are not included. Every subprocess sets the same number of
torch threads (``--threads``).

Timings are wall-clock on a possibly shared machine: compare ratios measured in the same invocation (the
load average at the start and end is recorded), not absolute numbers across machines or invocations.

Run from the repository root:

    python -m benchmarks.speed [--preset default] [--steps 60] [--warmup 5] [--threads 2]
                               [--scale 10] [--only steps,cache,scaling,memory,loader]
                               [--out runs/bench_speed] [--keep-scaled]

Writes OUT/runs/<variant>/ (training runs), OUT/teacher_cache/<encoding>/ (caches), OUT/results.json and
OUT/results.md. The data and the teachers come from the demo's cache (built on first use).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader, RandomSampler

import polydistill
from polydistill import demo
from polydistill.cache import TeacherCache
from polydistill.data import build_train_transform, collate, open_dataset

from .common import command_line, print_table, read_steps, table_header, table_row, write_results

DATA_SEED = 0
SECTIONS = ("steps", "cache", "scaling", "memory", "loader")
#: cache encodings compared: name -> ``distill.cache`` section
ENCODINGS: dict[str, dict[str, Any]] = {"fp16": {"encoding": "fp16"}, "int8": {"encoding": "int8", "semseg_topk": 3}}
NO_VALIDATION = 10**9  # train.val_every: no validation inside the timed steps
LOADER_WORKERS = (0, 1, 2)
RESULT_MARK = "@@RESULT "


# ------------------------------------------------------------------------------------------ configs


def teacher_subset(teacher_runs: dict[str, Path], k: int) -> dict[str, Path]:
    """The first ``k`` of the demo's teachers (in the demo's order)."""
    return dict(list(teacher_runs.items())[:k])


def variant_config(setup: demo.DemoSetup, teacher_runs: dict[str, Path], *, steps: int, threads: int,
                   cache_dir: str | Path, precompute: bool = True, encoding: str = "fp16",
                   train_folder: str | Path | None = None) -> dict[str, Any]:
    """The demo student's config for ``steps`` timed steps; no teachers = supervised only (labelled images)."""
    cfg = setup.student_config(teacher_runs, seed=DATA_SEED, progress=False)
    cfg["train"].update(max_steps=steps, val_every=NO_VALIDATION, log_every=1, threads=threads, report=False)
    if train_folder is not None:
        cfg["data"]["train"] = str(train_folder)
    if teacher_runs:
        cfg["distill"].update(precompute_teachers=precompute, teacher_cache=str(cache_dir),
                              cache=dict(ENCODINGS[encoding]))
    else:
        cfg["data"]["labelled_only"] = True
    return cfg


# ------------------------------------------------------------------------------------------ summaries


def nan_if_none(value: Any) -> float:
    return float("nan") if value is None else float(value)


def throughput(rows: list[dict[str, float]], warmup: int, batch: int) -> dict[str, Any]:
    """Median images/s over the logged steps after ``warmup`` (steps with a NaN loss, i.e. no update, left out)."""
    speeds = [r["samples_per_s"] for r in rows
              if r.get("step", 0) > warmup and r.get("samples_per_s", 0) > 0 and not math.isnan(r.get("loss", 0.0))]
    ips = statistics.median(speeds) if speeds else float("nan")
    return {"images_per_s": ips, "step_ms": 1000 * batch / ips if ips > 0 else float("nan"), "steps_used": len(speeds),
            "images_per_s_q25_q75": (list(statistics.quantiles(speeds, n=4)[::2]) if len(speeds) > 1 else None)}


def median_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant over several rounds: the median of each round's images/s, step time and peak RSS."""
    ips = [nan_if_none(e.get("images_per_s")) for e in entries]
    med = statistics.median(ips)
    return {"images_per_s": med, "step_ms": statistics.median(e["step_ms"] for e in entries),
            "rounds_images_per_s": ips, "images_per_s_q25_q75": [min(ips), max(ips)],
            "steps_used": sum(e["steps_used"] for e in entries),
            "peak_rss_mb": statistics.median(e["peak_rss_mb"] for e in entries),
            "wall_s": statistics.median(e["wall_s"] for e in entries),
            "load_average_before": statistics.median(nan_if_none(e.get("load_average_before")) for e in entries)}


def step_ratio(slow_ips: float, fast_ips: float) -> float:
    """Step time of the first over the second, from their images/s (same batch size)."""
    if not (slow_ips > 0 and fast_ips > 0):
        return float("nan")
    return fast_ips / slow_ips


def ratios(steps: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Step-time ratios between the supervised (a), online (b) and cached (c) runs."""
    ips = {k: nan_if_none(v.get("images_per_s")) for k, v in steps.items()}
    a, b, c = (ips.get(k, float("nan")) for k in ("supervised", "online", "cached"))
    return {"online_over_supervised": step_ratio(b, a), "cached_over_supervised": step_ratio(c, a),
            "online_over_cached": step_ratio(b, c)}


def cache_summary(build: dict[str, Any]) -> dict[str, Any]:
    """Per image: build seconds (total and per teacher) and bytes per teacher/task, from a build child's report."""
    images = build["images"]
    timings = build["build_json"]
    return {
        "images": images,
        "build_s": timings["total_s"],
        "build_s_per_image": timings["total_s"] / images,
        "teacher_s_per_image": {k.split("/", 1)[1]: v / images for k, v in timings.items()
                                if k.startswith("teacher_s/")},
        "bytes_per_image": {key: size / images for key, size in build["size_bytes"].items()},
        "total_bytes_per_image": sum(build["size_bytes"].values()) / images,
        "total_bytes": sum(build["size_bytes"].values()),
        "encodings": build["encodings"],
        "peak_rss_mb": build["peak_rss_mb"],
        "child_wall_s": build["wall_s"],
    }


def scaling_summary(runs: dict[int, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per teacher count: images/s online and cached, and the online / cached step-time ratio."""
    out = {}
    for k in sorted(runs):
        online = nan_if_none(runs[k].get("online", {}).get("images_per_s"))
        cached = nan_if_none(runs[k].get("cached", {}).get("images_per_s"))
        out[str(k)] = {"teachers": runs[k].get("teachers", []), "online_images_per_s": online,
                       "cached_images_per_s": cached, "online_over_cached": step_ratio(online, cached)}
    return out


def unstable_runs(trained: dict[str, dict[str, Any]], spread: float = 2.0) -> list[str]:
    """Trainings whose per-step images/s vary more than ``spread``× between the quartiles (a disturbed timing)."""
    out = []
    for name, entry in trained.items():
        q = entry.get("images_per_s_q25_q75")
        if q and q[0] > 0 and q[1] / q[0] > spread:
            out.append(f"{name} (images/s quartiles {q[0]:.1f}–{q[1]:.1f})")
    return out


def implausible(results: dict[str, Any]) -> list[str]:
    """Orderings that more work cannot explain (a run doing less was slower): signs of a disturbed machine."""
    out = []
    r = results.get("ratios", {})
    if r.get("online_over_supervised", math.nan) < 1:
        out.append(f"online teachers ran faster than the supervised-only student (step-time ratio "
                   f"{r['online_over_supervised']:.2f})")
    if r.get("online_over_cached", math.nan) < 1:
        out.append(f"online teachers ran faster than the cache (step-time ratio {r['online_over_cached']:.2f})")
    online = [(int(k), s["online_images_per_s"]) for k, s in results.get("scaling", {}).items()]
    for (k1, a), (k2, b) in zip(online, online[1:]):
        if b > a:
            out.append(f"online training with {k2} teachers ran faster than with {k1} ({b:.1f} vs {a:.1f} images/s)")
    return out


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def fmt_bytes(value: Any) -> str:
    if value is None or math.isnan(float(value)):
        return "n/a"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


VARIANT_LABELS = {"supervised": "(a) supervised only", "online": "(b) online teachers",
                  "cached": "(c) cached teachers"}


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every number as (section, quantity, value) rows, for the console table."""
    rows: list[tuple[str, str, str]] = []
    for name, r in results.get("steps", {}).items():
        label = VARIANT_LABELS.get(name, name)
        rows += [("steps", f"{label}: images/s", fmt(r["images_per_s"])),
                 ("steps", f"{label}: step ms", fmt(r["step_ms"])),
                 ("steps", f"{label}: peak RSS MiB", fmt(r["peak_rss_mb"], 0))]
    for key, value in results.get("ratios", {}).items():
        rows.append(("steps", f"step time {key.replace('_over_', ' / ')}", fmt(value, 2)))
    for enc, c in results.get("cache", {}).items():
        rows.append(("cache", f"{enc}: build ms / image ({c['images']} images)", fmt(1000 * c["build_s_per_image"], 2)))
        for teacher, s in c["teacher_s_per_image"].items():
            rows.append(("cache", f"{enc}: {teacher} forward ms / image", fmt(1000 * s, 2)))
        for key, size in c["bytes_per_image"].items():
            rows.append(("cache", f"{enc}: {key} per image", fmt_bytes(size)))
        rows.append(("cache", f"{enc}: all outputs per image", fmt_bytes(c["total_bytes_per_image"])))
        rows.append(("cache", f"{enc}: build peak RSS MiB", fmt(c["peak_rss_mb"], 0)))
    for k, s in results.get("scaling", {}).items():
        rows += [("scaling", f"{k} teacher(s): online images/s", fmt(s["online_images_per_s"])),
                 ("scaling", f"{k} teacher(s): cached images/s", fmt(s["cached_images_per_s"])),
                 ("scaling", f"{k} teacher(s): step time online / cached", fmt(s["online_over_cached"], 2))]
    for scale, m in results.get("memory", {}).items():
        what = f"{scale}× ({m['images']} images)"
        rows += [("memory", f"{what}: peak RSS MiB", fmt(m["peak_rss_mb"], 0)),
                 ("memory", f"{what}: RSS before reading MiB", fmt(m["rss_before_mb"], 0)),
                 ("memory", f"{what}: peak anonymous RSS MiB", fmt(m["peak_anon_mb"], 0)),
                 ("memory", f"{what}: file-backed RSS at end MiB", fmt(m["rss_file_end_mb"], 0)),
                 ("memory", f"{what}: cache size", fmt_bytes(m.get("cache_bytes"))),
                 ("memory", f"{what}: read images/s", fmt(m["images_per_s"]))]
    for source, by_workers in results.get("loader", {}).items():
        for workers, r in by_workers.items():
            rows.append(("loader", f"{source}, num_workers {workers}: images/s", fmt(r["images_per_s"])))
    return rows


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Teacher-output cache: speed, size and memory on the demo setting",
        "",
        "Command:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Preset `{meta['preset']}` ({meta['image_size'][0]}x{meta['image_size'][1]} images, pool of "
        f"{meta['pool_images']} images, batch {meta['batch']}), {meta['steps']} steps per training, images/s = "
        f"median over the steps after the first {meta['warmup']}. Machine: {meta['cpus']} CPUs, "
        f"{meta['runtime']}, load average {fmt(meta['load_average_start'], 2)} at the start and "
        f"{fmt(meta.get('load_average_end'), 2)} at the end. Wall-clock timings on a possibly shared machine: "
        "compare ratios from the same invocation. Peak RSS: the `ru_maxrss` of a fresh subprocess per measurement.",
    ]
    if results.get("steps"):
        rounds = results.get("rounds", [])
        lines += ["", f"## Step time ({len(rounds)} interleaved rounds, a fresh process per training)", "",
                  "Each round trains (a), (b) and (c) once, in an order rotated from round to round; a variant's "
                  "images/s is the median over rounds of its per-round median, and each ratio is the median over "
                  "rounds of the ratio measured within the round (the three runs of a round share the machine's "
                  "state of the moment).", "",
                  *table_header(["variant", "images/s", "per round", "step ms", "peak RSS MiB", "run wall s"],
                                "lrlrrr")]
        for name, r in results["steps"].items():
            per_round = ", ".join(fmt(x) for x in r.get("rounds_images_per_s", []))
            lines.append(table_row([VARIANT_LABELS.get(name, name), fmt(r["images_per_s"]), per_round,
                                    fmt(r["step_ms"]), fmt(r["peak_rss_mb"], 0), fmt(r["wall_s"])]))
        rt = results.get("ratios", {})
        keys = [("online_over_supervised", "(b) online / (a) supervised"),
                ("cached_over_supervised", "(c) cached / (a) supervised"),
                ("online_over_cached", "(b) online / (c) cached (speed-up of the cache)")]
        lines += ["", *table_header(["step-time ratio", "median", "per round"], "lrl")]
        for key, label in keys:
            per_round = ", ".join(fmt(rd["ratios"].get(key), 2) for rd in rounds)
            lines.append(table_row([label, fmt(rt.get(key), 2), per_round]))
    if results.get("cache"):
        lines += ["", "## Cache build and size (three teachers, the pool)", "",
                  *table_header(["encoding", "images", "build ms / image", "teacher forward ms / image",
                                 "bytes / image (teacher/task)", "all outputs / image", "build peak RSS MiB"],
                                "lrrllrr")]
        for enc, c in results["cache"].items():
            per_teacher = ", ".join(f"{t}: {fmt(1000 * s, 2)}" for t, s in c["teacher_s_per_image"].items())
            sizes = ", ".join(f"{k} ({c['encodings'].get(k, '?')}): {fmt_bytes(v)}"
                              for k, v in c["bytes_per_image"].items())
            lines.append(table_row([enc, c["images"], fmt(1000 * c["build_s_per_image"], 2), per_teacher, sizes,
                                    fmt_bytes(c["total_bytes_per_image"]), fmt(c["peak_rss_mb"], 0)]))
    if results.get("scaling"):
        lines += ["", "## Scaling with the number of teachers", "",
                  *table_header(["teachers", "online images/s", "cached images/s", "step time online / cached"])]
        for k, s in results["scaling"].items():
            lines.append(table_row([f"{k} ({', '.join(s['teachers'])})", fmt(s["online_images_per_s"]),
                                    fmt(s["cached_images_per_s"]), fmt(s["online_over_cached"], 2)]))
    if results.get("memory"):
        lines += ["", "## Reading memory (iterate every sample of the training set with the cache attached)", "",
                  *table_header(["data", "images", "cache size", "RSS before reading MiB", "peak RSS MiB",
                                 "peak anonymous RSS MiB", "file-backed RSS at end MiB", "images/s"])]
        for scale, m in results["memory"].items():
            lines.append(table_row([f"{scale}×", m["images"], fmt_bytes(m.get("cache_bytes")),
                                    fmt(m["rss_before_mb"], 0), fmt(m["peak_rss_mb"], 0), fmt(m["peak_anon_mb"], 0),
                                    fmt(m["rss_file_end_mb"], 0), fmt(m["images_per_s"])]))
        builds = {s: m["build"] for s, m in results["memory"].items() if m.get("build")}
        if builds:
            lines += ["", "Builds of the scaled caches: " + "; ".join(
                f"{s}×: {fmt(1000 * b['build_s_per_image'], 2)} ms / image, peak RSS {fmt(b['peak_rss_mb'], 0)} MiB"
                for s, b in builds.items()) + "."]
    if results.get("loader"):
        workers = sorted({w for by in results["loader"].values() for w in by}, key=int)
        lines += ["", "## Data loading alone (DataLoader over the training set, no model)", "",
                  *table_header(["dataset", *(f"num_workers {w} images/s" for w in workers)])]
        for source, by in results["loader"].items():
            lines.append(table_row([source, *(fmt(by.get(w, {}).get("images_per_s")) for w in workers)]))
        cached = results.get("steps", {}).get("cached", {}).get("images_per_s")
        if cached:
            lines += ["", f"(c) cached training step: {fmt(cached)} images/s (num_workers 0)."]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"* {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the child side


def _status_mb() -> dict[str, float]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` of this process in MiB (Linux; empty elsewhere)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def _maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _child(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(job["threads"])
    result: dict[str, Any] = {"import_rss_mb": _status_mb().get("VmRSS", float("nan"))}
    t0 = time.perf_counter()
    kind = job["kind"]
    cfg = polydistill.load_config(job["cfg"]) if "cfg" in job else None
    if kind == "train":
        run = polydistill.train(cfg, job["run_dir"], report=False)
        result["skipped_steps"] = run.fit.skipped_steps
    elif kind == "build":
        cache = polydistill.cache_teachers(cfg, force=True, rebuild=True)["train"]
        result.update(root=str(cache.root), images=len(cache),
                      build_json=json.loads((cache.root / "build.json").read_text()),
                      size_bytes={f"{t}/{k}": cache.size_bytes(teacher=t, task=k) for t, k in cache.outputs},
                      encodings={f"{t}/{k}": o.encoding.kind + (f"{o.encoding.k}" if o.encoding.k else "")
                                 for (t, k), o in cache.outputs.items()})
    elif kind in ("read", "loader"):
        train_set = training_set(cfg)
        if job.get("cache"):
            cache = TeacherCache.open(job["cache"], verify=False)
            train_set.attach_teacher_outputs(cache)
            result["cache_bytes"] = cache.size_bytes()
        result["images"] = len(train_set)
        if kind == "read":
            result["rss_before_mb"] = _status_mb().get("VmRSS", float("nan"))
            peak_anon = _status_mb().get("RssAnon", float("nan"))
            start = time.perf_counter()
            for i in range(len(train_set)):
                train_set[i]
                if i % 64 == 0:
                    peak_anon = max(peak_anon, _status_mb().get("RssAnon", float("nan")))
            result["images_per_s"] = len(train_set) / (time.perf_counter() - start)
            end = _status_mb()
            result.update(peak_anon_mb=max(peak_anon, end.get("RssAnon", float("nan"))),
                          rss_file_end_mb=end.get("RssFile", float("nan")), rss_end_mb=end.get("VmRSS", float("nan")))
        else:
            batch, warmup, steps = job["batch"], job["warmup"], job["steps"]
            sampler = RandomSampler(train_set, num_samples=(warmup + steps) * batch,
                                    generator=torch.Generator().manual_seed(DATA_SEED))
            loader = DataLoader(train_set, batch_size=batch, sampler=sampler, drop_last=True, collate_fn=collate,
                                num_workers=job["workers"])
            seen, start = 0, None
            for i, b in enumerate(loader):
                if i == warmup:  # the first batches include worker start-up
                    start = time.perf_counter()
                if i >= warmup:
                    seen += b["image"].shape[0]
            elapsed = time.perf_counter() - start if start is not None else float("nan")
            result.update(images_per_s=seen / elapsed if elapsed > 0 else float("nan"), batches=steps)
    else:
        raise ValueError(f"unknown child job {kind!r}")
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = _maxrss_mb()
    result["torch_threads"] = torch.get_num_threads()
    return result


def training_set(cfg: polydistill.RunConfig):
    """The training folder as training samples it (augmentation and all; the demo student's tasks all have
    labels), without a model: what the read and loader sections iterate over."""
    return open_dataset(cfg.data, "train", tuple(cfg.tasks), transform=build_train_transform(cfg.data.augment),
                        seed=cfg.train.seed, image_size=(cfg.data.height, cfg.data.width))


def run_child(job: dict[str, Any], log) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter (``python -m benchmarks.speed --child JOB``); return the JSON it
    reports."""
    src = str(Path(polydistill.__file__).resolve().parents[1])
    repo = str(Path(__file__).resolve().parents[1])  # where the benchmarks package lives
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, repo,
                                         *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--child", json.dumps(job)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        log(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise RuntimeError(f"benchmark subprocess ({job['kind']}) failed with exit code {proc.returncode}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if not lines:
        raise RuntimeError(f"benchmark subprocess ({job['kind']}) reported nothing:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


# ------------------------------------------------------------------------------------------ the parent side


def replicate_folder(source: Path, dest: Path, copies: int) -> int:
    """``dest`` = ``copies`` copies of ``source``'s images and labels with fresh ids (hard links where possible)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("classes.yaml",):
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
    count = 0
    for sub in ("images", "depth", "semseg", "boxes", "meta"):
        if not (source / sub).is_dir():
            continue
        (dest / sub).mkdir()
        for path in sorted((source / sub).iterdir()):
            if path.name.startswith("."):
                continue
            for r in range(copies):
                target = dest / sub / f"r{r:03d}_{path.name}"
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy2(path, target)
                count += sub == "images"
    return count


class Bench:
    def __init__(self, args, setup: demo.DemoSetup, teacher_runs: dict[str, Path], out: Path, log):
        self.args, self.setup, self.teacher_runs = args, setup, teacher_runs
        self.out, self.log = out, log
        self.builds: dict[tuple[str, int, str], dict[str, Any]] = {}
        self.trained: dict[str, dict[str, Any]] = {}

    def config(self, k: int, *, precompute: bool = True, encoding: str = "fp16", train_folder=None) -> dict:
        return variant_config(self.setup, teacher_subset(self.teacher_runs, k), steps=self.args.steps,
                              threads=self.args.threads, cache_dir=self.out / "teacher_cache" / encoding,
                              precompute=precompute, encoding=encoding, train_folder=train_folder)

    def build(self, k: int, encoding: str = "fp16", folder: Path | None = None) -> dict[str, Any]:
        """Build (once per invocation) the cache of the first ``k`` teachers over ``folder`` (default: the pool)."""
        key = (encoding, k, str(folder or ""))
        if key not in self.builds:
            self.log(f"cache build: {k} teacher(s), {encoding}, {folder or 'pool'}")
            cfg = self.config(k, encoding=encoding, train_folder=folder)
            self.builds[key] = run_child({"kind": "build", "cfg": cfg, "threads": self.args.threads}, self.log)
            b = self.builds[key]
            self.log(f"  {b['images']} images in {b['build_json']['total_s']:.1f} s, "
                     f"{fmt_bytes(sum(b['size_bytes'].values()))}")
        return self.builds[key]

    def train(self, name: str, k: int, precompute: bool = True) -> dict[str, Any]:
        if name not in self.trained:
            if k and precompute:
                self.build(k)
            run_dir = self.out / "runs" / name
            shutil.rmtree(run_dir, ignore_errors=True)
            cfg = self.config(k, precompute=precompute)
            self.log(f"training {name}: {k} teacher(s), {'cached' if precompute and k else 'online' if k else 'none'}")
            load_before = os.getloadavg()[0]
            child = run_child({"kind": "train", "cfg": cfg, "run_dir": str(run_dir), "threads": self.args.threads},
                              self.log)
            batch = cfg["data"]["batch_size"] * cfg["train"].get("grad_accum_steps", 1)
            entry = throughput(read_steps(run_dir / "steps.csv"), self.args.warmup, batch)
            entry.update(teachers=list(teacher_subset(self.teacher_runs, k)), precompute=bool(precompute and k),
                         peak_rss_mb=child["peak_rss_mb"], import_rss_mb=child["import_rss_mb"], wall_s=child["wall_s"],
                         skipped_steps=child["skipped_steps"], torch_threads=child["torch_threads"],
                         load_average_before=load_before, run_dir=str(run_dir))
            self.log(f"  {fmt(entry['images_per_s'])} images/s, peak RSS {fmt(entry['peak_rss_mb'], 0)} MiB")
            self.trained[name] = entry
        return self.trained[name]

    def read(self, folder: Path, cache_folder: str) -> dict[str, Any]:
        cfg = self.config(len(self.teacher_runs), train_folder=folder)
        return run_child({"kind": "read", "cfg": cfg, "cache": cache_folder, "threads": self.args.threads}, self.log)

    def loader(self, workers: int, cache_folder: str | None) -> dict[str, Any]:
        cfg = self.config(len(self.teacher_runs))
        job = {"kind": "loader", "cfg": cfg, "cache": cache_folder, "threads": self.args.threads, "workers": workers,
               "batch": cfg["data"]["batch_size"], "warmup": self.args.warmup, "steps": self.args.steps}
        return run_child(job, self.log)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(RESULT_MARK + json.dumps(_child(json.loads(argv[1]))), flush=True)
        return

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=sorted(demo.PRESETS))
    parser.add_argument("--steps", type=int, default=60, help="training steps per variant (and loader batches)")
    parser.add_argument("--teachers", type=int, default=3,
                        help="the first N of the demo's teachers (default 3: the depth, segmentation and narrow depth "
                             "teachers, as in the issue's setting; 4 adds the detection teacher)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of (a), (b), (c) in the steps section (ratios: median over rounds)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the images/s median")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of every subprocess")
    parser.add_argument("--scale", type=int, default=10, help="size of the larger dataset of the memory section")
    parser.add_argument("--only", default=None, help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--out", default="runs/bench_speed")
    parser.add_argument("--keep-scaled", action="store_true", help="keep the scaled folder and its cache")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps ({args.steps}) must be larger than --warmup ({args.warmup})")
    sections = list(SECTIONS) if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")

    console = Console(stderr=True)
    log = console.print
    torch.set_num_threads(args.threads)
    preset = demo.PRESETS[args.preset]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "command": command_line("benchmarks.speed", argv),
        "preset": args.preset, "sections": sections, "steps": args.steps, "warmup": args.warmup,
        "threads": args.threads, "scale": args.scale, "rounds": args.rounds,
        "image_size": [preset.height, preset.width],
        "pool_images": preset.pool_images, "batch": preset.student_batch, "data_seed": DATA_SEED,
        "cpus": os.cpu_count(), "load_average_start": os.getloadavg()[0], "cache": str(demo.cache_root()),
        "runtime": f"PyTorch {torch.__version__}, CPU, {args.threads} torch threads per subprocess"
                   + (" (a GPU is present: caches and training use it)" if torch.cuda.is_available() else ""),
        "python": platform.python_version(), "platform": platform.platform(), "polydistill": polydistill.__version__,
    }
    results: dict[str, Any] = {"meta": meta, "notes": []}
    started = time.perf_counter()

    log(f"[bold]data and teachers[/] (preset {args.preset}, seed {DATA_SEED}, cache {demo.cache_root()})")
    setup = demo.prepare(args.preset, DATA_SEED, log=log)
    teacher_runs = teacher_subset(setup.teacher_runs, args.teachers)
    bench = Bench(args, setup, teacher_runs, out, log)
    k_all = len(teacher_runs)

    if "cache" in sections:
        log("[bold]cache build and size[/]")
        results["cache"] = {enc: cache_summary(bench.build(k_all, enc)) for enc in ENCODINGS}
    if "steps" in sections:
        log(f"[bold]step time: supervised, online, cached, {args.rounds} interleaved round(s)[/]")
        bench.build(k_all)  # built before, separately
        variants = [("supervised", 0, True), ("online", k_all, False), ("cached", k_all, True)]
        rounds = []
        for r in range(args.rounds):
            order = variants[r % 3:] + variants[:r % 3]  # rotate, so no variant always runs first or last
            entry = {v: bench.train(f"{v}_{k}_r{r}", k, precompute=p) for v, k, p in order}
            rounds.append({"order": [v for v, _, _ in order], "steps": entry, "ratios": ratios(entry)})
        results["rounds"] = rounds
        results["steps"] = {v: median_entry([rd["steps"][v] for rd in rounds]) for v, _, _ in variants}
        results["ratios"] = {key: statistics.median(rd["ratios"][key] for rd in rounds) for key in rounds[0]["ratios"]}
    if "scaling" in sections:
        log("[bold]scaling with the number of teachers[/]")
        runs: dict[int, dict[str, Any]] = {}
        for k in range(1, k_all + 1):
            runs[k] = {"teachers": list(teacher_subset(teacher_runs, k)),  # k = all reuses round 0 of "steps"
                       "online": bench.train(f"online_{k}_r0", k, precompute=False),
                       "cached": bench.train(f"cached_{k}_r0", k, precompute=True)}
        results["scaling"] = scaling_summary(runs)
    if "memory" in sections:
        log("[bold]reading memory[/]")
        memory: dict[str, Any] = {}
        pool = Path(setup.splits["pool"])
        base = bench.build(k_all)
        memory["1"] = bench.read(pool, base["root"])
        memory["1"]["cache_bytes"] = sum(base["size_bytes"].values())
        if args.scale > 1:
            scaled = out / "data" / f"pool_x{args.scale}"
            count = replicate_folder(pool, scaled, args.scale)
            log(f"scaled folder: {count} images at {scaled}")
            build = bench.build(k_all, "fp16", scaled)
            memory[str(args.scale)] = bench.read(scaled, build["root"])
            memory[str(args.scale)]["build"] = cache_summary(build)
            if not args.keep_scaled:
                shutil.rmtree(build["root"], ignore_errors=True)
                shutil.rmtree(scaled, ignore_errors=True)
        results["memory"] = memory
    if "loader" in sections:
        log("[bold]data loading alone[/]")
        cache = bench.build(k_all)["root"]
        loader: dict[str, dict[str, Any]] = {"images only": {}, "images + cache": {}}
        for workers in LOADER_WORKERS:
            loader["images only"][str(workers)] = bench.loader(workers, None)
            loader["images + cache"][str(workers)] = bench.loader(workers, cache)
            log(f"  num_workers {workers}: {fmt(loader['images only'][str(workers)]['images_per_s'])} images/s "
                f"(images only), {fmt(loader['images + cache'][str(workers)]['images_per_s'])} (with the cache)")
        results["loader"] = loader

    results["builds"] = [{"encoding": e, "teachers": k, "folder": f or "pool", **b}
                         for (e, k, f), b in bench.builds.items()]
    results["notes"].append("Training builds the teacher networks even when it reads their outputs from the cache "
                            "(the cache is checked against their fingerprints) and frees them before the first "
                            "step, so (c)'s peak RSS includes their weights. The demo's feedback weighting scores "
                            "the teachers on the validation split before the first step: (b) runs them, (c) reads "
                            "their validation outputs from the cache as well.")
    meta["load_average_end"] = os.getloadavg()[0]
    odd = implausible(results)
    if odd:
        results["notes"].append("Implausible timings, measure again on an idle machine: " + "; ".join(odd) + ".")
    unstable = unstable_runs(bench.trained)
    if unstable:
        results["notes"].append("Step times varied a lot within these runs, so their medians are unreliable: "
                                + ", ".join(unstable) + ".")
    if meta["load_average_start"] > 0.5:
        results["notes"].append(
            f"Other processes were running when the benchmark started (1-minute load average "
            f"{meta['load_average_start']:.2f} on {meta['cpus']} CPUs): with {args.threads} torch threads, a "
            "multi-threaded step that has to share its cores waits for the descheduled thread, and steps can be "
            "many times slower than on an idle machine. Rerun on an idle machine (or with --threads 1).")
    meta["wall_s"] = time.perf_counter() - started
    json_file, md_file = write_results(out, results, markdown(results))
    print_table(f"teacher-output cache, preset {args.preset}, {args.steps} steps, {args.threads} threads",
                ("section", "quantity", "value"), summary_rows(results), align="llr")
    print(f"wrote {json_file} and {md_file} ({meta['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
