"""Teachers from torchvision: its semantic segmentation models (``torchvision:<builder name>``).

Supported builders are those of ``torchvision.models.segmentation``: ``deeplabv3_resnet50``,
``deeplabv3_resnet101``, ``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``, ``fcn_resnet101`` and
``lraspp_mobilenet_v3_large``. They teach ``semseg`` only (detection builders: torchvision_detection): the input,
RGB in ``[0, 1]``, is normalised with the weights' mean/std (ImageNet's), the model runs at the input
resolution and its ``out`` logits are the answer; the base class resizes them and applies the class map.

Options (``options:`` of the teacher; unknown keys are an error):

``weights``
    Name of a member of the model's torchvision weights enum, e.g. ``DEFAULT`` (the default) or
    ``COCO_WITH_VOC_LABELS_V1``; ``none`` builds a randomly initialised model (tests, smoke runs). Named
    weights give the class names (``weights.meta["categories"]``) and the normalisation. They must already
    be in the torch hub cache (``$TORCH_HOME/hub/checkpoints``): polydistill never downloads them; it
    stops with a message saying how to get them (download once on a machine with internet, or use
    ``weights_file``).
``weights_file``
    A local state dict, ``.safetensors`` (loaded with safetensors) or ``.pth``/``.pt`` (loaded with
    ``torch.load(weights_only=True)``), loaded strictly into a model built without weights. ``weights``
    may still name an enum member to lend its class names and normalisation (no download).
``num_classes``
    Number of classes of a random or ``weights_file`` model (inferred from the file when left out).
``aux_loss``
    Build the auxiliary head (deeplabv3/fcn) so a file holding ``aux_classifier`` weights loads strictly
    (default: inferred from the file, else false). The auxiliary head is never run by the teacher.

Example::

    teachers:
      - name: voc_seg
        path: torchvision:deeplabv3_mobilenet_v3_large
        class_map: maps/voc_to_mine.yaml     # VOC's 21 classes -> the student's classes
        options: {weights: COCO_WITH_VOC_LABELS_V1}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import ConfigError
from ..registry import did_you_mean
from .base import Teacher, check_option_keys
from .class_map import resolve_class_map
from .weights import read_state_dict

OPTION_KEYS = ("weights", "weights_file", "num_classes", "aux_loss")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the final classifier of each family: its weight's first dimension is the number of classes
CLASSIFIER_KEYS = ("classifier.4.weight", "classifier.high_classifier.weight")


def segmentation_models() -> list[str]:
    import torchvision.models as tvm
    from torchvision.models import segmentation

    return sorted(tvm.list_models(module=segmentation))


def cached_weights_path(weights) -> Path:
    """Where torch hub keeps (or would keep) the file of a torchvision weights enum member."""
    file_name = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def require_cached(teacher: str, model: str, weights) -> None:
    """Stop with how-to-fix instructions when a weights enum member's file is not in the torch hub cache:
    polydistill never downloads."""
    cached = cached_weights_path(weights)
    if not cached.is_file():
        raise ConfigError(
            f"teacher '{teacher}': torchvision weights {type(weights).__name__}.{weights.name} are not cached "
            f"locally (looked for {cached}) and polydistill does not download them. Fix: on a machine with "
            f"internet run `python -c \"import torchvision; torchvision.models.get_model('{model}', "
            f"weights='{weights.name}')\"` and copy {cached.name} into {cached.parent} (or set TORCH_HOME), "
            f"or download {weights.url} yourself and give it as options.weights_file")


def build_offline(teacher: str, builder, model: str, **kwargs) -> torch.nn.Module:
    """``builder(**kwargs)`` without any download: no weights means no backbone weights either."""
    if kwargs.get("weights") is None:
        kwargs["weights"] = None
        kwargs["weights_backbone"] = None
    try:
        return builder(**kwargs)
    except (NotImplementedError, ValueError) as exc:
        raise ConfigError(f"teacher '{teacher}': cannot build {model} with {kwargs}: {exc}") from exc


def _normalisation(weights) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the weights' own preprocessing, ImageNet's when it does not say."""
    if weights is None:
        return IMAGENET_MEAN, IMAGENET_STD
    try:
        transform = weights.transforms()
        mean, std = tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)
    except Exception:  # any odd transform: fall back to ImageNet statistics
        return IMAGENET_MEAN, IMAGENET_STD
    if len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return mean, std


class TorchvisionTeacher(Teacher):
    """A frozen torchvision semantic segmentation model teaching ``semseg`` (see the module docstring)."""

    def __init__(self, name: str, path: str, tasks: list[str] | None = None, *, depth_convention: str | None = None,
                 class_map: str | None = None, student_classes: list[str] | None = None,
                 trust_remote_code: bool = False, options: dict[str, Any] | None = None):
        import torchvision.models as tvm

        chosen = list(tasks or ["semseg"])
        if chosen != ["semseg"]:
            raise ConfigError(f"teacher '{name}': torchvision segmentation models teach semseg only (a "
                              "detection builder such as fasterrcnn_resnet50_fpn teaches detection); "
                              f"got tasks {chosen}")
        if depth_convention not in (None, "metric"):
            raise ConfigError(f"teacher '{name}': depth_convention means nothing for a semseg teacher; remove it")
        models = segmentation_models()
        if path not in models:
            raise ConfigError(f"teacher '{name}': unknown torchvision segmentation model '{path}'"
                              f"{did_you_mean(str(path), models)}")
        options = check_option_keys(name, options, OPTION_KEYS, "torchvision")

        weights_file = options.get("weights_file")
        weights_name = options.get("weights", None if weights_file else "DEFAULT")
        weights = self._resolve_weights(name, path, weights_name)
        num_classes = options.get("num_classes")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ConfigError(f"teacher '{name}': options.num_classes must be a positive integer, got {num_classes!r}")
        aux_loss = options.get("aux_loss")
        if aux_loss is not None and not isinstance(aux_loss, bool):
            raise ConfigError(f"teacher '{name}': options.aux_loss must be true or false, got {aux_loss!r}")
        categories = list(weights.meta["categories"]) if weights is not None else None
        if categories is not None and num_classes is not None and num_classes != len(categories):
            raise ConfigError(f"teacher '{name}': options.num_classes={num_classes} but weights {weights_name} "
                              f"predict {len(categories)} classes; remove num_classes")

        builder = tvm.get_model_builder(path)
        if weights_file is not None:
            state = read_state_dict(name, Path(weights_file), "options.weights_file")
            if num_classes is None:
                num_classes = self._infer_num_classes(name, state, categories)
            if aux_loss is None:
                aux_loss = any(k.startswith("aux_classifier.") for k in state)
            model = self._build(name, builder, path, num_classes=num_classes, aux_loss=aux_loss)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ConfigError(f"teacher '{name}': options.weights_file {weights_file} does not fit {path} "
                                  f"with {num_classes} classes (set options.num_classes / aux_loss to match "
                                  f"the file): {str(exc).splitlines()[0]} ...") from exc
        elif weights is not None:
            require_cached(name, path, weights)
            model = self._build(name, builder, path, weights=weights)
        else:
            model = self._build(name, builder, path, num_classes=num_classes or 21, aux_loss=bool(aux_loss))
        if getattr(model, "aux_classifier", None) is not None:
            model.aux_classifier = None  # the teacher answers with "out" only; skip the auxiliary head's compute

        num_classes = self._count_classes(model, num_classes, categories)
        if categories is not None and len(categories) != num_classes:
            categories = None  # an enum lending names to a file with another number of classes
        super().__init__(name, ("semseg",), depth_convention="metric",
                         class_map=resolve_class_map(name, class_map, categories, student_classes, num_classes))
        self.model = model
        self.model_name = path
        self.weights_name = None if weights is None else weights.name
        self.categories = categories
        self.num_classes = num_classes
        mean, std = _normalisation(weights)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.freeze()

    @staticmethod
    def _resolve_weights(teacher: str, model: str, weights_name: Any):
        import torchvision.models as tvm

        if weights_name is None or (isinstance(weights_name, str) and weights_name.lower() == "none"):
            return None
        enum = tvm.get_model_weights(model)
        members = list(enum.__members__)
        if not isinstance(weights_name, str) or weights_name not in enum.__members__:
            raise ConfigError(f"teacher '{teacher}': '{weights_name}' is not a weights name of {model} "
                              f"({enum.__name__}){did_you_mean(str(weights_name), members + ['none'])}")
        return enum[weights_name]

    @staticmethod
    def _infer_num_classes(teacher: str, state: dict[str, torch.Tensor], categories: list[str] | None) -> int:
        for key in CLASSIFIER_KEYS:
            if key in state:
                return int(state[key].shape[0])
        if categories is not None:
            return len(categories)
        raise ConfigError(f"teacher '{teacher}': cannot tell the number of classes from options.weights_file; "
                          "set options.num_classes")

    @staticmethod
    def _build(teacher: str, builder, model: str, **kwargs) -> torch.nn.Module:
        if not kwargs.get("aux_loss"):
            kwargs.pop("aux_loss", None)  # lraspp refuses the argument; the others default to False
        return build_offline(teacher, builder, model, **kwargs)

    @staticmethod
    def _count_classes(model: torch.nn.Module, num_classes: int | None, categories: list[str] | None) -> int:
        state = model.state_dict()
        for key in CLASSIFIER_KEYS:
            if key in state:
                return int(state[key].shape[0])
        return num_classes or (len(categories) if categories else 21)

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        return {"semseg": self.model(x)["out"]}
