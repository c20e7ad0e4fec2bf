"""``hf:`` teachers: tiny random-weight transformers models saved to a folder and loaded like a hub model."""

from __future__ import annotations

import time

import pytest
import torch
import transformers

from polydistill.config import TeacherConfig, load_config
from polydistill.engine.logging import read_steps
from polydistill.errors import ConfigError
from polydistill.pipeline.train import train_run
from polydistill.teachers import HuggingFaceTeacher, build_teacher
from tests.conftest import tiny_config
from tests.distill_check import assert_distills

DINO = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, patch_size=7,
            image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
            apply_layernorm=True)


def tiny_depth_anything(folder, depth_type: str = "relative"):
    cfg = transformers.DepthAnythingConfig(
        backbone_config=transformers.Dinov2Config(**DINO), reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=8, patch_size=7, depth_estimation_type=depth_type,
    )
    model = transformers.DepthAnythingForDepthEstimation(cfg)
    model.save_pretrained(folder)
    transformers.DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True,
                                   ensure_multiple_of=7).save_pretrained(folder)
    return model


def tiny_segformer(folder, labels=("wall", "floor", "ceiling", "person", "rug")):
    cfg = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2],
        num_attention_heads=[1, 1], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )
    transformers.SegformerForSemanticSegmentation(cfg).save_pretrained(folder)
    transformers.SegformerImageProcessor(size={"height": 32, "width": 48}).save_pretrained(folder)


def test_depth_anything_teacher_loads_like_a_hub_model(tmp_path):
    tiny_depth_anything(tmp_path / "da")
    teacher = build_teacher(TeacherConfig(name="da", path=f"hf:{tmp_path / 'da'}"))
    assert isinstance(teacher, HuggingFaceTeacher)
    assert teacher.tasks == ("depth",) and teacher.depth_convention == "inverse_relative"
    out = teacher.predict(torch.rand(2, 3, 32, 48))
    assert out["depth"].shape == (2, 1, 32, 48) and torch.isfinite(out["depth"]).all()
    assert teacher.model_input_size(32, 48) == (56, 84)  # aspect kept, multiples of the patch size 7
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.model.training
    assert_distills(teacher)


def test_metric_depth_anything_is_metric(tmp_path):
    tiny_depth_anything(tmp_path / "da", depth_type="metric")
    assert build_teacher(TeacherConfig(name="da", path=f"hf:{tmp_path / 'da'}")).depth_convention == "metric"
    forced = build_teacher(TeacherConfig(name="da", path=f"hf:{tmp_path / 'da'}", depth_convention="relative"))
    assert forced.depth_convention == "relative"


def test_segformer_teacher_with_a_class_map(tmp_path):
    tiny_segformer(tmp_path / "seg")
    cmap = tmp_path / "map.yaml"
    cmap.write_text("map:\n  floor: [floor, rug]\n  wall: [wall, ceiling]\n")
    cfg = TeacherConfig(name="seg", path=f"hf:{tmp_path / 'seg'}", class_map=str(cmap))
    teacher = build_teacher(cfg, {"semseg": ["floor", "wall", "box"]})
    out = teacher.predict(torch.rand(2, 3, 32, 48))["semseg"]
    assert out.shape == (2, 4, 32, 48)  # 3 student classes + the unmapped mass ("person")
    assert torch.allclose(out.exp().sum(1), torch.ones(2, 32, 48), atol=1e-4)
    assert teacher.class_map.unmapped == ["person"]
    assert_distills(teacher, num_classes=3)  # the student's 3 classes from 3 + 1 mapped channels
    with pytest.raises(ConfigError, match="class_map"):
        build_teacher(TeacherConfig(name="seg", path=f"hf:{tmp_path / 'seg'}"), {"semseg": ["floor", "wall", "box"]})
    cmap.write_text("map:\n  floor: [flor]\n")
    with pytest.raises(ConfigError, match="did you mean 'floor'"):
        build_teacher(cfg, {"semseg": ["floor", "wall", "box"]})


def test_uncached_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="not cached locally"):
        build_teacher(TeacherConfig(name="da", path="hf:depth-anything/Depth-Anything-V2-Small-hf"))
    assert time.perf_counter() - start < 10


def test_relative_hf_teacher_distills_into_a_metric_student(tiny_data, tmp_path):
    tiny_depth_anything(tmp_path / "da")
    tiny_segformer(tmp_path / "seg", labels=("floor", "wall", "box"))
    cfg = tiny_config(tiny_data["train"], tiny_data["val"], max_steps=8, lr=1e-2, val_every=8)
    cfg["teachers"] = [{"name": "da", "path": f"hf:{tmp_path / 'da'}"},
                       {"name": "seg", "path": f"hf:{tmp_path / 'seg'}"}]
    cfg["data"]["augment"] = {"hflip": 0.0, "scale": [1.0, 1.0]}
    cfg["distill"] = {"gt_weight": 0.0}  # teachers only: their losses must fall
    train_run(load_config(base=cfg), tmp_path / "run")
    rows = read_steps(tmp_path / "run" / "steps.csv")
    depth = [r["loss/depth/da"] for r in rows]  # scale-and-shift-invariant: finite although relative
    total = [r["loss/depth/da"] + r["loss/semseg/seg"] for r in rows]
    assert all(0 < v < float("inf") for v in depth)
    assert sum(total[-3:]) < sum(total[:3])  # a few distillation steps reduce the loss


def test_fingerprint_covers_weights_and_preprocessing(tmp_path):
    tiny_segformer(tmp_path / "seg", labels=("floor", "wall", "box"))
    path = f"hf:{tmp_path / 'seg'}"
    plain = build_teacher(TeacherConfig(name="s", path=path)).fingerprint()
    assert build_teacher(TeacherConfig(name="s", path=path)).fingerprint() == plain
    resized = build_teacher(TeacherConfig(name="s", path=path, options={"input_size": [64, 64]})).fingerprint()
    assert resized != plain  # same weights, other preprocessing: cached outputs must not be reused
    tiny_segformer(tmp_path / "seg2", labels=("floor", "wall", "box"))  # new random weights
    assert build_teacher(TeacherConfig(name="s", path=f"hf:{tmp_path / 'seg2'}")).fingerprint() != plain


def test_same_count_but_other_class_names_needs_a_class_map(tmp_path):
    tiny_segformer(tmp_path / "seg", labels=("wall", "floor", "box"))  # the student's classes, other order
    with pytest.raises(ConfigError, match="class_map"):
        build_teacher(TeacherConfig(name="s", path=f"hf:{tmp_path / 'seg'}"), {"semseg": ["floor", "wall", "box"]})
    identity = tmp_path / "identity.yaml"
    identity.write_text("map: {floor: [floor], wall: [wall], box: [box]}\n")
    teacher = build_teacher(TeacherConfig(name="s", path=f"hf:{tmp_path / 'seg'}", class_map=str(identity)),
                            {"semseg": ["floor", "wall", "box"]})
    assert teacher.class_map.unmapped == []
