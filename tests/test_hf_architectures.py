"""``hf:`` teachers, one test per architecture the module claims, on tiny random-weight models.

Every model is built from a config, saved with an image processor into a folder and loaded the way a user's
hub model is: ``build_teacher(TeacherConfig(path="hf:<folder>"), {"semseg": student_classes})``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers
from transformers.models.mask2former import modeling_mask2former

from polydistill.config import TeacherConfig
from polydistill.errors import ConfigError
from polydistill.teachers import HuggingFaceTeacher, build_teacher
from tests.distill_check import assert_distills

LABELS = ("wall", "floor", "ceiling", "person", "rug")
IMAGES = (2, 3, 32, 48)
STAGES = ["stage1", "stage2", "stage3", "stage4"]
HAS_SCIPY = importlib.util.find_spec("scipy") is not None


def label_kwargs(labels=LABELS) -> dict:
    return dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})


def load(folder, student_classes=None, **kwargs) -> HuggingFaceTeacher:
    classes = None if student_classes is None else {"semseg": student_classes}
    teacher = build_teacher(TeacherConfig(name="t", path=f"hf:{folder}", **kwargs), classes)
    assert isinstance(teacher, HuggingFaceTeacher)
    return teacher


def check_depth(teacher, convention: str) -> torch.Tensor:
    assert teacher.tasks == ("depth",) and teacher.depth_convention == convention
    depth = teacher.predict(torch.rand(*IMAGES))["depth"]
    assert depth.shape == (2, 1, 32, 48) and torch.isfinite(depth).all()
    assert_distills(teacher)
    return depth


def check_semseg(teacher, channels: int) -> torch.Tensor:
    assert teacher.tasks == ("semseg",)
    logits = teacher.predict(torch.rand(*IMAGES))["semseg"]
    assert logits.shape == (2, channels, 32, 48) and torch.isfinite(logits).all()
    assert_distills(teacher)
    return logits


# ------------------------------------------------------------------------------------------------ depth


def test_dpt_depth(tmp_path):
    cfg = transformers.DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
    )
    transformers.DPTForDepthEstimation(cfg).save_pretrained(tmp_path / "dpt")
    # a square processor size like Intel/dpt-large (384x384): transformers' plain-ViT DPT neck needs a square grid
    transformers.DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "dpt")
    teacher = load(tmp_path / "dpt")
    assert teacher.model_input_size(32, 48) == (32, 32)
    check_depth(teacher, "inverse_relative")  # DPT / MiDaS predict disparity up to scale and shift


def test_zoedepth_is_metric(tmp_path):
    beit = transformers.BeitConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=32,
        use_relative_position_bias=True, reshape_hidden_states=False, out_features=STAGES,
    )
    cfg = transformers.ZoeDepthConfig(
        backbone_config=beit, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, num_relative_features=8,
        bottleneck_features=16, bin_embedding_dim=8, num_attractors=[4, 2, 2, 1],
        bin_configurations=[{"n_bins": 8, "min_depth": 0.001, "max_depth": 10.0}],
    )
    transformers.ZoeDepthForDepthEstimation(cfg).save_pretrained(tmp_path / "zoe")
    transformers.ZoeDepthImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=True,
                                        ensure_multiple_of=8).save_pretrained(tmp_path / "zoe")
    teacher = load(tmp_path / "zoe")
    assert teacher.model_input_size(32, 48) == (32, 48)  # aspect kept, multiples of 8
    depth = check_depth(teacher, "metric")
    assert (depth > 0).all()  # metres from positive bin centres


def tiny_glpn(folder):
    cfg = transformers.GLPNConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 8, 16, 16],
        patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=8,
    )
    transformers.GLPNForDepthEstimation(cfg).save_pretrained(folder)
    transformers.GLPNImageProcessor().save_pretrained(folder)  # the hub's: size_divisor 32, no normalisation


def test_glpn_is_metric(tmp_path):
    tiny_glpn(tmp_path / "glpn")
    # GLPN needs sides that are multiples of 32: input_size gives one (the teacher also rounds by itself)
    check_depth(load(tmp_path / "glpn", options={"input_size": [32, 64]}), "metric")


def test_glpn_rounds_to_its_size_divisor(tmp_path):
    tiny_glpn(tmp_path / "glpn")
    check_depth(load(tmp_path / "glpn"), "metric")


def test_glpn_input_is_not_normalised(tmp_path):
    tiny_glpn(tmp_path / "glpn")
    teacher = load(tmp_path / "glpn", options={"input_size": [32, 64]})
    assert teacher.mean.flatten().tolist() == [0.0, 0.0, 0.0] and teacher.std.flatten().tolist() == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------- segmentation


def test_upernet_convnext_segmentation(tmp_path):
    convnext = transformers.ConvNextConfig(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                           out_features=STAGES)
    cfg = transformers.UperNetConfig(backbone_config=convnext, hidden_size=16, use_auxiliary_head=False,
                                     **label_kwargs())
    transformers.UperNetForSemanticSegmentation(cfg).save_pretrained(tmp_path / "uper")
    transformers.SegformerImageProcessor(size={"height": 32, "width": 48}).save_pretrained(tmp_path / "uper")
    check_semseg(load(tmp_path / "uper", list(LABELS)), len(LABELS))  # same classes: no map needed
    with pytest.raises(ConfigError, match="class_map"):  # other classes and no map: say what to do
        load(tmp_path / "uper", ["floor", "wall", "box"])


def test_dpt_segmentation(tmp_path):
    cfg = transformers.DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        use_auxiliary_head=False, **label_kwargs(),
    )
    transformers.DPTForSemanticSegmentation(cfg).save_pretrained(tmp_path / "dpt")
    transformers.DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "dpt")  # square, as ADE
    check_semseg(load(tmp_path / "dpt", list(LABELS)), len(LABELS))


def tiny_mask2former(folder):
    swin = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 2, 2], window_size=4, out_features=STAGES)
    cfg = transformers.Mask2FormerConfig(  # sizes of 32: the pixel decoder's GroupNorm has 32 groups
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        dim_feedforward=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=6, **label_kwargs(),
    )
    transformers.Mask2FormerForUniversalSegmentation(cfg).save_pretrained(folder)
    processor = transformers.Mask2FormerImageProcessor(size={"height": 32, "width": 48})
    processor.save_pretrained(folder)
    return processor


@pytest.fixture
def mask2former_without_scipy(monkeypatch):
    """Mask2Former builds its training loss in ``__init__``, which demands scipy; inference never uses it."""
    if not HAS_SCIPY:
        monkeypatch.setattr(modeling_mask2former, "requires_backends", lambda *args, **kwargs: None)


def test_mask2former_semantic_combination(tmp_path, mask2former_without_scipy):
    torch.manual_seed(0)
    processor = tiny_mask2former(tmp_path / "m2f")
    teacher = load(tmp_path / "m2f", list(LABELS))
    images = torch.rand(*IMAGES)
    logp = teacher.predict(images)["semseg"]
    assert logp.shape == (2, len(LABELS), 32, 48) and torch.isfinite(logp).all()
    assert (logp <= 1e-4).all()  # log-probabilities over the classes, "no object" dropped
    # the class probabilities of transformers' own semantic post-processing of the class and mask queries
    size = teacher.model_input_size(32, 48)  # the processor's size_divisor (32) rounds 48 up to 64
    x = torch.nn.functional.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        out = teacher.model(pixel_values=(x - teacher.mean) / teacher.std)
    post = processor.post_process_semantic_segmentation(out, target_sizes=[(32, 48)] * 2,
                                                        return_segmentation_scores=True)
    scores = torch.stack([p.segmentation_scores for p in post])
    assert torch.allclose(logp.exp(), scores / scores.sum(1, keepdim=True), atol=1e-3)

    cmap = tmp_path / "map.yaml"
    cmap.write_text("map:\n  floor: [floor, rug]\n  wall: [wall, ceiling]\n")
    mapped = load(tmp_path / "m2f", ["floor", "wall", "box"], class_map=str(cmap)).predict(images)["semseg"]
    assert mapped.shape == (2, 4, 32, 48)  # 3 student classes + the unmapped mass ("person")
    assert torch.allclose(mapped.exp().sum(1), torch.ones(2, 32, 48), atol=1e-4)


@pytest.mark.skipif(HAS_SCIPY, reason="scipy is installed")
def test_mask2former_without_scipy_says_so(tmp_path, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setattr(modeling_mask2former, "requires_backends", lambda *args, **kwargs: None)
        tiny_mask2former(tmp_path / "m2f")
    with pytest.raises(ConfigError, match="scipy"):
        load(tmp_path / "m2f", list(LABELS))
