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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from pydantic import Field

from ..errors import ConfigError
from ..registry import did_you_mean
from .base import SourceOptions, Teacher, source_options
from .class_map import resolve_class_map
from .weights import read_state_dict

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


class WeightsOptions(SourceOptions):
    """How every torchvision teacher gets its weights (see the module docstrings)."""

    weights: str | None = Field(None, description="member of the model's weights enum; 'none': random weights "
                                "(default: DEFAULT, or none with weights_file)")
    weights_file: str | None = Field(None, description="a local state dict loaded strictly")
    num_classes: int | None = Field(None, gt=0, strict=True, description="classes of a random or weights_file "
                                    "model (default: inferred from the file)")


def resolve_weights(teacher: str, model: str, weights_name: Any):
    """The weights enum member named ``weights_name`` (None for none), with a suggestion when it is not one."""
    import torchvision.models as tvm  # optional heavy dependency

    if weights_name is None or (isinstance(weights_name, str) and weights_name.lower() == "none"):
        return None
    enum = tvm.get_model_weights(model)
    members = list(enum.__members__)
    if not isinstance(weights_name, str) or weights_name not in enum.__members__:
        raise ConfigError(f"teacher '{teacher}': '{weights_name}' is not a weights name of {model} "
                          f"({enum.__name__}){did_you_mean(str(weights_name), members + ['none'])}")
    return enum[weights_name]


def load_model(teacher: str, model: str, options: WeightsOptions, *, classes_in: Callable[[dict], int | None],
               random_classes: int, build: Callable[..., torch.nn.Module],
               file_kwargs: Callable[[dict], dict[str, Any]] = lambda state: {}, fit_hint: str = "num_classes"
               ) -> tuple[torch.nn.Module, Any, list[str] | None]:
    """``(model, weights enum member or None, its categories)`` from ``weights`` / ``weights_file`` /
    ``num_classes``, never downloading. ``classes_in(state)``: the classes a state dict's classifier predicts;
    ``build(**kwargs)`` builds the model; ``file_kwargs(state)``: more build arguments read from a file."""
    import torchvision.models as tvm  # optional heavy dependency

    weights_file = options.weights_file
    weights_name = options.weights if "weights" in options.model_fields_set else (
        None if weights_file else "DEFAULT")
    weights = resolve_weights(teacher, model, weights_name)
    num_classes = options.num_classes
    categories = list(weights.meta["categories"]) if weights is not None else None
    if categories is not None and num_classes is not None and num_classes != len(categories):
        raise ConfigError(f"teacher '{teacher}': options.num_classes={num_classes} but weights {weights_name} "
                          f"predict {len(categories)} classes; remove num_classes")
    builder = tvm.get_model_builder(model)
    if weights_file is None and weights is not None:
        require_cached(teacher, model, weights)
        return build(builder, weights=weights), weights, categories
    if weights_file is None:
        return build(builder, num_classes=num_classes or random_classes), weights, categories
    state = read_state_dict(teacher, Path(weights_file), "options.weights_file")
    if num_classes is None:
        num_classes = classes_in(state) or (len(categories) if categories is not None else None)
    if num_classes is None:
        raise ConfigError(f"teacher '{teacher}': cannot tell the number of classes from options.weights_file; "
                          "set options.num_classes")
    net = build(builder, num_classes=num_classes, **file_kwargs(state))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"teacher '{teacher}': options.weights_file {weights_file} does not fit {model} "
                          f"with {num_classes} classes (set options.{fit_hint} to match the file): "
                          f"{str(exc).splitlines()[0]} ...") from exc
    return net, weights, categories


class Options(WeightsOptions):
    aux_loss: bool | None = Field(None, strict=True, description="build the auxiliary head (default: inferred "
                                  "from weights_file, else false)")


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

    recipe_covers_options = True

    def __init__(self, name: str, path: str, tasks: list[str] | None = None, *, class_map: str | None = None,
                 student_classes: list[str] | None = None, options: Options | Mapping[str, Any] | None = None):
        chosen = list(tasks or ["semseg"])
        if chosen != ["semseg"]:
            raise ConfigError(f"teacher '{name}': torchvision segmentation models teach semseg only (a "
                              "detection builder such as fasterrcnn_resnet50_fpn teaches detection); "
                              f"got tasks {chosen}")
        models = segmentation_models()
        if path not in models:
            raise ConfigError(f"teacher '{name}': unknown torchvision segmentation model '{path}'"
                              f"{did_you_mean(str(path), models)}")
        options = source_options(Options, options, name, "torchvision")

        def build(builder, **kwargs) -> torch.nn.Module:
            if "weights" not in kwargs:
                kwargs.setdefault("aux_loss", bool(options.aux_loss))
            if not kwargs.get("aux_loss"):
                kwargs.pop("aux_loss", None)  # lraspp refuses the argument; the others default to False
            return build_offline(name, builder, path, **kwargs)

        def from_file(state: dict) -> dict[str, Any]:
            aux = options.aux_loss
            return {"aux_loss": any(k.startswith("aux_classifier.") for k in state) if aux is None else aux}

        model, weights, categories = load_model(name, path, options, classes_in=self._classifier_classes,
                                                random_classes=21, build=build, file_kwargs=from_file,
                                                fit_hint="num_classes / aux_loss")
        if getattr(model, "aux_classifier", None) is not None:
            model.aux_classifier = None  # the teacher answers with "out" only; skip the auxiliary head's compute

        num_classes = self._classifier_classes(model.state_dict()) or options.num_classes or (
            len(categories) if categories else 21)
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
    def _classifier_classes(state: dict[str, torch.Tensor]) -> int | None:
        for key in CLASSIFIER_KEYS:
            if key in state:
                return int(state[key].shape[0])
        return None

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        return {"semseg": self.model(x)["out"]}
