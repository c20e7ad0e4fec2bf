"""Teachers from torchvision's object detectors (``torchvision:<detection builder name>``), and what every
box-producing teacher shares (:class:`BoxTeacher`).

A box teacher runs its detector, keeps per image the boxes (input pixels), scores and labels, maps the labels
onto the student's detection classes, drops boxes of classes that map to none and boxes scoring below
``min_score``, and renders the rest with :meth:`polydistill.tasks.detection.DetectionTask.render` into the
detection task space: ``(B, C + 4, ceil(H / stride), ceil(W / stride))`` — class heat-maps (peak = the box's
score), then the distances in input pixels from each cell centre to the box edges.

Label mapping: with a ``class_map`` (the YAML of :mod:`polydistill.teachers.class_map`: student class ->
teacher classes) each teacher class goes to the student class that lists it; without one, teacher classes are
matched to the student's detection classes *by name* (case-insensitive) — every student class must be one of
the teacher's, teacher classes the student does not have are dropped (e.g. a COCO detector teaching a
``[person, car]`` student). The student's classes are ``tasks.detection.class_names`` (default: the dataset's);
a teacher built without them (tests, ``polydistill`` tools) teaches its own classes, less torchvision's
``__background__`` and ``N/A`` placeholders.

Supported builders are those of ``torchvision.models.detection``: ``fasterrcnn_resnet50_fpn(_v2)``,
``fasterrcnn_mobilenet_v3_large_fpn``, ``fasterrcnn_mobilenet_v3_large_320_fpn``, ``retinanet_resnet50_fpn(_v2)``,
``fcos_resnet50_fpn``, ``ssd300_vgg16``, ``ssdlite320_mobilenet_v3_large``, and the box outputs of
``maskrcnn_resnet50_fpn(_v2)`` / ``keypointrcnn_resnet50_fpn``. They teach ``detection`` only. The model takes
the images in ``[0, 1]`` and normalises them itself; its labels index ``weights.meta["categories"]`` (COCO's 91
entries with ``__background__`` and ``N/A``). The teacher pins the model's own score threshold to ``min_score``.

Resolution: torchvision's detectors resize their input internally (``min_size``/``max_size``: short side to
800, long side at most 1333 for the R-CNNs, RetinaNet and FCOS). This teacher sets them, per batch, to the
input's own short and long side, so the detector runs at the input resolution (no upscaling of small
images); ``options.min_size``/``max_size`` restore torchvision's resizing (e.g. ``min_size: 800`` for a COCO
model on small images — slower, better on small objects). SSD models always run at their fixed size (300 or
320). Either way torchvision maps the boxes back to the input image's pixels.

Options (``options:`` of the teacher; unknown keys are an error):

``weights``
    Name of a member of the model's torchvision weights enum, e.g. ``DEFAULT`` (the default) or ``COCO_V1``;
    ``none`` builds a randomly initialised model (tests, smoke runs). Named weights give the class names. They
    must already be in the torch hub cache (``$TORCH_HOME/hub/checkpoints``): polydistill never downloads them
    and stops with a message saying how to get them (download once with internet, or use ``weights_file``).
``weights_file``
    A local state dict, ``.safetensors`` (safetensors) or ``.pth``/``.pt`` (``torch.load(weights_only=True)``),
    loaded strictly into a model built without weights. ``weights`` may still name an enum member to lend its
    class names (no download).
``num_classes``
    Size of the label space of a random or ``weights_file`` model, background included for the R-CNNs and SSD
    (inferred from the file when left out; random default: 91, COCO's).
``class_names``
    The teacher's class names, one per label id (default: the weights' categories, else ``class_0``...).
``min_score``
    Boxes scoring below it are dropped (default 0.05).
``stride``
    Stride of the task-space grid (default 4, the student's detection head).
``min_size``, ``max_size``
    torchvision's internal resizing (default: the input's own sides, i.e. none); not for SSD.

Example::

    teachers:
      - name: coco_det
        path: torchvision:fasterrcnn_resnet50_fpn_v2
        options: {weights: DEFAULT, min_score: 0.1}   # COCO names matched to tasks.detection.class_names
"""

from __future__ import annotations

import difflib
import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field

from ..config import TeacherConfig
from ..errors import ConfigError
from ..registry import did_you_mean
from ..tasks.detection import DetectionTask
from .base import Teacher, source_options
from .class_map import ClassMap
from .sources import TaskClasses
from .torchvision_models import TorchvisionTeacher, WeightsOptions, build_offline, load_model, segmentation_models

#: torchvision's placeholder categories: never a class to teach
PLACEHOLDER_CLASSES = ("__background__", "N/A")
DEFAULT_MIN_SCORE = 0.05
DEFAULT_STRIDE = 4


class Options(WeightsOptions):
    class_names: list[str] | None = Field(None, description="the teacher's class names, one per label id")
    min_score: float = Field(DEFAULT_MIN_SCORE, ge=0.0, le=1.0, description="boxes scoring below it are dropped")
    stride: int = Field(DEFAULT_STRIDE, gt=0, strict=True, description="stride of the task-space grid")
    min_size: int | None = Field(None, gt=0, strict=True, description="torchvision's internal resizing")
    max_size: int | None = Field(None, gt=0, strict=True, description="torchvision's internal resizing")
#: state-dict key of the final classifier per builder family -> (key, anchors per location): first dim / anchors
CLASSIFIER_KEYS = (
    ("roi_heads.box_predictor.cls_score.weight", 1),  # faster/mask/keypoint R-CNN
    ("head.classification_head.module_list.0.1.weight", 6),  # ssdlite320 (6 anchors per location)
    ("head.classification_head.module_list.0.weight", 4),  # ssd300 (4 anchors in its first level)
)


def detection_models() -> list[str]:
    import torchvision.models as tvm
    from torchvision.models import detection

    return sorted(tvm.list_models(module=detection))


def build(cfg: TeacherConfig, classes: TaskClasses) -> Teacher:
    """torchvision segmentation models or object detectors, by builder name (weights from the local cache)."""
    if cfg.depth_convention not in (None, "metric"):
        raise ConfigError(f"teacher '{cfg.name}': depth_convention means nothing for a torchvision teacher; "
                          "remove it")
    if cfg.path in detection_models():
        return TorchvisionDetectionTeacher(cfg.name, cfg.path, cfg.tasks, class_map=cfg.class_map,
                                           student_detection_classes=classes.get("detection"), options=cfg.options)
    segmentation = segmentation_models()
    if cfg.path not in segmentation:
        raise ConfigError(f"teacher '{cfg.name}': unknown torchvision model '{cfg.path}'"
                          f"{did_you_mean(str(cfg.path), segmentation + detection_models())}")
    return TorchvisionTeacher(cfg.name, cfg.path, cfg.tasks, class_map=cfg.class_map,
                              student_classes=classes.get("semseg"), options=cfg.options)


# ----------------------------------------------------------------------------------------- shared box teacher


def _norm(name: str) -> str:
    return str(name).strip().lower()


def default_student_classes(teacher: str, teacher_classes: list[str]) -> list[str]:
    """The teacher's own classes, less placeholders and repeats (when no student classes are given)."""
    out: list[str] = []
    for c in teacher_classes:
        if c not in PLACEHOLDER_CLASSES and c not in out:
            out.append(c)
    if not out:
        raise ConfigError(f"teacher '{teacher}' names no classes besides placeholders; give student detection "
                          "classes (tasks.detection.class_names)")
    return out


def label_lookup(teacher: str, teacher_classes: list[str], student_classes: list[str],
                 class_map: str | None) -> tuple[list[int], ClassMap | None]:
    """Per teacher label id, the student detection class id (−1: not a student class), and the class map."""
    if class_map is not None:
        cmap = ClassMap.from_file(class_map, teacher_classes, student_classes)
        if len(cmap.teacher_classes) != len(teacher_classes):
            raise ConfigError(f"teacher '{teacher}': class_map {class_map} lists {len(cmap.teacher_classes)} "
                              f"teacher_classes but the detector has {len(teacher_classes)} label ids; list one name "
                              "per label id (or leave teacher_classes out to use the detector's own names)")
        rows = cmap.matrix[:-1]  # (C, K); the last row is the unmapped mass
        lookup = [int(rows[:, k].argmax()) if bool(rows[:, k].any()) else -1 for k in range(len(teacher_classes))]
        return lookup, cmap
    index = {_norm(c): i for i, c in enumerate(student_classes)}
    lookup = [index.get(_norm(c), -1) for c in teacher_classes]
    known = {_norm(c) for c in teacher_classes}
    missing = [c for c in student_classes if _norm(c) not in known]
    if missing:
        hints = ""
        for m in missing[:5]:
            close = difflib.get_close_matches(str(m), [str(c) for c in teacher_classes], n=1, cutoff=0.6)
            hints += f"; '{m}' — did you mean '{close[0]}'?" if close else ""
        shown = [c for c in teacher_classes if c not in PLACEHOLDER_CLASSES]
        raise ConfigError(
            f"teacher '{teacher}' has no class named {missing} (its classes: {shown[:30]}"
            f"{' ...' if len(shown) > 30 else ''}; the student's detection classes: {student_classes}){hints}. "
            "Name the student's detection classes like the teacher's, or give the teacher a class_map "
            "(YAML: student class -> teacher classes)"
        )
    return lookup, None


class BoxTeacher(Teacher):
    """A teacher whose model outputs boxes; renders them into the detection task space (module docstring).

    Subclasses call :meth:`_setup_boxes` before using the teacher and implement :meth:`_detect`.
    """

    recipe_covers_options = True

    def _setup_boxes(self, teacher_classes: list[str], class_map: str | None,
                     student_detection_classes: list[str] | None, min_score: float, stride: int) -> None:
        name = self.name
        if class_map is not None and student_detection_classes is None:
            raise ConfigError(f"teacher '{name}': class_map needs a detection task (with class names) in the student")
        students = (list(student_detection_classes) if student_detection_classes is not None
                    else default_student_classes(name, teacher_classes))
        lookup, cmap = label_lookup(name, teacher_classes, students, class_map)
        self.class_map = cmap
        self.teacher_classes = list(teacher_classes)
        self.detection_classes = students
        self.min_score = float(min_score)
        self.stride = stride
        self.task = DetectionTask(num_classes=len(students), class_names=students, stride=stride)
        self.register_buffer("label_lookup", torch.tensor(lookup, dtype=torch.int64), persistent=False)

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(), "min_score": self.min_score, "stride": self.stride,
                "detection_classes": self.detection_classes, "teacher_classes": self.teacher_classes,
                "label_lookup": self.label_lookup.tolist(), "target_revision": self.task.target_revision}

    @abstractmethod
    def _detect(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> per image ``(boxes (n, 4) x0 y0 x1 y1 in input pixels, scores (n,),
        teacher label ids (n,))``."""

    def map_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher label ids -> student detection class ids (−1 where none)."""
        labels = labels.long()
        lookup = self.label_lookup.to(labels.device)
        inside = (labels >= 0) & (labels < len(lookup))
        return torch.where(inside, lookup[labels.clamp(0, len(lookup) - 1)], torch.full_like(labels, -1))

    def render_detections(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                          image_size: tuple[int, int]) -> torch.Tensor:
        """One image's boxes (teacher labels) -> its task-space map ``(C + 4, h, w)``."""
        height, width = image_size
        grid = (math.ceil(height / self.stride), math.ceil(width / self.stride))
        boxes, scores = boxes.float().reshape(-1, 4), scores.float().reshape(-1)
        mapped = self.map_labels(labels.reshape(-1))
        keep = (mapped >= 0) & (scores >= self.min_score)
        boxes, scores, mapped = boxes[keep], scores[keep], mapped[keep]
        boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                             boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
        return self.task.render(boxes, mapped, scores, grid)

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        detections = self._detect(images)
        maps = [self.render_detections(b, s, lab, size).to(images.device) for b, s, lab in detections]
        return {"detection": torch.stack(maps)}


# ----------------------------------------------------------------------------------------- torchvision


class TorchvisionDetectionTeacher(BoxTeacher):
    """A frozen torchvision detector teaching ``detection`` (see the module docstring)."""

    def __init__(self, name: str, path: str, tasks: list[str] | None = None, *, class_map: str | None = None,
                 student_detection_classes: list[str] | None = None,
                 options: Options | Mapping[str, Any] | None = None):
        chosen = list(tasks or ["detection"])
        if chosen != ["detection"]:
            raise ConfigError(f"teacher '{name}': torchvision detectors teach detection only; got tasks {chosen}")
        models = detection_models()
        if path not in models:
            raise ConfigError(f"teacher '{name}': unknown torchvision detection model '{path}'"
                              f"{did_you_mean(str(path), models)}")
        options = source_options(Options, options, name, "torchvision detection")
        model, weights, categories = load_model(
            name, path, options, classes_in=lambda state: self._classifier_classes(path, state), random_classes=91,
            build=lambda builder, **kwargs: build_offline(name, builder, path, **kwargs))

        num_classes = self._classifier_classes(path, model.state_dict())
        if num_classes is None:
            raise ConfigError(f"teacher '{name}': cannot tell the number of classes of {path}; set "
                              "options.num_classes")
        if categories is not None and len(categories) != num_classes:
            categories = None  # an enum lending names to a file with another number of classes
        if options.class_names is not None:
            if len(options.class_names) != num_classes:
                raise ConfigError(f"teacher '{name}': options.class_names must list {num_classes} names, one per "
                                  f"label id of {path}, got {options.class_names!r}")
            categories = list(options.class_names)
        teacher_classes = categories or [f"class_{i}" for i in range(num_classes)]

        fixed_size = getattr(model.transform, "fixed_size", None) is not None
        min_size, max_size = options.min_size, options.max_size
        if fixed_size and (min_size is not None or max_size is not None):
            raise ConfigError(f"teacher '{name}': {path} runs at its fixed input size "
                              f"{tuple(model.transform.fixed_size)}; remove options.min_size / max_size")
        super().__init__(name, ("detection",), depth_convention="metric")
        self._fixed_size = fixed_size
        self.min_size, self.max_size = min_size, max_size
        self._setup_boxes(teacher_classes, class_map, student_detection_classes, options.min_score, options.stride)
        if hasattr(model, "roi_heads"):  # the R-CNNs
            model.roi_heads.score_thresh = self.min_score
        elif hasattr(model, "score_thresh"):  # RetinaNet, FCOS, SSD
            model.score_thresh = self.min_score
        self.model = model
        self.model_name = path
        self.weights_name = None if weights is None else weights.name
        self.num_classes = num_classes
        self.freeze()

    @staticmethod
    def _classifier_classes(model: str, state: dict[str, torch.Tensor]) -> int | None:
        keys = CLASSIFIER_KEYS
        if model.startswith(("retinanet", "fcos")):  # 9 anchors per location for RetinaNet, none for FCOS
            keys = (("head.classification_head.cls_logits.weight", 9 if model.startswith("retinanet") else 1),)
        for key, anchors in keys:
            if key in state:
                return int(state[key].shape[0]) // anchors
        return None

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(), "min_size": self.min_size, "max_size": self.max_size}

    def _detect(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        height, width = int(images.shape[-2]), int(images.shape[-1])
        transform = self.model.transform
        if not self._fixed_size:  # run at the input resolution unless the options say otherwise
            transform.min_size = (self.min_size or min(height, width),)
            transform.max_size = self.max_size or max(height, width)
        outputs = self.model(list(images.float().clamp(0, 1)))
        return [(o["boxes"], o["scores"], o["labels"]) for o in outputs]
