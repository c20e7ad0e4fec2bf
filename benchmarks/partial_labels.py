"""Multi-task learning on partially annotated data (Lê & Pham, BMVC 2023) on ShapeScenes: the paper's comparison.

The setting. One ShapeScenes training set whose images carry *either* boxes *or* masks, never both (the
paper's mutually exclusive VOC split "MXE", here a seeded half/half split of the same images); a validation
split (model selection) and a held-out test split with both labels. Every student has the same architecture
(the demo student: MobileNetV3-small + FPN, ``--steps`` optimizer steps, batch ``--batch`` per task, same
learning rate), and is scored on the test split:

* ``single_det`` / ``single_seg`` — single-task students on their half (the baselines of Δm);
* ``teacher_det`` / ``teacher_seg`` — the single-task *teachers* of the knowledge-transfer variants, each
  trained on its half only (``--teacher-backbone``, default ResNet-18). The paper's teachers have the
  student's architecture; here such teachers (``--teacher-backbone mobilenetv3_small_100``) are weaker than
  the multi-task student on partial labels, whose shared features see both halves, so every transfer
  variant lost to ``partial`` alone on mAP@0.5 (measured; README). A teacher has to know more than the
  student to teach it;
* ``partial`` — one detection + segmentation student on the partial labels alone, one batch per task per
  step (``data.sampler: per_task``, the paper code's sampler);
* ``pseudo`` — ``partial`` + pseudo-labels: on images without boxes the detection teacher's boxes above
  0.3 are ground truth, on images without masks the segmentation teacher's arg-max
  (``distill.teacher_targets: unlabelled``; ``detection.distill: pseudo``, ``semseg.distill: hard``);
* ``features`` — ``partial`` + feature imitation: the student regresses each teacher's FPN map (its
  ``neck``, stride 4) through a 1×1 adapter with MSE on standardised teacher features, on every image;
* ``features_pdf`` — the same, with the detection teacher's map weighted per cell by how much the student's
  and the teacher's class heat-maps disagree (PDF-Distil, the paper's ``pdf`` option);
* ``soft`` — ``partial`` + soft targets: the teachers' class heat-maps and boxes (detection) and class
  distributions (segmentation, KL at T = 2) on the images without that label;
* ``full`` — the upper bound: every training image with both labels, no teachers.

Δm (%, primary metrics map50 and miou, positive = better) is against the single-task students of the same
seed. Mean ± standard deviation over ``--seeds`` (training seeds; the data is fixed).

    python -m benchmarks.partial_labels [--seeds 0,1] [--steps 500] [--train 600] [--out runs/bench_partial]

Writes OUT/<variant>/seed<k>/ (the runs), OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

import polydistill
from polydistill.data.shapescenes import generate_split
from polydistill.demo import OBJECT_CLASSES
from polydistill.evaluation.delta_m import delta_m

from .common import command_line, markdown_table, print_table, write_results

DATA_SEED = 0
VARIANTS = ("single_det", "single_seg", "teacher_det", "teacher_seg", "partial", "pseudo", "features", "features_pdf",
            "soft", "full")
KNOWLEDGE = ("pseudo", "features", "features_pdf", "soft")
TASKS = {"detection": {"class_names": OBJECT_CLASSES}, "semseg": {"class_balance": 0.5}}
DIRECTIONS = {"detection": {"map50": True}, "semseg": {"miou": True}}
PRIMARY = {"detection": "map50", "semseg": "miou"}


def make_data(out: Path, train: int, val: int, test: int, height: int, width: int) -> dict[str, Path]:
    """``full`` (both labels), ``partial`` (the same images, each with boxes or masks), ``val`` and ``test``."""
    labels = ("semseg", "boxes", "depth")
    splits = {}
    for i, (name, count) in enumerate((("full", train), ("val", val), ("test", test))):
        splits[name] = generate_split(out / "data" / name, count, seed=DATA_SEED * 100 + i, height=height,
                                      width=width, labels=labels, id_prefix=f"{name}_")
    partial = out / "data" / "partial"
    if not (partial / "DONE").exists():
        shutil.rmtree(partial, ignore_errors=True)
        for sub in ("images", "semseg", "boxes"):
            (partial / sub).mkdir(parents=True)
        shutil.copy2(splits["full"] / "classes.yaml", partial / "classes.yaml")
        ids = sorted(p.stem for p in (splits["full"] / "images").iterdir())
        boxes_only = set(np.random.default_rng(DATA_SEED).permutation(len(ids))[: len(ids) // 2].tolist())
        for k, sid in enumerate(ids):
            image = next((splits["full"] / "images").glob(f"{sid}.*"))
            os.link(image, partial / "images" / image.name)
            kind = "boxes" if k in boxes_only else "semseg"
            label = next((splits["full"] / kind).glob(f"{sid}.*"))
            os.link(label, partial / kind / label.name)
        (partial / "DONE").write_text("ok\n")
    splits["partial"] = partial
    return splits


def base_config(args, splits: dict[str, Path], tasks: dict[str, Any], seed: int, *, train: str = "partial",
                teacher: bool = False, **data: Any) -> dict[str, Any]:
    return {
        "data": {"train": str(splits[train]), "val": str(splits["val"]), "height": args.height, "width": args.width,
                 "batch_size": args.batch, "augment": {"hflip": 0.5, "scale": [1.0, 1.25]}, **data},
        "tasks": tasks,
        "student": ({"backbone": args.teacher_backbone, "neck_channels": args.teacher_neck} if teacher
                    else {"backbone": "mobilenetv3_small_100", "neck_channels": 32}),
        "train": {"max_steps": args.steps, "lr": args.teacher_lr if teacher else 1e-2, "min_lr_ratio": 0.2,
                  "warmup_steps": max(1, args.steps // 20), "seed": seed, "val_every": max(1, args.steps // 4),
                  "progress": False},
    }


def variant_config(variant: str, args, splits: dict[str, Path], seed: int, teachers: dict[str, Path],
                   cache: Path) -> dict[str, Any]:
    both = {k: dict(v) for k, v in TASKS.items()}
    if variant == "single_det":
        return base_config(args, splits, {"detection": dict(TASKS["detection"])}, seed, labelled_only=True)
    if variant == "single_seg":
        return base_config(args, splits, {"semseg": dict(TASKS["semseg"])}, seed, labelled_only=True)
    if variant == "teacher_det":
        return base_config(args, splits, {"detection": dict(TASKS["detection"])}, seed, teacher=True,
                           labelled_only=True)
    if variant == "teacher_seg":
        return base_config(args, splits, {"semseg": dict(TASKS["semseg"])}, seed, teacher=True, labelled_only=True)
    if variant == "full":
        return base_config(args, splits, both, seed, train="full")
    cfg = base_config(args, splits, both, seed, sampler="per_task")
    if variant == "partial":
        return cfg
    det, seg = {"name": "det_teacher", "path": str(teachers["teacher_det"])}, \
        {"name": "seg_teacher", "path": str(teachers["teacher_seg"])}
    cfg["distill"] = {"teacher_cache": str(cache), "teacher_targets": "unlabelled"}
    if variant == "pseudo":
        cfg["tasks"]["detection"]["distill"] = "pseudo"
        cfg["tasks"]["semseg"]["distill"] = "hard"
        cfg["teachers"] = [det, seg]
    elif variant == "soft":
        cfg["tasks"]["semseg"]["temperature"] = 2.0
        cfg["teachers"] = [det, seg]
    else:  # feature imitation only: the teachers teach their FPN maps, not their outputs
        imitation = {"type": "features", "projector": "linear", "norm": "standardize", "grid_stride": 4,
                     "cos_weight": 0.0, "l1_weight": 0.0, "mse_weight": 1.0}
        cfg["tasks"]["det_fpn"] = dict(imitation, **({"weight_by": "detection"} if variant == "features_pdf" else {}))
        cfg["tasks"]["seg_fpn"] = dict(imitation)
        det_tasks = ["det_fpn", "detection"] if variant == "features_pdf" else ["det_fpn"]
        cfg["teachers"] = [dict(det, tasks=det_tasks, options={"features": {"det_fpn": "neck"}, "grid_stride": 4}),
                           dict(seg, tasks=["seg_fpn"], options={"features": {"seg_fpn": "neck"}, "grid_stride": 4})]
        if variant == "features_pdf":  # the heat-maps only weight the imitation: no detection distillation term
            cfg["distill"]["teacher_weights"] = {"detection/det_teacher": 0.0}
    return cfg


def test_metrics(run: Path, test: Path, size: tuple[int, int]) -> dict[str, dict[str, float]]:
    """A student's metrics on the test split at the training size."""
    return polydistill.evaluate(run, test, size=size)["metrics"]


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(values: list[float]) -> dict[str, Any]:
        if not values:
            return {"values": []}
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values}

    out: dict[str, Any] = {}
    for variant in VARIANTS:
        rows = [s[variant] for s in per_seed if variant in s]
        if not rows:
            continue
        entry = {"map50": stat([r["detection"]["map50"] for r in rows if "detection" in r]),
                 "map": stat([r["detection"]["map"] for r in rows if "detection" in r]),
                 "miou": stat([r["semseg"]["miou"] for r in rows if "semseg" in r])}
        entry = {k: v for k, v in entry.items() if v["values"]}
        if all("delta_m" in r for r in rows):
            entry["delta_m"] = stat([r["delta_m"] for r in rows])
        out[variant] = entry
    return out


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    def pm(s: dict[str, float] | None, digits: int = 4) -> str:
        return "—" if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    lines = ["# Multi-task learning on partially annotated data (ShapeScenes)", "", "Command:", "", "```",
             meta["command"], "```", "",
             f"{meta['train']} training images ({meta['train'] // 2} with boxes only, the rest with masks only), "
             f"{meta['val']} validation, {meta['test']} test images at {meta['height']}×{meta['width']}; "
             f"{meta['steps']} steps, batch {meta['batch']} per task; teachers: {meta['teacher_backbone']} "
             f"(neck {meta['teacher_neck']}); seeds {meta['seeds']}; mean ± std. "
             "Δm: primary metrics (map50, miou) vs the single-task students of the same seed.", "",
             *markdown_table(["student", "mAP@0.5", "mAP", "mIoU", "Δm %"],
                             [[variant, pm(s.get("map50")), pm(s.get("map")), pm(s.get("miou")),
                               pm(s.get("delta_m"), 2)] for variant, s in summary.items()])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--teacher-backbone", default="resnet18", help="timm backbone of the single-task teachers")
    parser.add_argument("--teacher-neck", type=int, default=64)
    parser.add_argument("--teacher-lr", type=float, default=3e-3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="runs/bench_partial")
    parser.add_argument("--force", action="store_true", help="retrain runs that already finished")
    args = parser.parse_args(argv)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = set(args.variants.split(","))
    if wanted & set(KNOWLEDGE):  # the knowledge-transfer variants need their teachers
        wanted |= {"teacher_det", "teacher_seg"}
    unknown = wanted - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    chosen = [v for v in VARIANTS if v in wanted]
    log = Console(stderr=True).print
    splits = make_data(out, args.train, args.val, args.test, args.height, args.width)
    per_seed = []
    for seed in seeds:
        runs: dict[str, Path] = {}
        results: dict[str, Any] = {}
        for variant in chosen:
            run = out / variant / f"seed{seed}"
            runs[variant] = run
            if args.force or not (run / "summary.json").exists():
                log(f"[bold]{variant}[/] seed {seed}")
                shutil.rmtree(run, ignore_errors=True)
                cfg = variant_config(variant, args, splits, seed, runs, out / "teacher_cache" / f"seed{seed}")
                polydistill.train(cfg, run)
            results[variant] = test_metrics(run, splits["test"], (args.height, args.width))
            log(f"  {variant}: {json.dumps({t: {k: round(v, 4) for k, v in m.items() if '/' not in k} for t, m in results[variant].items()})}")  # noqa: E501
        if "single_det" in results and "single_seg" in results:
            baseline = {"detection": {"map50": results["single_det"]["detection"]["map50"]},
                        "semseg": {"miou": results["single_seg"]["semseg"]["miou"]}}
            for metrics in results.values():
                if "detection" in metrics and "semseg" in metrics:
                    core = {t: {m: metrics[t][m]} for t, m in PRIMARY.items()}
                    metrics["delta_m"] = delta_m(core, baseline, DIRECTIONS, convention="primary", primary=PRIMARY)
        per_seed.append(results)
    summary = summarise(per_seed)
    meta = {"command": command_line("benchmarks.partial_labels", argv),
            "seeds": seeds, "steps": args.steps, "batch": args.batch, "train": args.train, "val": args.val,
            "test": args.test, "height": args.height, "width": args.width, "polydistill": polydistill.__version__,
            "teacher_backbone": args.teacher_backbone, "teacher_neck": args.teacher_neck,
            "torch": torch.__version__}
    write_results(out, {"meta": meta, "per_seed": per_seed, "summary": summary}, markdown(summary, meta))
    print_table("partial labels: test split, mean ± std over seeds", ("student", "mAP@0.5", "mAP", "mIoU", "Δm %"),
                [(variant, *(f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" if k in s else "—"
                             for k in ("map50", "map", "miou", "delta_m"))) for variant, s in summary.items()],
                align="lllll")


if __name__ == "__main__":
    main()
