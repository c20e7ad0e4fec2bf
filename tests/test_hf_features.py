"""``hf:`` feature teachers (DINOv2, CLIP, SigLIP, SAM) on tiny random-weight models saved to a folder.

Each model is built from a config, saved (with an image processor where the hub model has one) and loaded the
way a user's hub model is: ``build_teacher(TeacherConfig(path="hf:<folder>", tasks=["feat"]))``.
"""

from __future__ import annotations

import time

import pytest
import torch
import transformers

from polydistill.config import TeacherConfig
from polydistill.errors import ConfigError
from polydistill.teachers import build_teacher
from polydistill.teachers.hf_features import HuggingFaceFeatureTeacher
from polydistill.teachers.huggingface import HuggingFaceTeacher
from tests.distill_check import assert_distills

IMAGES = (2, 3, 40, 56)  # non-square; patch 8 -> a 5x7 grid
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
           patch_size=8)
TEXT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64,
            max_position_embeddings=16)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def load(folder, tasks=("feat",), **kwargs) -> HuggingFaceFeatureTeacher:
    teacher = build_teacher(TeacherConfig(name="t", path=f"hf:{folder}", tasks=list(tasks), **kwargs))
    assert isinstance(teacher, HuggingFaceFeatureTeacher) and not isinstance(teacher, HuggingFaceTeacher)
    return teacher


def check(teacher, channels: int, grid: tuple[int, int], images: torch.Tensor | None = None) -> torch.Tensor:
    """The contract every feature teacher keeps; returns the map for ``images`` (default: random IMAGES)."""
    assert teacher.tasks == ("feat",) and teacher.feature_channels == {"feat": channels}
    assert teacher.output_kind("feat") == "features"
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.model.training
    images = torch.rand(*IMAGES) if images is None else images
    feat = teacher.predict(images)["feat"]
    assert feat.shape == (images.shape[0], channels, *grid) and torch.isfinite(feat).all()
    return feat


def tiny_dinov2(folder, registers: int = 0):
    if registers:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**VIT, num_register_tokens=registers))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**VIT))
    model.save_pretrained(folder)
    transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
                                   ).save_pretrained(folder)
    return model


def tiny_clip(folder):
    cfg = transformers.CLIPConfig(text_config=TEXT, vision_config=VIT, projection_dim=8)
    model = transformers.CLIPModel(cfg)
    model.save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                                    ).save_pretrained(folder)
    return model


def tiny_sam(folder):
    cfg = transformers.SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, mlp_dim=64, window_size=4, global_attn_indexes=[1]),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32,
                                 iou_head_hidden_dim=16),
    )
    model = transformers.SamModel(cfg)
    model.save_pretrained(folder)
    transformers.SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}
                                   ).save_pretrained(folder)
    return model


# ------------------------------------------------------------------------------------------------ DINOv2


def test_dinov2_patch_tokens(tmp_path):
    model = tiny_dinov2(tmp_path / "dino")
    teacher = load(tmp_path / "dino")
    assert teacher.model_input_size(40, 56) == (40, 56) and teacher.model_input_size(42, 53) == (40, 56)
    images = torch.rand(*IMAGES)
    feat = check(teacher, 32, (5, 7), images)
    tokens = model.eval()(pixel_values=teacher.preprocess(images)).last_hidden_state  # CLS first
    assert torch.allclose(feat, tokens[:, 1:].transpose(1, 2).reshape(2, 32, 5, 7), atol=1e-5)
    assert torch.allclose(teacher.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert_distills(teacher)


def test_dinov2_registers_are_dropped(tmp_path):
    model = tiny_dinov2(tmp_path / "dinoreg", registers=4)
    teacher = load(tmp_path / "dinoreg")
    assert teacher.prefix_tokens == 5  # CLS + 4 registers
    images = torch.rand(*IMAGES)
    feat = check(teacher, 32, (5, 7), images)
    tokens = model.eval()(pixel_values=teacher.preprocess(images)).last_hidden_state
    assert tokens.shape[1] == 1 + 4 + 35
    assert torch.allclose(feat, tokens[:, 5:].transpose(1, 2).reshape(2, 32, 5, 7), atol=1e-5)
    assert_distills(teacher)


def test_grid_stride_aligns_a_patch_14_teacher_with_a_patch_16_student(tmp_path):
    transformers.Dinov2Model(transformers.Dinov2Config(**{**VIT, "patch_size": 14, "image_size": 28})
                             ).save_pretrained(tmp_path / "dino14")
    native = load(tmp_path / "dino14")
    assert native.token_grid(64, 96) == (5, 7)  # 64/14, 96/14 rounded; the image is only rounded to 70x98
    assert native.model_input_size(64, 96) == (70, 98)
    aligned = load(tmp_path / "dino14", options={"grid_stride": 16})
    assert aligned.model_input_size(64, 96) == (56, 84)  # rescaled by 14/16: a 4x6 grid, like a patch-16 student
    check(aligned, 32, (4, 6), torch.rand(1, 3, 64, 96))
    fixed = load(tmp_path / "dino14", options={"grid_stride": 16, "input_size": [32, 48]})
    check(fixed, 32, (2, 3), torch.rand(1, 3, 64, 96))  # input_size first, then the stride
    assert len({native.fingerprint(), aligned.fingerprint(), fixed.fingerprint()}) == 3


def test_layer_picks_another_hidden_state(tmp_path):
    model = tiny_dinov2(tmp_path / "dino")
    last = load(tmp_path / "dino")
    first = load(tmp_path / "dino", options={"layer": 1})
    images = torch.rand(*IMAGES)
    out = model.eval()(pixel_values=first.preprocess(images), output_hidden_states=True)
    feat = check(first, 32, (5, 7), images)
    assert torch.allclose(feat, out.hidden_states[1][:, 1:].transpose(1, 2).reshape(2, 32, 5, 7), atol=1e-5)
    assert not torch.allclose(feat, last.predict(images)["feat"])
    assert first.fingerprint() != last.fingerprint() and last.fingerprint() == load(tmp_path / "dino").fingerprint()
    with pytest.raises(ConfigError, match="layer"):
        load(tmp_path / "dino", options={"layer": 3})  # 2 blocks: hidden states 0..2


# -------------------------------------------------------------------------------------------- CLIP / SigLIP


def test_clip_model_folder_loads_its_vision_tower(tmp_path):
    clip = tiny_clip(tmp_path / "clip")
    teacher = load(tmp_path / "clip")
    assert isinstance(teacher.model, transformers.CLIPVisionModel)  # no text tower
    assert torch.allclose(teacher.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    images = torch.rand(*IMAGES)
    feat = check(teacher, 32, (5, 7), images)
    tokens = clip.eval().vision_model(pixel_values=teacher.preprocess(images),
                                      interpolate_pos_encoding=True).last_hidden_state
    assert torch.allclose(feat, tokens[:, 1:].transpose(1, 2).reshape(2, 32, 5, 7), atol=1e-5)
    check(teacher, 32, (4, 4), torch.rand(1, 3, 32, 32))  # the native size: no interpolation
    assert_distills(teacher)


def test_clip_vision_model_without_processor_uses_openai_statistics(tmp_path):
    cfg = transformers.CLIPVisionConfig(**VIT, projection_dim=8)
    transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clipv")
    teacher = load(tmp_path / "clipv")
    assert torch.allclose(teacher.std.flatten(), torch.tensor([0.26862954, 0.26130258, 0.27577711]))
    check(teacher, 32, (5, 7))


def test_siglip_has_no_cls_token(tmp_path):
    cfg = transformers.SiglipConfig(text_config=TEXT, vision_config=VIT)
    transformers.SiglipModel(cfg).save_pretrained(tmp_path / "siglip")
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    teacher = load(tmp_path / "siglip")
    assert teacher.prefix_tokens == 0 and isinstance(teacher.model, transformers.SiglipVisionModel)
    check(teacher, 32, (5, 7))
    assert_distills(teacher)


# ------------------------------------------------------------------------------------------------- SAM


def test_sam_image_encoder_crops_the_padding(tmp_path):
    sam = tiny_sam(tmp_path / "sam")
    teacher = load(tmp_path / "sam")
    assert isinstance(teacher.model, transformers.SamVisionModel)  # no prompt encoder or mask decoder
    # longest side 56 -> 64: the image is 46x64, padded to 64x64; 6 of the 8 embedding rows cover it
    assert teacher.model_input_size(40, 56) == (46, 64) and teacher.token_grid(40, 56) == (6, 8)
    images = torch.rand(*IMAGES)
    feat = check(teacher, 16, (6, 8), images)
    x = teacher.preprocess(images)
    assert x.shape == (2, 3, 64, 64) and (x[:, :, 46:] == 0).all()
    full = sam.eval().get_image_embeddings(x)
    assert full.shape == (2, 16, 8, 8) and torch.allclose(feat, full[:, :, :6], atol=1e-5)
    assert_distills(teacher)
    blocks = load(tmp_path / "sam", options={"layer": -1})  # before the neck: the encoder's hidden size
    check(blocks, 32, (6, 8))
    with pytest.raises(ConfigError, match="input_size and grid_stride"):
        load(tmp_path / "sam", options={"grid_stride": 16})


# ---------------------------------------------------------------------------------------------- config


def test_all_tasks_get_the_same_map(tmp_path):
    tiny_dinov2(tmp_path / "dino")
    teacher = load(tmp_path / "dino", tasks=("dino", "dino_hi"))
    assert teacher.feature_channels == {"dino": 32, "dino_hi": 32}
    out = teacher.predict(torch.rand(*IMAGES))
    assert torch.equal(out["dino"], out["dino_hi"])


def test_config_errors(tmp_path):
    tiny_dinov2(tmp_path / "dino")
    path = f"hf:{tmp_path / 'dino'}"
    with pytest.raises(ConfigError, match=r"needs tasks: \[<name of a features task>\]"):
        build_teacher(TeacherConfig(name="t", path=path))
    cmap = tmp_path / "map.yaml"
    cmap.write_text("map:\n  floor: [floor]\n")
    with pytest.raises(ConfigError, match="class_map"):
        build_teacher(TeacherConfig(name="t", path=path, tasks=["feat"], class_map=str(cmap)), {"semseg": ["floor"]})
    with pytest.raises(ConfigError, match="depth_convention"):
        build_teacher(TeacherConfig(name="t", path=path, tasks=["feat"], depth_convention="metric"))
    with pytest.raises(ConfigError, match="did you mean 'layer'"):
        build_teacher(TeacherConfig(name="t", path=path, tasks=["feat"], options={"layers": 1}))
    with pytest.raises(ConfigError, match="feature encoders dinov2, dinov2_with_registers, clip"):
        HuggingFaceTeacher("t", str(tmp_path / "dino"))


@pytest.mark.parametrize("direct", [False, True])
def test_uncached_hub_id_fails_fast_offline(monkeypatch, tmp_path, direct):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="not cached locally"):
        if direct:
            HuggingFaceFeatureTeacher("t", "facebook/dinov2-small", ["feat"])
        else:
            build_teacher(TeacherConfig(name="t", path="hf:facebook/dinov2-small", tasks=["feat"]))
    assert time.perf_counter() - start < 10
