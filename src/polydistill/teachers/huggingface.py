"""``hf:`` teachers: depth, semantic-segmentation and feature-encoder models from the Hugging Face hub.

:func:`build` (the ``hf`` source) reads the model's config and picks the adapter: vision encoders
(DINOv2 with or without registers, CLIP, SigLIP, SAM's image encoder) become a
:class:`~polydistill.teachers.hf_features.HuggingFaceFeatureTeacher` for a features task (see that module);
object detectors (DETR family) a :class:`~polydistill.teachers.hf_detection.HuggingFaceDetectionTeacher` for the
detection task (see that module); everything else a :class:`HuggingFaceTeacher`, described here.

Supported (tested on tiny random-weight models built from a config and saved to a folder, the same
``from_pretrained`` path a user with internet takes):

* depth — ``AutoModelForDepthEstimation``: Depth Anything v1/v2, DPT, ZoeDepth, GLPN. The depth convention
  comes from the model (Depth Anything relative and DPT/MiDaS → ``inverse_relative``; Depth Anything metric,
  ZoeDepth, GLPN → ``metric``) unless the config sets ``depth_convention``;
* semantic segmentation — ``AutoModelForSemanticSegmentation`` (SegFormer, UperNet, DPT-ADE...) and
  Mask2Former/MaskFormer through their semantic combination of class and mask queries. Classes come from the
  model's ``id2label``; a ``class_map`` maps them onto the student's classes.

Preprocessing is the teacher's job: the image processor's mean/std; the input is resized to the processor's
size (or ``options.input_size: [H, W]``), keeping the aspect ratio and rounding to multiples of the patch size
where the processor asks for it (``keep_aspect_ratio`` / ``ensure_multiple_of``); outputs are resized back.

Safety and offline use: weights load through ``from_pretrained`` (safetensors preferred by transformers);
``trust_remote_code`` stays off unless the config turns it on. The local cache is tried first; with
``HF_HUB_OFFLINE=1`` (what ``polydistill demo`` sets) or without network a model that is not cached fails at
once with an error saying so, instead of retrying.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ..config import TeacherConfig
from ..errors import ConfigError
from .base import PixelSize, Teacher, source_options
from .class_map import resolve_class_map
from .hf_detection import HuggingFaceDetectionTeacher, detection_model_types, is_detection_config
from .hf_features import FEATURE_MODEL_TYPES, HuggingFaceFeatureTeacher
from .hf_loading import HubOptions, load_kwargs, load_pretrained
from .sources import TaskClasses

#: model_type -> depth convention of its output when the config does not say
DEPTH_CONVENTION_BY_TYPE = {"dpt": "inverse_relative", "zoedepth": "metric", "glpn": "metric"}


class Options(HubOptions):
    input_size: PixelSize | None = Field(None, description="[H, W] the model runs at (default: the "
                                               "processor's size)")


def build(cfg: TeacherConfig, classes: TaskClasses) -> Teacher:
    """Hugging Face hub models: depth, semantic segmentation, DETR-family detectors or feature encoders.

    The model's config picks the adapter: a feature teacher for vision encoders
    (:mod:`~polydistill.teachers.hf_features`), a detection teacher for object detectors
    (:mod:`~polydistill.teachers.hf_detection`), else a depth / segmentation teacher.
    """
    import transformers  # optional heavy dependency: only hf teachers need it

    revision = cfg.options.get("revision")  # checked with the rest by the adapter's Options
    options = HubOptions(revision=revision if isinstance(revision, str) else None)
    config = load_pretrained(transformers.AutoConfig, cfg.path, cfg.name,
                             **load_kwargs(cfg.trust_remote_code, options))
    common = dict(depth_convention=cfg.depth_convention, class_map=cfg.class_map,
                  trust_remote_code=cfg.trust_remote_code, options=cfg.options)
    if is_detection_config(config):
        return HuggingFaceDetectionTeacher(cfg.name, cfg.path, cfg.tasks, **common,
                                           student_detection_classes=classes.get("detection"))
    if config.model_type in detection_model_types()[1]:
        raise ConfigError(f"teacher '{cfg.name}': {config.model_type} is a text-prompted detector; hf "
                          "detection teachers cover closed-vocabulary detectors (DETR, RT-DETR, YOLOS...)")
    if config.model_type in FEATURE_MODEL_TYPES:
        return HuggingFaceFeatureTeacher(cfg.name, cfg.path, cfg.tasks, **common)
    return HuggingFaceTeacher(cfg.name, cfg.path, cfg.tasks, **common, student_classes=classes.get("semseg"))


class HuggingFaceTeacher(Teacher):
    """Depth (``(B, 1, H, W)``) or segmentation logits (``(B, C, H, W)``) of a hub model; see the module."""

    recipe_covers_options = True

    def __init__(self, name: str, path: str, tasks: list[str] | None = None, *, depth_convention: str | None = None,
                 class_map: str | None = None, student_classes: list[str] | None = None,
                 trust_remote_code: bool = False, options: Options | Mapping[str, Any] | None = None):
        import transformers  # optional heavy dependency

        options = source_options(Options, options, name, "hf")
        kwargs = load_kwargs(trust_remote_code, options)
        config = load_pretrained(transformers.AutoConfig, path, name, **kwargs)
        self.kind = self._kind(config, name, path)
        own_task = "depth" if self.kind == "depth" else "semseg"
        chosen = tasks or [own_task]
        if chosen != [own_task]:
            raise ConfigError(f"teacher '{name}' ({config.model_type}) predicts {own_task} only, not {chosen}")
        loader = {
            "depth": transformers.AutoModelForDepthEstimation,
            "semseg": transformers.AutoModelForSemanticSegmentation,
            "mask": transformers.AutoModelForUniversalSegmentation,
        }[self.kind]
        try:
            model = load_pretrained(loader, path, name, **kwargs)
        except ImportError as exc:  # e.g. Mask2Former builds its (unused) matcher with scipy
            raise ConfigError(f"teacher '{name}': {config.model_type} needs an extra package ({exc}); install it "
                              "(e.g. pip install scipy)") from None
        mapping = None
        if own_task == "semseg":
            labels = [config.id2label[i] for i in range(len(config.id2label))]
            mapping = resolve_class_map(name, class_map, labels, student_classes, len(labels))
        elif class_map:
            raise ConfigError(f"teacher '{name}' is a depth model: class_map does not apply")
        if own_task == "depth" and depth_convention is None:
            depth_convention = self._depth_convention(config, name)
        super().__init__(name, tuple(chosen), depth_convention=depth_convention or "metric", class_map=mapping)
        self.model = model
        self.path = path
        self._setup_preprocessing(path, name, options, kwargs)
        self.freeze()

    # -------------------------------------------------------------------------------------- model kind

    @staticmethod
    def _kind(config: Any, name: str, path: str) -> str:
        architectures = " ".join(config.architectures or [])
        if "DepthEstimation" in architectures or config.model_type in ("depth_anything", "zoedepth", "glpn"):
            return "depth"
        if config.model_type in ("mask2former", "maskformer"):
            return "mask"
        if "SemanticSegmentation" in architectures or config.model_type in ("segformer", "upernet"):
            return "semseg"
        if config.model_type == "dpt":
            return "semseg" if "SemanticSegmentation" in architectures else "depth"
        raise ConfigError(
            f"teacher '{name}': '{path}' is a {config.model_type} model ({architectures or 'no architecture'}); "
            "hf teachers cover depth estimation, semantic segmentation and, for a features task, the feature "
            f"encoders {', '.join(FEATURE_MODEL_TYPES)}"
        )

    @staticmethod
    def _depth_convention(config: Any, name: str) -> str:
        if config.model_type == "depth_anything":
            return "metric" if getattr(config, "depth_estimation_type", "relative") == "metric" else "inverse_relative"
        if config.model_type in DEPTH_CONVENTION_BY_TYPE:
            return DEPTH_CONVENTION_BY_TYPE[config.model_type]
        raise ConfigError(f"teacher '{name}': cannot tell what a {config.model_type} model's depth means; set "
                          "depth_convention: metric, relative or inverse_relative")

    # ---------------------------------------------------------------------------------- preprocessing

    def _setup_preprocessing(self, path: str, name: str, options: Options, kwargs: dict[str, Any]) -> None:
        import transformers

        try:
            processor = load_pretrained(transformers.AutoImageProcessor, path, name, **kwargs)
        except (ConfigError, ValueError, OSError):
            processor = None  # a bare model folder: ImageNet statistics, native size
        if processor is not None and not getattr(processor, "do_normalize", True):
            mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # e.g. GLPN: pixels in [0, 1], no normalisation
        else:
            mean = getattr(processor, "image_mean", None) or [0.485, 0.456, 0.406]
            std = getattr(processor, "image_std", None) or [0.229, 0.224, 0.225]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        size = getattr(processor, "size", None) or {}
        self.input_size = tuple(options.input_size) if options.input_size else None
        if self.input_size is None and "height" in size and "width" in size:
            self.input_size = (int(size["height"]), int(size["width"]))
        self.keep_aspect_ratio = bool(getattr(processor, "keep_aspect_ratio", False))
        self.multiple = int(getattr(processor, "ensure_multiple_of", None) or getattr(processor, "size_divisor", None)
                            or 1)  # DPT/Depth Anything patch multiples, GLPN/Mask2Former size divisors

    def model_input_size(self, height: int, width: int) -> tuple[int, int]:
        if self.input_size is None:
            target = (height, width)
        elif self.keep_aspect_ratio:  # scale so both sides reach the processor's size, keep the ratio
            scale = max(self.input_size[0] / height, self.input_size[1] / width)
            target = (height * scale, width * scale)
        else:
            target = self.input_size
        m = self.multiple
        rounding = math.ceil if self.keep_aspect_ratio else round
        return tuple(max(m, int(rounding(v / m)) * m) for v in target)  # type: ignore[return-value]

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(), "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                "input_size": self.input_size, "keep_aspect_ratio": self.keep_aspect_ratio, "multiple": self.multiple}

    # ----------------------------------------------------------------------------------------- predict

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.model_input_size(*images.shape[-2:])
        x = images.float()
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x - self.mean) / self.std
        out = self.model(pixel_values=x)
        if self.kind == "depth":
            return {"depth": out.predicted_depth}
        if self.kind == "semseg":
            return {"semseg": out.logits}
        classes = out.class_queries_logits.softmax(-1)[..., :-1]  # drop the "no object" class
        masks = out.masks_queries_logits.sigmoid()
        probs = torch.einsum("bqc,bqhw->bchw", classes, masks)
        probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-6)
        return {"semseg": torch.log(probs.clamp_min(1e-6))}
