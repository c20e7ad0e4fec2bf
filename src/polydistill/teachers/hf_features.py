"""``hf:`` feature teachers: vision encoders from the Hugging Face hub whose patch tokens the student imitates.

Foundation encoders (DINOv2, CLIP, SigLIP, SAM) teach no labels: a *features* task aligns a student head to
their dense token features (as in AM-RADIO, Theia or DUNE). This adapter loads only the vision tower and
returns, for every task it teaches, the same map ``(B, C, h, w)`` on the encoder's own token grid: CLS and
register tokens removed, patch tokens laid out as an image.

Supported ``model_type`` (tested on tiny random-weight models built from a config and saved to a folder):

* ``dinov2`` / ``dinov2_with_registers`` — ``AutoModel`` (Dinov2Model, Dinov2WithRegistersModel); the CLS
  token and the ``num_register_tokens`` registers are dropped. Any input size that is a multiple of the patch
  works (position embeddings interpolate). The default output is ``last_hidden_state``, i.e. *after* the final
  layer norm;
* ``clip`` / ``clip_vision_model`` — ``CLIPVisionModel`` (a full CLIPModel folder loads only its vision tower);
  ``last_hidden_state`` is the last block's output (CLIP applies its post layer norm to the pooled CLS only);
  ``interpolate_pos_encoding`` is turned on when the input is not the model's square ``image_size``;
* ``siglip`` / ``siglip_vision_model`` — ``SiglipVisionModel``: no CLS token, ``last_hidden_state`` after the
  post layer norm; position embeddings interpolate like CLIP's;
* ``sam`` / ``sam_vision_model`` — ``SamVisionModel`` (only SAM's image encoder, also from a SamModel folder):
  the image embeddings after the neck, ``(B, 256, 64, 64)`` for the 1024 input of the released models. Like
  SAM's processor, the longest side is resized to ``image_size``, the normalised image is zero-padded
  bottom/right to a square, and the embedding grid is cropped to the rows/cols that cover the image.

Options: ``revision``; ``layer`` (an index into ``hidden_states``: 0 the patch embeddings, ``i`` the output
of block ``i``, negative from the end; before any final norm, and for SAM before the neck, so ``C`` is the
encoder's hidden size); ``input_size: [H, W]`` (the image size the encoder sees, instead of the image's own);
``grid_stride`` (pixels of that image per output token, default the patch size: the image is only rounded to a
multiple of the patch. With 16 on a patch-14 DINOv2 the image is rescaled by 14/16, so a 448×448 image gives
a 28×28 grid, the same as a patch-16 student: DUNE's patch-grid alignment). SAM's encoder has fixed-size
absolute position embeddings, so ``input_size`` and ``grid_stride`` do not apply to it.

Preprocessing is the teacher's job: mean/std from the folder's image processor (else the family's
constants: ImageNet for DINOv2 and SAM, OpenAI's for CLIP, 0.5 for SigLIP), bicubic resizing clamped to
``[0, 1]``. The processor's resize/crop sizes are not used: the feature grid follows the image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import ConfigError
from .base import PixelSize, Teacher, source_options
from .hf_loading import HubOptions, load_kwargs, load_pretrained

#: model_type -> family; what the ``hf`` source routes to this adapter
FEATURE_MODEL_TYPES = {
    "dinov2": "dinov2", "dinov2_with_registers": "dinov2",
    "clip": "clip", "clip_vision_model": "clip",
    "siglip": "siglip", "siglip_vision_model": "siglip",
    "sam": "sam", "sam_vision_model": "sam",
}


class Options(HubOptions):
    layer: Annotated[int, Field(strict=True)] | None = Field(None, description="index into hidden_states "
                                                             "(default: the output)")
    input_size: PixelSize | None = Field(None, description="[H, W] the encoder sees")
    grid_stride: float | None = Field(None, gt=0, description="image pixels per output token")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: family -> (mean, std) when the folder has no image processor
DEFAULT_STATS = {
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "sam": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # OpenAI CLIP
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class HuggingFaceFeatureTeacher(Teacher):
    """Patch-token feature maps ``(B, C, h, w)`` of a hub vision encoder, one copy per features task."""

    recipe_covers_options = True

    def __init__(self, name: str, path: str, tasks: list[str] | None = None, *, depth_convention: str | None = None,
                 class_map: str | None = None, trust_remote_code: bool = False,
                 options: Options | Mapping[str, Any] | None = None):
        import transformers  # optional heavy dependency

        options = source_options(Options, options, name, "hf feature")
        if not tasks:
            raise ConfigError(f"teacher '{name}': a feature teacher needs tasks: [<name of a features task>]")
        if class_map or depth_convention:
            raise ConfigError(f"teacher '{name}' is a feature encoder: class_map and depth_convention do not apply")
        kwargs = load_kwargs(trust_remote_code, options)
        config = load_pretrained(transformers.AutoConfig, path, name, **kwargs)
        if config.model_type not in FEATURE_MODEL_TYPES:
            raise ConfigError(f"teacher '{name}': '{path}' is a {config.model_type} model; feature teachers cover "
                              f"{', '.join(FEATURE_MODEL_TYPES)}")
        self.model_type = config.model_type
        self.family = FEATURE_MODEL_TYPES[config.model_type]
        loader = {
            "dinov2": transformers.AutoModel,
            "clip": transformers.CLIPVisionModel,
            "siglip": transformers.SiglipVisionModel,
            "sam": transformers.SamVisionModel,
        }[self.family]
        model = load_pretrained(loader, path, name, **kwargs)
        vision = model.config  # the vision config (a full CLIP/SigLIP/SAM folder loads its vision tower only)
        self.patch_size = int(vision.patch_size)
        self.image_size = int(vision.image_size)
        self.prefix_tokens = {"dinov2": 1 + int(getattr(vision, "num_register_tokens", 0) or 0), "clip": 1,
                              "siglip": 0, "sam": 0}[self.family]
        self.layer, self.input_size, self.grid_stride = self._check_options(name, options, vision)
        channels = vision.output_channels if self.family == "sam" and self.layer is None else vision.hidden_size
        super().__init__(name, tuple(tasks), feature_channels={t: int(channels) for t in tasks})
        self.model = model
        self.path = path
        self._setup_statistics(path, name, kwargs)
        self.freeze()

    def _check_options(self, name: str, options: Options, vision: Any
                       ) -> tuple[int | None, tuple[int, int] | None, float]:
        layer, input_size, stride = options.layer, options.input_size, options.grid_stride
        count = int(vision.num_hidden_layers) + 1  # hidden_states: embeddings, then every block
        if layer is not None and not -count <= layer < count:
            raise ConfigError(f"teacher '{name}': option layer must be an integer index into the {count} "
                              f"hidden states (0 .. {count - 1}, or negative from the end), got {layer!r}")
        input_size = tuple(input_size) if input_size is not None else None
        if self.family == "sam" and (input_size is not None or stride is not None):
            raise ConfigError(f"teacher '{name}': SAM's encoder takes a fixed {self.image_size}×{self.image_size} "
                              "input (the image's longest side is resized to it); input_size and grid_stride do "
                              "not apply")
        return layer, input_size, float(stride or self.patch_size)

    def _setup_statistics(self, path: str, name: str, kwargs: dict[str, Any]) -> None:
        import transformers

        try:
            processor = load_pretrained(transformers.AutoImageProcessor, path, name, **kwargs)
        except (ConfigError, ValueError, OSError):
            processor = None  # a bare model folder: the family's constants
        mean, std = DEFAULT_STATS[self.family]
        if processor is not None and not getattr(processor, "do_normalize", True):
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        elif processor is not None:
            mean = getattr(processor, "image_mean", None) or mean
            std = getattr(processor, "image_std", None) or std
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------------------------------ geometry

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The ``(h, w)`` feature grid for an image of ``height × width`` pixels."""
        if self.family == "sam":
            resized = self._sam_resized(height, width)
            return math.ceil(resized[0] / self.patch_size), math.ceil(resized[1] / self.patch_size)
        base = self.input_size or (height, width)
        return tuple(max(1, round(v / self.grid_stride)) for v in base)  # type: ignore[return-value]

    def model_input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the encoder sees (SAM: the resized image before padding to the square input)."""
        if self.family == "sam":
            return self._sam_resized(height, width)
        gh, gw = self.token_grid(height, width)
        return gh * self.patch_size, gw * self.patch_size

    def _sam_resized(self, height: int, width: int) -> tuple[int, int]:
        scale = self.image_size / max(height, width)  # as SamImageProcessor: longest side to image_size
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(), "model_type": self.model_type, "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(), "input_size": self.input_size, "grid_stride": self.grid_stride,
                "layer": self.layer, "patch_size": self.patch_size, "image_size": self.image_size,
                "prefix_tokens": self.prefix_tokens}

    # ------------------------------------------------------------------------------------------- predict

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` → the normalised ``pixel_values`` the encoder runs on."""
        size = self.model_input_size(*images.shape[-2:])
        x = images.float()
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x - self.mean) / self.std
        if self.family == "sam":  # zero-pad after normalising, as SAM's processor does
            x = F.pad(x, (0, self.image_size - size[1], 0, self.image_size - size[0]))
        return x

    def _predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        gh, gw = self.token_grid(*images.shape[-2:])
        x = self.preprocess(images)
        x = x.to(next(self.model.parameters()).dtype)
        kwargs: dict[str, Any] = {"output_hidden_states": self.layer is not None}
        if self.family in ("clip", "siglip"):
            kwargs["interpolate_pos_encoding"] = tuple(x.shape[-2:]) != (self.image_size, self.image_size)
        out = self.model(pixel_values=x, **kwargs)
        hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        if self.family == "sam":
            if self.layer is not None:
                hidden = hidden.permute(0, 3, 1, 2)  # the blocks work channels-last
            features = hidden[:, :, :gh, :gw]  # only the rows/cols that cover the image, not the padding
        else:
            tokens = hidden[:, self.prefix_tokens:]
            if tokens.shape[1] != gh * gw:
                raise RuntimeError(f"teacher '{self.name}': {tokens.shape[1]} patch tokens for a {gh}×{gw} grid")
            features = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)
        return {t: features for t in self.tasks}
