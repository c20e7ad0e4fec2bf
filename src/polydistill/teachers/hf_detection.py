"""``hf:`` object-detection teachers: the DETR family from the Hugging Face hub, teaching ``detection``.

:func:`polydistill.teachers.huggingface.build` (the ``hf`` source) sends every config that
``AutoModelForObjectDetection`` loads here: DETR, Conditional DETR, Deformable DETR, DAB-DETR, RT-DETR (v2),
D-FINE, YOLOS, Table Transformer... (tested: DETR, Conditional DETR and YOLOS, tiny random models saved to a
folder — the same ``from_pretrained`` path a hub model takes). Text-prompted detectors (OWL-ViT, Grounding
DINO, OmDet) are not supported: they need a text query per class.

The teacher preprocesses like the model's image processor (its mean/std, or none where it does not normalise,
e.g. RT-DETR; its resizing: ``shortest_edge``/``longest_edge`` keeping the aspect ratio as DETR does, or a
fixed ``height``/``width``), runs the model, and turns its outputs into boxes in input pixels with the
processor's own ``post_process_object_detection(outputs, threshold=min_score, target_sizes=...)``. Labels
index the config's ``id2label``; they are mapped onto the student's detection classes and rendered into the
detection task space exactly as for torchvision detectors — see :mod:`polydistill.teachers.torchvision_detection`
(label mapping by name or ``class_map``, ``min_score``, ``stride``, output ``(B, C + 4, ceil(H/4), ceil(W/4))``).

Safety and offline use as for every ``hf:`` teacher: weights load through ``from_pretrained`` (safetensors
preferred by transformers), the local cache first; with ``HF_HUB_OFFLINE=1`` a model that is not cached fails
at once with a clear error; ``trust_remote_code`` stays off unless the teacher's config turns it on.

Options (``options:`` of the teacher; unknown keys are an error):

``min_score``
    Boxes scoring below it are dropped (default 0.05; it is also the post-processing threshold).
``stride``
    Stride of the task-space grid (default 4, the student's detection head).
``input_size``
    ``[H, W]``: resize every image to this size; ``input``: run at the input resolution; default: the image
    processor's rule (DETR: short side 800, long side at most 1333 — slow on a CPU; ``input`` is faster but
    weaker on small images).
``revision``
    A hub revision (branch, tag or commit) to load.

Example::

    teachers:
      - name: detr
        path: hf:facebook/detr-resnet-50          # COCO names matched to tasks.detection.class_names
        class_map: maps/coco_to_mine.yaml           # optional: student class -> teacher classes
        options: {min_score: 0.3, input_size: [480, 640]}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ConfigError
from .base import PixelSize, PositiveInt, source_options
from .hf_loading import HubOptions, load_kwargs, load_pretrained
from .torchvision_detection import DEFAULT_MIN_SCORE, DEFAULT_STRIDE, BoxTeacher


class Options(HubOptions):
    min_score: float = Field(DEFAULT_MIN_SCORE, ge=0.0, le=1.0, description="boxes scoring below it are dropped")
    stride: PositiveInt = Field(DEFAULT_STRIDE, description="stride of the task-space grid")
    input_size: PixelSize | Literal["input"] | None = Field(
        None, description="[H, W], 'input' (the input resolution) or the processor's rule")


def detection_model_types() -> tuple[set[str], set[str]]:
    """(model types ``AutoModelForObjectDetection`` loads, text-prompted detector types)."""
    from transformers.models.auto import modeling_auto

    closed = set(modeling_auto.MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES)
    zero_shot = set(getattr(modeling_auto, "MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES", {}))
    return closed, zero_shot


def is_detection_config(config: Any) -> bool:
    """Whether a transformers config is a (closed-vocabulary) object detector."""
    closed, zero_shot = detection_model_types()
    if config.model_type in zero_shot:
        return False
    architectures = config.architectures or []
    if architectures:  # e.g. DetrForSegmentation is a detr model but not a box detector to load as one
        return any(a.endswith("ForObjectDetection") for a in architectures)
    return config.model_type in closed


def _size_value(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, dict) or hasattr(size, "get"):
        return size.get(key)
    return getattr(size, key, None)


def resize_shortest_edge(height: int, width: int, shortest: int, longest: int | None) -> tuple[int, int]:
    """DETR's rule: the short side to ``shortest`` unless the long side would pass ``longest``."""
    small, large = min(height, width), max(height, width)
    size = float(shortest)
    if longest is not None and large / small * size > longest:
        size = float(round(longest * small / large))
    if width < height:
        return int(size * height / width), int(size)
    return int(size), int(size * width / height)


class HuggingFaceDetectionTeacher(BoxTeacher):
    """A frozen hub object detector teaching ``detection`` (see the module docstring)."""

    def __init__(self, name: str, path: str, tasks: list[str] | None = None, *, depth_convention: str | None = None,
                 class_map: str | None = None, student_detection_classes: list[str] | None = None,
                 trust_remote_code: bool = False, options: Options | Mapping[str, Any] | None = None):
        import transformers  # optional heavy dependency

        options = source_options(Options, options, name, "hf detection")
        chosen = list(tasks or ["detection"])
        if chosen != ["detection"]:
            raise ConfigError(f"teacher '{name}': object detectors teach detection only; got tasks {chosen}")
        if depth_convention not in (None, "metric"):
            raise ConfigError(f"teacher '{name}': depth_convention means nothing for a detection teacher; remove it")
        kwargs = load_kwargs(trust_remote_code, options)
        config = load_pretrained(transformers.AutoConfig, path, name, **kwargs)
        try:
            model = load_pretrained(transformers.AutoModelForObjectDetection, path, name, **kwargs)
        except ImportError as exc:  # e.g. a timm backbone without timm installed
            raise ConfigError(f"teacher '{name}': {config.model_type} needs an extra package ({exc}); "
                              "install it") from None
        except ValueError as exc:  # not an object-detection architecture
            raise ConfigError(f"teacher '{name}': '{path}' ({config.model_type}) cannot be loaded as an object "
                              f"detector: {exc}") from None
        try:
            processor = load_pretrained(transformers.AutoImageProcessor, path, name, **kwargs)
        except (ConfigError, ValueError, OSError) as exc:
            raise ConfigError(f"teacher '{name}': '{path}' has no image processor (preprocessor_config.json), which "
                              f"a detection teacher needs for post_process_object_detection; save the model's "
                              f"processor beside it ({exc})") from None
        if not callable(getattr(processor, "post_process_object_detection", None)):
            raise ConfigError(f"teacher '{name}': the image processor of '{path}' ({type(processor).__name__}) has "
                              "no post_process_object_detection; it is not a box detector polydistill can use")
        id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
        num_labels = max([int(getattr(config, "num_labels", 0) or 0), *(k + 1 for k in id2label)])
        teacher_classes = [id2label.get(i, f"LABEL_{i}") for i in range(num_labels)]

        super().__init__(name, ("detection",), depth_convention="metric")
        self._setup_boxes(teacher_classes, class_map, student_detection_classes, options.min_score,
                          options.stride)
        self.model = model
        self.path = path
        self.processor = processor
        self._setup_preprocessing(name, processor, options)
        self.freeze()

    def _setup_preprocessing(self, name: str, processor: Any, options: Options) -> None:
        if getattr(processor, "do_normalize", True):
            mean = list(getattr(processor, "image_mean", None) or [0.485, 0.456, 0.406])
            std = list(getattr(processor, "image_std", None) or [0.229, 0.224, 0.225])
        else:  # e.g. RT-DETR: pixels in [0, 1]
            mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        size = getattr(processor, "size", None)
        given = options.input_size
        self.input_size: tuple[int, int] | None = None
        self.shortest_edge: int | None = None
        self.longest_edge: int | None = None
        if given is not None:
            if given == "input":
                return
            self.input_size = (int(given[0]), int(given[1]))
            return
        if not getattr(processor, "do_resize", True):
            return
        if _size_value(size, "height") and _size_value(size, "width"):
            self.input_size = (int(_size_value(size, "height")), int(_size_value(size, "width")))
        elif _size_value(size, "shortest_edge"):
            self.shortest_edge = int(_size_value(size, "shortest_edge"))
            longest = _size_value(size, "longest_edge")
            self.longest_edge = int(longest) if longest else None

    def model_input_size(self, height: int, width: int) -> tuple[int, int]:
        if self.input_size is not None:
            return self.input_size
        if self.shortest_edge is not None:
            return resize_shortest_edge(height, width, self.shortest_edge, self.longest_edge)
        return height, width

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(), "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                "input_size": self.input_size, "shortest_edge": self.shortest_edge, "longest_edge": self.longest_edge}

    def _detect(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        height, width = int(images.shape[-2]), int(images.shape[-1])
        size = self.model_input_size(height, width)
        x = images.float()
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        x = (x - self.mean) / self.std
        outputs = self.model(pixel_values=x)
        target_sizes = torch.tensor([[height, width]] * images.shape[0], device=x.device)
        results = self.processor.post_process_object_detection(outputs, threshold=self.min_score,
                                                               target_sizes=target_sizes)
        return [(r["boxes"], r["scores"], r["labels"]) for r in results]
