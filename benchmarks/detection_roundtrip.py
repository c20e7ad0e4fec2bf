"""Is the detection target encoding lossless? Perfect ground truth rendered into task-space maps and decoded.

Every box teacher's cached targets, its reported mAP and the students' soft and pseudo targets pass through
``DetectionTask.render`` (boxes -> class heat-maps + four distances per cell) and ``decode`` (3×3 peak picking,
score threshold, class-wise NMS). Here the boxes are the ground truth itself (scores 1), so any mAP below 1 is
lost by the encoding, not by a model. Scenes:

* ``demo test`` — the demo's held-out test split (ShapeScenes, ``--preset``: 320 images at 96×128, generated
  with the demo's generator, seed and label kinds into ``OUT/test``; no teachers needed), the demo's detection
  classes, stride 4 (the student's and the detection teacher's grid);
* ``crowded N`` — synthetic 200×200 images with N = 5, 10, 20 boxes each (sides 8–80 px, anywhere in the
  image, 5 classes, fixed seed): many boxes overlap, some share a centre cell.

The metric is the task's own (``DetectionMetric``: pycocotools). A box is *lost* when no decoded box of its
class has IoU ≥ 0.95 with it; the reason is the first that applies: its centre cell is another box's centre
too (same class: one peak for two boxes; other class: one set of distances for two peaks), its centre cell is
not a 3×3 peak of its class, the distances at its centre cell are another box's, NMS (a same-class box overlaps
it by more than ``nms_iou``), other.

    python -m benchmarks.detection_roundtrip [--preset default] [--crowded-images 100] [--out DIR]

Writes OUT/detection_roundtrip.json and .md (OUT: ``runs/bench_detection_roundtrip``); the last line printed
is ``roundtrip mAP: <demo test mAP>``.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from polydistill.data import FolderDataset
from polydistill.data.shapescenes import generate_split
from polydistill.demo import PRESETS, TASK_OPTIONS
from polydistill.tasks import Task, build_task, task_class

from .common import command_line, markdown_table, write_results

STRIDE = 4
#: a decoded box this close to a ground-truth box (COCO's strictest threshold) counts as that box
FOUND_IOU = 0.95
CROWDED = (5, 10, 20)
CROWDED_SIZE = 200
CROWDED_CLASSES = 5
REASONS = ("centre cell shared, same class", "centre cell shared, other class", "peak suppressed (3×3)",
           "another box's distances at its centre", "NMS", "other")


def demo_test_split(out: Path, preset_name: str = "default", seed: int = 0, count: int | None = None) -> Path:
    """The demo's test split, generated as the demo generates it (its 5th split: seed ``100·seed + 4``, every
    label kind, ids ``test_…``); ``count`` images (default: the preset's)."""
    preset = PRESETS[preset_name]
    return generate_split(out, preset.test_images if count is None else count, seed=seed * 100 + 4,
                          height=preset.height, width=preset.width, labels=("depth", "semseg", "boxes"),
                          id_prefix="test_")


def demo_scene(folder: Path) -> tuple[Task, list[torch.Tensor], tuple[int, int]]:
    """The demo's detection task on a split, its boxes per image ``(M, 5)`` and the image size."""
    dataset = FolderDataset(folder, ("detection",))
    opts = task_class("detection").resolve_options("detection", dict(TASK_OPTIONS["detection"]), dataset)
    task = build_task("detection", **opts)
    task.stride = STRIDE
    samples = [dataset[i] for i in range(len(dataset))]
    return task, [s["targets"]["detection"] for s in samples], tuple(samples[0]["image"].shape[-2:])


def crowded_boxes(images: int, per_image: int, seed: int = 0, size: int = CROWDED_SIZE,
                  num_classes: int = CROWDED_CLASSES) -> list[torch.Tensor]:
    """``images`` lists of ``per_image`` random boxes ``[x0, y0, x1, y1, class]`` inside a ``size``² image."""
    g = torch.Generator().manual_seed(seed * 1000 + per_image)
    out = []
    for _ in range(images):
        wh = 8 + 72 * torch.rand(per_image, 2, generator=g)
        xy = (size - wh) * torch.rand(per_image, 2, generator=g)
        labels = torch.randint(0, num_classes, (per_image, 1), generator=g).float()
        out.append(torch.cat([xy, xy + wh, labels], 1))
    return out


def lost_boxes(task: Task, boxes: torch.Tensor, labels: torch.Tensor, rendered: torch.Tensor,
               decoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[Counter, int]:
    """Why each ground-truth box of one image (detection class ids) was not decoded, and how many decoded boxes
    match no ground truth (false detections)."""
    reasons: Counter = Counter()
    got, _, got_labels = decoded
    same = labels[:, None] == got_labels[None, :]
    iou = box_iou(boxes, got) * same if len(got) else torch.zeros(len(boxes), 0)
    found = iou.amax(1) >= FOUND_IOU if len(got) else torch.zeros(len(boxes), dtype=torch.bool)
    false = int((iou.amax(0) < FOUND_IOU).sum()) if len(boxes) else len(got)
    c = task.num_classes
    h, w = rendered.shape[-2:]
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2 / task.stride).floor().clamp(0, w - 1).long()
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2 / task.stride).floor().clamp(0, h - 1).long()
    heat = rendered[:c]
    peak = heat == F.max_pool2d(heat[None], 3, 1, 1)[0]
    ltrb = rendered[c:, cy, cx].T  # (M, 4) at each box's centre cell
    xs, ys = (cx.float() + 0.5) * task.stride, (cy.float() + 0.5) * task.stride
    at_centre = torch.stack([xs - ltrb[:, 0], ys - ltrb[:, 1], xs + ltrb[:, 2], ys + ltrb[:, 3]], 1)
    pairwise = box_iou(boxes, boxes)
    for i in torch.nonzero(~found).flatten().tolist():
        sharing = (cx == cx[i]) & (cy == cy[i])
        sharing[i] = False
        if bool(sharing.any()):
            reasons[REASONS[0] if bool((labels[sharing] == labels[i]).any()) else REASONS[1]] += 1
        elif not bool(peak[labels[i], cy[i], cx[i]]):
            reasons[REASONS[2]] += 1
        elif float(box_iou(at_centre[i:i + 1], boxes[i:i + 1])) < FOUND_IOU:
            reasons[REASONS[3]] += 1
        elif bool(((pairwise[i] > task.nms_iou) & (labels == labels[i]) & (torch.arange(len(boxes)) != i)).any()):
            reasons[REASONS[4]] += 1
        else:
            reasons[REASONS[5]] += 1
    return reasons, false


def roundtrip(task: Task, targets: Sequence[torch.Tensor], image_size: tuple[int, int]) -> dict[str, Any]:
    """Render each image's ground truth ``(M, 5)`` (dataset class ids), decode it and score it with the task's
    metric; the boxes lost and why."""
    grid = (image_size[0] // task.stride, image_size[1] // task.stride)
    metric = task.new_metric()
    reasons: Counter = Counter()
    boxes_total = false_total = 0
    for target in targets:
        labels = task.task_labels(target)
        keep = labels >= 0
        boxes, labels = target[keep, :4].float(), labels[keep]
        rendered = task.render(boxes, labels, None, grid)
        decoded = task.decode(rendered[None], image_size=image_size)[0]
        metric.update(rendered[None], target[None])
        why, false = lost_boxes(task, boxes, labels, rendered, decoded)
        reasons.update(why)
        boxes_total += len(boxes)
        false_total += false
    scores = metric.compute()
    return {"images": len(targets), "boxes": boxes_total, "map": scores["map"], "map50": scores["map50"],
            "map75": scores["map75"], "lost": sum(reasons.values()), "reasons": dict(reasons),
            "false_detections": false_total}


def describe_losses(result: dict[str, Any]) -> str:
    if not result["lost"] and not result["false_detections"]:
        return "none"
    parts = [f"{n} {why}" for why in REASONS if (n := result["reasons"].get(why, 0))]
    text = f"{result['lost']} ({'; '.join(parts)})" if parts else "0"
    return text + (f"; {result['false_detections']} false detections" if result["false_detections"] else "")


def markdown(results: dict[str, dict[str, Any]], command: str, seconds: float) -> str:
    rows = [[scene, r["images"], r["boxes"], f"{r['map']:.4f}", f"{r['map50']:.4f}", f"{r['map75']:.4f}",
             describe_losses(r)] for scene, r in results.items()]
    lines = ["# Detection round trip: ground truth → task-space map → decoded boxes", "",
             f"Command: `{command}`; torch {torch.__version__}; {seconds:.0f} s", "",
             *markdown_table(["scene", "images", "boxes", "mAP", "mAP@0.5", "mAP@0.75", "boxes lost and why"],
                             rows, align="lrrrrrl"), "",
             f"A box is lost when no decoded box of its class has IoU ≥ {FOUND_IOU} with it. A centre cell "
             "holds one box: two boxes of one class centred in one cell give one peak (the larger box survives), "
             "two of different classes give two peaks read with the one owner's distances (the other class's "
             "peak decodes a wrong box: a false detection). Decoding's class-wise NMS keeps one of two same-class "
             "boxes overlapping by more than its `nms_iou`. The ground truth's peaks are exactly 1, so a 3×3 "
             "neighbour cannot suppress a box's peak."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0, help="the demo's data seed and the crowded scenes' seed")
    parser.add_argument("--test-images", type=int, default=None, help="the test split's first N images "
                        "(default: all of the preset's)")
    parser.add_argument("--crowded-images", type=int, default=100, help="images per crowded scene")
    parser.add_argument("--out", default="runs/bench_detection_roundtrip")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    start = time.perf_counter()
    results = {}
    task, targets, size = demo_scene(demo_test_split(out / "test", args.preset, args.seed, args.test_images))
    results["demo test"] = roundtrip(task, targets, size)
    crowded_task = build_task("detection", num_classes=CROWDED_CLASSES)
    crowded_task.stride = STRIDE
    for n in CROWDED:
        boxes = crowded_boxes(args.crowded_images, n, args.seed)
        results[f"crowded {n}"] = roundtrip(crowded_task, boxes, (CROWDED_SIZE, CROWDED_SIZE))
    seconds = time.perf_counter() - start
    text = markdown(results, command_line("benchmarks.detection_roundtrip", argv), seconds)
    write_results(out, {"args": vars(args), "found_iou": FOUND_IOU, "results": results}, text,
                  name="detection_roundtrip")
    print(text)
    print(f"roundtrip mAP: {results['demo test']['map']:.4f}")


if __name__ == "__main__":
    main()
