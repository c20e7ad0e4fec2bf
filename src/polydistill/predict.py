"""``polydistill predict``: a checkpoint and images → per-task files plus visualisations.

Outputs per input image ``<name>``: ``<name>_depth.png`` (uint16 millimetres), ``<name>_semseg.png``
(uint8 class ids), ``<name>_detection.json`` (boxes in the image's pixels with class, score and the median
predicted depth inside the box), and ``<name>_<task>_vis.png`` pictures (boxes labelled with class and
distance).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .evaluation.report import load_student
from .tasks.detection import box_median_depth
from .visualise import image_to_uint8, panel

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
#: boxes below this score are written to the JSON but not drawn
DRAW_SCORE = 0.3


def collect_images(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input '{p}' does not exist")
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {[str(p) for p in inputs]}")
    return files


def load_image(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image '{path}': {exc}; replace or remove the file") from None
    return torch.from_numpy(arr).permute(2, 0, 1)


def write_detections(task, pred: torch.Tensor, input_size: tuple[int, int], image: torch.Tensor,
                     depth: torch.Tensor | None, stem: Path) -> np.ndarray:
    """Decode one image's detection map, write ``<stem>_detection.json`` (boxes in the original image's
    pixels, class, score, median depth in the box when the model predicts depth) and return the picture."""
    boxes, scores, labels = task.decode(pred, image_size=input_size)[0]
    h, w = image.shape[-2:]
    boxes = boxes * torch.tensor([w / input_size[1], h / input_size[0]] * 2)
    records = []
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        record = {"box": [round(v, 1) for v in box], "class": task.class_names[label], "score": round(score, 4)}
        if depth is not None:
            record["median_depth_m"] = round(box_median_depth(depth, torch.tensor(box)), 3)
        records.append(record)
    stem.with_name(f"{stem.name}_detection.json").write_text(json.dumps({"detections": records}, indent=1))
    shown = scores >= DRAW_SCORE
    return task.draw(image, boxes[shown], labels[shown], scores[shown], depth)


@torch.no_grad()
def predict_images(checkpoint: Path, inputs: list[Path], out: Path,
                   size: tuple[int | None, int | None] = (None, None)) -> int:
    model, tasks, spec = load_student(checkpoint)
    h, w = size
    if h is None or w is None:
        h, w = spec.get("input_size", (None, None))
    out.mkdir(parents=True, exist_ok=True)
    files = collect_images(inputs)
    for path in files:
        image = load_image(path)
        orig = image.shape[-2:]
        x = image[None]
        if h and w:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        raw = model(x)
        preds = {name: task.predict(raw[name].float()) for name, task in tasks.items()}
        depth = None
        if "depth" in preds:
            depth = F.interpolate(preds["depth"], size=orig, mode="bilinear", align_corners=False)[0]
        for name, task in tasks.items():
            if task.box_targets:
                vis = write_detections(task, preds[name], tuple(x.shape[-2:]), image, depth, out / path.stem)
            else:
                pred = preds[name]
                mode = "nearest" if task.target_is_label and pred.shape[1] == 1 else "bilinear"
                corners = {} if mode == "nearest" else {"align_corners": False}
                pred = F.interpolate(pred, size=orig, mode=mode, **corners)[0]
                if name == "depth":
                    mm = (pred[0].clamp(0, 65.535) * 1000).round().to(torch.int32).numpy().astype(np.uint16)
                    Image.fromarray(mm).save(out / f"{path.stem}_depth.png")
                elif task.target_is_label:
                    Image.fromarray(pred.argmax(0).to(torch.uint8).numpy()).save(out / f"{path.stem}_{name}.png")
                vis = panel(task, pred, image if task.target_is_label else None)
            side_by_side = np.concatenate([image_to_uint8(image), vis], axis=1)
            Image.fromarray(side_by_side).save(out / f"{path.stem}_{name}_vis.png")
    return len(files)
