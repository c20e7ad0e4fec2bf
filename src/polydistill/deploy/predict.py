"""``polydistill predict``: a checkpoint or an exported ONNX model, and images, folders, globs or videos →
per-task files and pictures a person can look at.

The model is a checkpoint/run directory (eager PyTorch) or an ``.onnx`` file from ``polydistill export`` (ONNX
Runtime; its sidecar JSON — or the copy embedded in the file — says what the outputs are). Both run the same
preprocessing: the image is resized to the model's training size (``--height/--width`` override) and the
dense outputs are resized back to the image.

Outputs per image ``<name>`` (a second input with the same name gets ``<name>_2``):

* ``<name>_depth.png`` uint16 millimetres (0 = none) and ``<name>_depth_vis.png`` (image | colour-mapped depth,
  near = warm);
* ``<name>_semseg.png`` uint8 class ids and ``<name>_semseg_vis.png`` (image | classes over the image);
* ``<name>_detection.json`` (boxes in the image's pixels with class, score and the median predicted depth in
  the box) and ``<name>_detection_vis.png`` (image | boxes labelled "class score distance");
* ``<name>_<task>.npy`` the model's task-space outputs at its own resolution (float32; see
  :mod:`polydistill.deploy.export` for their meaning), unless ``raw=False``.

Per video ``<name>.mp4|avi|mov|mkv`` (read with OpenCV): ``<name>_pred.mp4`` (or ``.avi`` where the mp4 encoder
is missing) with every frame as one mosaic (frame with boxes | depth | classes; the depth colours use one range
for the whole video), the per-frame files above without pictures under ``<name>_frames/`` with
``video_frames=True``, and frames per second (model only and end to end) in ``summary.json``.

Unreadable inputs: a file named on the command line stops the run with a :class:`DataError` naming it; files
found through a folder or a glob pattern are skipped, counted and listed in ``summary.json`` and the final
message, so one bad file in a folder of thousands does not lose the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..checkpoint import load_student_model
from ..errors import ConfigError, DataError
from ..reporting.panels import image_to_uint8
from ..tasks import Task
from ..tasks.detection import box_median_depth
from .inputs import collect_inputs, load_image, resize_image
from .runtime import INPUT_NAME, TaskSpaceModel, ort_session, read_sidecar, tasks_from_sidecar

#: boxes below this score are written to the JSON but not drawn
DRAW_SCORE = 0.3


# ----------------------------------------------------------------------------------------------- models
class Predictor:
    """Images ``(B, 3, h, w)`` in [0, 1] → ``{task: task-space output}``; ``tasks`` decode and draw them."""

    backend: str
    tasks: dict[str, Task]
    input_size: tuple[int, int] | None

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class TorchPredictor(Predictor):
    backend = "pytorch"

    def __init__(self, checkpoint: Path):

        student, self.tasks, spec = load_student_model(checkpoint)
        self.model = TaskSpaceModel(student, self.tasks).eval()
        size = spec.input_size
        self.input_size = tuple(size) if size else None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.as_dict(x)


class OnnxPredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, onnx_file: Path, threads: int | None = None):

        if not onnx_file.is_file():
            raise ConfigError(f"ONNX model '{onnx_file}' does not exist")
        sidecar = read_sidecar(onnx_file)
        self.tasks = tasks_from_sidecar(sidecar)
        self.session = ort_session(onnx_file, threads)
        self.input_name = INPUT_NAME
        self.names = [o.name for o in self.session.get_outputs()]
        missing = [t for t in self.tasks if t not in self.names]
        if missing:
            raise ConfigError(f"{onnx_file} has no output(s) {missing} that its sidecar names; re-export the model")
        size = sidecar["input"].get("input_size")
        self.input_size = tuple(size) if size else None

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        values = self.session.run(self.names, {self.input_name: x.numpy().astype(np.float32, copy=False)})
        return {n: torch.from_numpy(v) for n, v in zip(self.names, values) if n in self.tasks}


def load_predictor(model: Path, size: tuple[int | None, int | None] = (None, None),
                   threads: int | None = None) -> Predictor:
    """A checkpoint/run directory → eager PyTorch; an ``.onnx`` file → ONNX Runtime. ``size`` overrides the
    training size the images are resized to."""
    model = Path(model)
    predictor = OnnxPredictor(model, threads) if model.suffix.lower() == ".onnx" else TorchPredictor(model)
    h, w = size
    if h and w:
        predictor.input_size = (int(h), int(w))
    elif h or w:
        raise ConfigError("give both --height and --width, or neither (the model's training size)")
    return predictor


# ----------------------------------------------------------------------------------------------- predicting
@dataclass
class Prediction:
    """One image's prediction: task-space outputs at the model's resolution, dense maps at the image's, boxes in
    the image's pixels, and the distance map in metres when a task gives one (:attr:`Task.gives_distance`)."""

    image: torch.Tensor
    outputs: dict[str, torch.Tensor]
    maps: dict[str, torch.Tensor]
    boxes: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    model_s: float
    distance: torch.Tensor | None = None


def predict_one(predictor: Predictor, image: torch.Tensor) -> Prediction:
    size = tuple(image.shape[-2:])
    x = resize_image(image, predictor.input_size) if predictor.input_size else image
    t0 = time.perf_counter()
    outputs = predictor(x[None])
    model_s = time.perf_counter() - t0
    maps, boxes = {}, {}
    for name, task in predictor.tasks.items():
        out = outputs[name].float()
        if task.box_targets:
            b, s, labels = task.decode(out, image_size=tuple(x.shape[-2:]))[0]
            scale = torch.tensor([size[1] / x.shape[-1], size[0] / x.shape[-2]] * 2)
            boxes[name] = (b * scale, s, labels)
        else:
            maps[name] = task.resize_output(out, size)[0]  # the task says how its maps resize
    distance = next((maps[n] for n, t in predictor.tasks.items() if t.gives_distance and n in maps), None)
    return Prediction(image, {n: v[0] for n, v in outputs.items()}, maps, boxes, model_s, distance)


def detection_records(task: Task, boxes, depth: torch.Tensor | None) -> list[dict[str, Any]]:
    """The boxes as JSON records, with the median distance inside each when a ``depth`` map (metres) is given."""
    records = []
    for box, score, label in zip(*(v.tolist() for v in boxes)):
        record = {"box": [round(v, 1) for v in box], "class": task.class_names[label], "score": round(score, 4)}
        if depth is not None:
            d = box_median_depth(depth, torch.tensor(box))
            record["median_depth_m"] = round(d, 3) if np.isfinite(d) else None
        records.append(record)
    return records


def task_picture(task: Task, name: str, pred: Prediction,
                 value_range: tuple[float, float] | None = None) -> np.ndarray:
    """The picture of one task: boxes over the image (labelled with their distance when the model gives one),
    labels over the image, or a colour-mapped map (on ``value_range`` when given, see :meth:`Task.colour_range`)."""
    if task.box_targets:
        b, s, labels = pred.boxes[name]
        shown = s >= DRAW_SCORE
        return task.draw(pred.image, b[shown], labels[shown], s[shown], pred.distance)
    if task.target_is_label:
        return task.visualise(pred.maps[name], image=pred.image)
    if value_range is not None:
        return task.visualise(pred.maps[name], vmin=value_range[0], vmax=value_range[1])
    return task.visualise(pred.maps[name])


def write_outputs(predictor: Predictor, pred: Prediction, stem: Path, *, raw: bool = True,
                  pictures: bool = True) -> None:
    """The per-image files (see the module docstring) under the path prefix ``stem``."""
    prefix = f"{stem.name}_"
    for name, task in predictor.tasks.items():
        if raw:
            np.save(stem.with_name(f"{prefix}{name}.npy"), pred.outputs[name].numpy().astype(np.float32))
        if task.box_targets:
            records = detection_records(task, pred.boxes[name], pred.distance)
            stem.with_name(f"{prefix}{name}.json").write_text(json.dumps({"detections": records}, indent=1))
        elif (label := task.prediction_png(pred.maps[name])) is not None:
            Image.fromarray(label).save(stem.with_name(f"{prefix}{name}.png"))
        if pictures:
            side_by_side = np.concatenate([image_to_uint8(pred.image), task_picture(task, name, pred)], axis=1)
            Image.fromarray(side_by_side).save(stem.with_name(f"{prefix}{name}_vis.png"))


def video_mosaic(predictor: Predictor, pred: Prediction,
                 ranges: dict[str, tuple[float, float] | None]) -> np.ndarray:
    """One video frame: the frame (with boxes when the model detects) beside each dense task's picture, coloured
    on the video's ``ranges`` (task -> value range)."""
    boxed = [n for n, t in predictor.tasks.items() if t.box_targets]
    first = task_picture(predictor.tasks[boxed[0]], boxed[0], pred) if boxed else image_to_uint8(pred.image)
    tiles = [first] + [task_picture(t, n, pred, ranges.get(n)) for n, t in predictor.tasks.items()
                       if not t.box_targets]
    return np.concatenate(tiles, axis=1)


def _video_ranges(predictor: Predictor, pred: Prediction) -> dict[str, tuple[float, float] | None]:
    """The colour range of each dense map of a video, from its first frame (:meth:`Task.colour_range`, robust:
    depth's ``vis_range``, else the 2nd-98th percentile), so that frames share one scale and do not flicker."""
    return {n: t.colour_range(pred.maps[n], robust=True) for n, t in predictor.tasks.items() if n in pred.maps}


def _import_cv2():
    try:
        import cv2
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("videos are read and written with OpenCV: pip install opencv-python-headless") from None
    return cv2


def _open_writer(path: Path, fps: float, size: tuple[int, int]):
    """An mp4 (mp4v) writer, else Motion-JPEG in .avi where this OpenCV build cannot write mp4."""
    cv2 = _import_cv2()

    w, h = size
    for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
        target = path.with_suffix(suffix)
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
        if writer.isOpened():
            return writer, target
        writer.release()
    raise DataError(f"OpenCV cannot write a video to {path} (tried mp4v and MJPG); install opencv-python-headless "
                    "from PyPI, whose wheels include both encoders")


def predict_video(predictor: Predictor, path: Path, out: Path, stem: str, *, video_frames: bool = False,
                  raw: bool = True, advance: Callable[[int | None], None] = lambda total: None) -> dict[str, Any]:
    """Annotate every frame of ``path`` into ``<out>/<stem>_pred.mp4``; ``advance(total)`` is called per frame."""
    cv2 = _import_cv2()

    capture = cv2.VideoCapture(str(path))
    writer = target = None
    try:
        if not capture.isOpened():
            raise DataError(f"cannot open video '{path}' with OpenCV; the file is corrupt or its codec is not "
                            "supported — convert it to mp4 (H.264) or a folder of images")
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        fps = fps if 0 < fps < 1000 else 10.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        frames_dir = out / f"{stem}_frames"
        if video_frames:
            frames_dir.mkdir(exist_ok=True)
        ranges: dict[str, tuple[float, float] | None] = {}
        frames, model_s = 0, 0.0
        t0 = time.perf_counter()
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            image = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0).permute(2, 0, 1)
            pred = predict_one(predictor, image)
            model_s += pred.model_s
            if frames == 0:
                ranges = _video_ranges(predictor, pred)
            mosaic = video_mosaic(predictor, pred, ranges)
            if writer is None:
                writer, target = _open_writer(out / f"{stem}_pred.mp4", fps, (mosaic.shape[1], mosaic.shape[0]))
            writer.write(cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR))
            if video_frames:
                write_outputs(predictor, pred, frames_dir / f"{stem}_{frames:06d}", raw=raw, pictures=False)
            frames += 1
            advance(total)
        wall = time.perf_counter() - t0
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise DataError(f"video '{path}' has no readable frames; the file is empty, corrupt or its codec is not "
                        "supported by OpenCV")
    return {"input": str(path), "output": str(target), "frames": frames, "source_fps": fps,
            "fps_model": frames / model_s if model_s > 0 else float("inf"),
            "fps_end_to_end": frames / wall if wall > 0 else float("inf"),
            "frames_dir": str(frames_dir) if video_frames else None}


def _unique_stem(name: str, used: set[str]) -> str:
    stem, k = name, 2
    while stem in used:
        stem, k = f"{name}_{k}", k + 1
    used.add(stem)
    return stem


def predict(model: Path, inputs: list[Path], out: Path, *, size: tuple[int | None, int | None] = (None, None),
            raw: bool = True, video_frames: bool = False, progress: bool = True, threads: int | None = None,
            console=None) -> dict[str, Any]:
    """Predict for every input (see the module docstring); returns (and writes as ``summary.json``) what was
    done: counts, skipped files with the reason, and per video its output and frames per second."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    predictor = load_predictor(model, size, threads)
    found = collect_inputs(inputs)
    out.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    used: set[str] = set()
    summary: dict[str, Any] = {"model": str(model), "backend": predictor.backend, "tasks": list(predictor.tasks),
                               "input_size": list(predictor.input_size) if predictor.input_size else None,
                               "images": 0, "videos": [], "skipped": []}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        if found.images:
            job = bar.add_task("images", total=len(found.images))
            for path in found.images:
                try:
                    image = load_image(path)
                except DataError as exc:
                    if path in found.explicit:
                        raise
                    summary["skipped"].append({"file": str(path), "reason": str(exc)})
                    bar.advance(job)
                    continue
                pred = predict_one(predictor, image)
                write_outputs(predictor, pred, out / _unique_stem(path.stem, used), raw=raw)
                summary["images"] += 1
                bar.advance(job)
        for path in found.videos:
            job = bar.add_task(f"video {path.name}", total=None)

            def advance(total, job=job):
                bar.update(job, total=total, advance=1)

            try:
                summary["videos"].append(predict_video(predictor, path, out, _unique_stem(path.stem, used),
                                                       video_frames=video_frames, raw=raw, advance=advance))
            except DataError as exc:
                if path in found.explicit:
                    raise
                summary["skipped"].append({"file": str(path), "reason": str(exc)})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
